"""`driftline sql`'s sandbox attacked on the real engine: other tenants, writes, escapes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import store
from store import readonly
from tests.support.console_fleet import seed_client


@pytest.fixture
async def dsn(tmp_path: Path) -> AsyncIterator[str]:
    dsn = f"chdb://{tmp_path / 'ch'}"
    client = store.connect(dsn)
    store.migrate(client)
    await seed_client(client)
    yield dsn
    client.close()


def run(dsn: str, sql: str, tenant: str = "acme") -> list[tuple[object, ...]]:
    return readonly.run(lambda: store.connect(dsn), sql, [tenant])[1]


def test_tables_and_views_show_only_the_tenant(dsn: str) -> None:
    assert run(dsn, "SELECT DISTINCT tenant_id FROM endpoint_states") == [("acme",)]
    assert run(dsn, "SELECT count() FROM default.endpoint_states FINAL") == [(11,)]
    assert run(dsn, "SELECT DISTINCT tenant_id FROM drift_current") == [("acme",)]
    assert run(dsn, "SELECT count() FROM endpoints_latest") == [(10,)]
    assert run(dsn, "SELECT count() FROM endpoints_latest", "globex") == [(3,)]
    sneaky = (
        "WITH x AS (SELECT * FROM policy_changelog) SELECT count() FROM x "
        "WHERE tenant_id = 'globex' OR 1 IN (SELECT 1 FROM drift_flags WHERE tenant_id='globex')"
    )
    assert run(dsn, sneaky) == [(0,)]
    assert run(dsn, "SELECT sum(number) FROM numbers(4)") == [(6,)]


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT * FROM merge('default', 'endpoint_states')", "table functions"),
        ("SELECT * FROM system.tables", "system.tables"),
        ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "readonly"),
        ("SELECT count() FROM drift_flags SETTINGS additional_table_filters = {}", "readonly"),
        ("SELECT 1 SETTINGS readonly = 0", "readonly"),
        ("INSERT INTO drift_flags (tenant_id) VALUES ('acme')", ""),
        ("DROP TABLE drift_flags", ""),
        ("SELECT 1; DROP TABLE drift_flags", ""),
        ("ALTER TABLE drift_flags DELETE WHERE 1", ""),
    ],
)
def test_escapes_and_writes_are_refused(dsn: str, sql: str, why: str) -> None:
    with pytest.raises(Exception, match=f"(?i){why}") as raised:
        run(dsn, sql)
    assert "globex" not in str(raised.value)
    # and nothing changed
    assert run(dsn, "SELECT count() FROM drift_flags FINAL") == [(7,)]
    assert run(dsn, "SELECT count() FROM drift_flags FINAL", "globex") == [(1,)]


def test_tenant_names_are_checked(dsn: str) -> None:
    with pytest.raises(ValueError, match="not a tenant name"):
        run(dsn, "SELECT 1", "acme') OR ('1'='1")


def test_reads_are_read_from_the_tree() -> None:
    tree = (
        "TABLE id: 3, alias: __table1, table_name: default.drift_current\n"
        "  TABLE_FUNCTION id: 12, alias: __table1, table_function_name: merge\n"
        "    TABLE id: 24, table_name: system.one\n"
    )
    assert readonly.reads_of(tree) == ({"default.drift_current", "system.one"}, {"merge"})
