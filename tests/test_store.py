"""The store against the real ClickHouse engine (chdb) in a temporary directory.

chdb hosts one engine path per process: every client a test opens is closed before the next
test opens another path.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from clickhouse_connect.driver.exceptions import OperationalError, ProgrammingError

from schemas import AuthEvent, DriftFlag, EndpointSnapshot
from schemas.messages import AuthReason, FlagKind, FlagState, Signal
from store import (
    DEFAULT_TTL_DAYS,
    BatchWriter,
    Client,
    Heartbeats,
    Migration,
    WriterClosed,
    applied_versions,
    connect,
    current_drift,
    insert_rows,
    latest_endpoints,
    load_migrations,
    migrate,
    optimize,
    row_for,
    state_hash,
)
from store.refusals import about_data

# Rows older than a table's TTL vanish on insert, so every time is relative to now.
NOW = datetime.now(UTC).replace(microsecond=0)


def at(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def snapshot(
    seconds: float,
    *,
    endpoint: str = "acme/SN1",
    version: str | None = "2.0.1",
    team: str | None = "platform",
    tenant: str = "acme",
    attributes: dict[str, str] | None = None,
) -> EndpointSnapshot:
    return EndpointSnapshot(
        tenant_id=tenant,
        endpoint_id=endpoint,
        serial_number=endpoint.split("/")[-1],
        service_name="claude-code",
        app_version=version,
        team_id=team,
        resource_attributes=attributes if attributes is not None else {"os.type": "darwin"},
        signal=Signal.METRICS,
        observed_at=at(seconds),
        received_at=at(seconds + 0.5),
    )


def auth_event(n: int, tenant: str = "acme") -> AuthEvent:
    return AuthEvent(
        tenant_id=tenant,
        endpoint_id=f"{tenant}/SN{n}",
        identity=f"SN{n}",
        token_id="tok1",
        reason=AuthReason.RETIRED,
        source=f"10.0.0.{n % 250}",
        observed_at=at(n / 1000),
    )


def flag(
    flag_id: str,
    state: FlagState,
    last: float,
    *,
    endpoint: str = "acme/SN1",
    tenant: str = "acme",
    first: float = 0,
) -> DriftFlag:
    return DriftFlag(
        flag_id=flag_id,
        tenant_id=tenant,
        endpoint_id=endpoint,
        kind=FlagKind.OUTDATED_CLIENT,
        state=state,
        detail=f"{flag_id} {state.value}",
        first_seen=at(first),
        last_seen=at(last),
        policy_version=3,
    )


def insert(client: Client, *messages: EndpointSnapshot | AuthEvent | DriftFlag) -> None:
    """One insert (one part) per message, so collapsing is the engine's work, not the batch's."""
    for message in messages:
        table, row = row_for(message)
        insert_rows(client, table, [list(row.values())])


def count(client: Client, table: str, final: bool = False) -> int:
    sql = "SELECT count() FROM {table:Identifier}" + (" FINAL" if final else "")
    return int(client.query(sql, parameters={"table": table}).result_rows[0][0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


@pytest.fixture
def dsn(tmp_path: Path) -> str:
    return f"chdb://{tmp_path}/clickhouse"


@pytest.fixture
def bare(dsn: str) -> Iterator[Client]:
    client = connect(dsn)
    yield client
    client.close()


@pytest.fixture
def client(bare: Client) -> Client:
    migrate(bare)
    return bare


# --------------------------------------------------------------------------- connect


def test_connect_creates_the_chdb_directory(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    client = connect(f"chdb://{target}")
    try:
        assert client.query("SELECT 1").result_rows == [(1,)]
        assert target.is_dir()
    finally:
        client.close()


@pytest.mark.parametrize("dsn", ["mysql://host/db", "/var/lib/ch", "", "chdb:/x", "clickhouse://h"])
def test_connect_rejects_other_schemes(dsn: str) -> None:
    with pytest.raises(ValueError, match="unsupported store DSN scheme"):
        connect(dsn)


def test_http_dsn_goes_to_a_server() -> None:
    with pytest.raises(OperationalError) as failure:
        connect(f"http://user:s3cret-pw@127.0.0.1:{free_port()}/driftline")
    assert "s3cret-pw" not in str(failure.value)


# --------------------------------------------------------------------------- migrations


def test_migrations_apply_once_and_are_recorded(bare: Client) -> None:
    versions = [migration.version for migration in load_migrations()]
    assert versions == sorted(versions) and versions[0] == 1

    assert migrate(bare, {"auth_events": 7}) == versions
    assert migrate(bare, {"auth_events": 7}) == []
    assert applied_versions(bare) == set(versions)
    rows = bare.query("SELECT version, name FROM driftline_migrations ORDER BY version")
    assert [row[0] for row in rows.result_rows] == versions
    assert rows.result_rows[0][1] == "endpoint_states"

    expected = {
        "auth_events": 7,
        "endpoint_states": DEFAULT_TTL_DAYS["snapshots"],
        "drift_flags": DEFAULT_TTL_DAYS["flags"],
        "compliance_records": DEFAULT_TTL_DAYS["compliance"],
        "remediation_audit": DEFAULT_TTL_DAYS["audit"],
    }
    for table, days in expected.items():
        ddl = str(bare.command("SHOW CREATE TABLE {table:Identifier}", parameters={"table": table}))
        assert "TTL toDateTime(" in ddl and f"toIntervalDay({days})" in ddl, ddl
        assert "ORDER BY (tenant_id," in ddl


def test_migrations_added_later_are_applied_alone(bare: Client, tmp_path: Path) -> None:
    ddl = tmp_path / "ddl"
    ddl.mkdir()
    (ddl / "001_one.sql").write_text(
        "-- first\nCREATE TABLE IF NOT EXISTS one (a UInt8) ENGINE = MergeTree ORDER BY a;\n"
        "\nCREATE TABLE IF NOT EXISTS two (t DateTime) ENGINE = MergeTree ORDER BY t\n"
        "TTL t + INTERVAL {ttl_audit_days} DAY;\n-- trailing comment\n"
    )
    (ddl / "notes.txt").write_text("not a migration")
    assert migrate(bare, migrations=load_migrations(ddl)) == [1]
    (ddl / "002_three.sql").write_text(
        "CREATE TABLE IF NOT EXISTS three (a UInt8) ENGINE = MergeTree ORDER BY a"
    )
    assert migrate(bare, migrations=load_migrations(ddl)) == [2]
    assert migrate(bare, migrations=load_migrations(ddl)) == []
    tables = {row[0] for row in bare.query("SHOW TABLES").result_rows}
    assert {"one", "two", "three", "driftline_migrations"} <= tables


def test_migration_statements_substitute_and_split() -> None:
    migration = Migration(9, "x", "-- c\nSELECT {ttl_flags_days};\n-- only a comment;\n\nSELECT 2;")
    assert migration.statements({"flags": 11}) == ["SELECT 11", "SELECT 2"]
    with pytest.raises(ValueError, match="unknown TTL placeholder"):
        Migration(9, "x", "SELECT {ttl_nope_days}").statements(DEFAULT_TTL_DAYS)


@pytest.mark.parametrize("ttl", [{"nope": 3}, {"flags": 0}, {"flags": True}, {"flags": 1.5}])
def test_bad_ttl_settings_are_refused(bare: Client, ttl: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        migrate(bare, ttl)
    assert applied_versions(bare) == set()


# --------------------------------------------------------------------------- rows


def test_state_hash_covers_state_not_time_or_attribute_order() -> None:
    base = snapshot(0, attributes={"a": "1", "b": "2"})
    assert state_hash(base) == state_hash(snapshot(60, attributes={"b": "2", "a": "1"}))
    assert state_hash(base) != state_hash(snapshot(0, attributes={"a": "1", "b": "3"}))
    assert state_hash(base) != state_hash(snapshot(0, attributes={"a": "1", "b": "2"}, team=None))
    assert state_hash(base) != state_hash(snapshot(0, attributes={"a": "1", "b": "2"}, team=""))
    assert state_hash(base) != state_hash(snapshot(0, attributes={"a": "1", "b": "2"}, version="2"))


def test_row_for_maps_every_message() -> None:
    table, row = row_for(snapshot(0))
    assert table == "endpoint_states"
    assert row["state_hash"] == state_hash(snapshot(0))
    assert row["first_seen"] == row["last_seen"] == at(0) and row["last_received"] == at(0.5)

    anonymous = AuthEvent(
        tenant_id=None,
        endpoint_id=None,
        identity="host-1",
        token_id=None,
        reason=AuthReason.UNKNOWN,
        source="10.1.1.1",
        observed_at=at(0),
    )
    table, row = row_for(anonymous)
    assert table == "auth_events"
    assert (row["tenant_id"], row["endpoint_id"], row["reason"]) == ("", "", "unknown")

    table, row = row_for(flag("f1", FlagState.RESOLVED, 5))
    assert table == "drift_flags"
    assert (row["state"], row["kind"], row["policy_version"]) == ("resolved", "outdated_client", 3)


# --------------------------------------------------------------------------- tables and views


def test_endpoint_states_keep_changes_not_exports(client: Client) -> None:
    state_a_early, state_b, state_a_late = snapshot(0), snapshot(10, version="2.1.0"), snapshot(20)
    insert(client, state_a_early, state_b, state_a_late)
    optimize(client, "endpoint_states")

    assert count(client, "endpoint_states") == 2
    rows = client.query(
        "SELECT app_version, first_seen, last_seen, last_received FROM endpoint_states "
        "ORDER BY first_seen"
    ).result_rows
    assert rows == [("2.0.1", at(0), at(20), at(20.5)), ("2.1.0", at(10), at(10), at(10.5))]

    [latest] = latest_endpoints(client, "acme")
    assert latest["endpoint_id"] == "acme/SN1"
    assert latest["app_version"] == "2.0.1"
    assert latest["state_hash"] == state_hash(state_a_late)
    assert (latest["state_since"], latest["first_seen"], latest["last_seen"]) == (
        at(0),
        at(0),
        at(20),
    )


def test_a_wrong_endpoint_clock_does_not_expire_its_state(client: Client) -> None:
    """Retention counts from when we received a state, not from the time the laptop claims."""
    years_ago = snapshot(0).model_copy(update={"observed_at": NOW - timedelta(days=800)})
    insert(client, years_ago)
    optimize(client, "endpoint_states")
    [latest] = latest_endpoints(client, "acme")
    assert latest["app_version"] == "2.0.1"


def test_endpoints_latest_before_merge_and_with_values_gone(client: Client) -> None:
    """No OPTIMIZE: the view must fold unmerged parts itself, and a team that went away is NULL."""
    insert(
        client, snapshot(0), snapshot(5), snapshot(30, team=None), snapshot(1, endpoint="acme/SN2")
    )
    insert(client, snapshot(2, tenant="other", endpoint="other/SN1"))

    latest = {row["endpoint_id"]: row for row in latest_endpoints(client, "acme")}
    assert set(latest) == {"acme/SN1", "acme/SN2"}
    assert latest["acme/SN1"]["team_id"] is None
    assert latest["acme/SN1"]["state_since"] == at(30)
    assert latest["acme/SN1"]["first_seen"] == at(0)
    assert latest["acme/SN2"]["team_id"] == "platform"
    assert count(client, "endpoint_states", final=True) == 4


def test_drift_current_shows_open_flags_once_with_the_endpoint_joined(client: Client) -> None:
    insert(client, snapshot(0, team="payments"))
    batch = [
        flag("f-old", FlagState.RAISED, 1, first=1),
        flag("f-old", FlagState.RESOLVED, 2, first=1),
        flag("f-open", FlagState.RAISED, 3, first=3),
        flag("f-nosnap", FlagState.RAISED, 4, first=4, endpoint="acme/SN9"),
    ]
    for _ in range(2):  # redelivery: the same transitions in a second, distinct batch
        insert_rows(client, "drift_flags", [list(row_for(m)[1].values()) for m in batch])

    open_flags = current_drift(client, "acme")
    assert [row["flag_id"] for row in open_flags] == ["f-open", "f-nosnap"]
    joined, lonely = open_flags
    assert joined["team_id"] == "payments"
    assert joined["service_name"] == "claude-code" and joined["app_version"] == "2.0.1"
    assert (joined["first_seen"], joined["last_seen"], joined["policy_version"]) == (
        at(3),
        at(3),
        3,
    )
    assert joined["kind"] == "outdated_client" and joined["detail"] == "f-open raised"
    assert (lonely["team_id"], lonely["service_name"]) == (None, None)

    optimize(client, "drift_flags")
    assert count(client, "drift_flags") == 4  # one row per (flag_id, state)


def test_flag_raised_again_after_resolve_is_open_and_ties_go_to_resolve(client: Client) -> None:
    insert(
        client,
        flag("again", FlagState.RAISED, 1),
        flag("again", FlagState.RESOLVED, 2),
        flag("again", FlagState.RAISED, 3, first=3),
        flag("tie", FlagState.RAISED, 5),
        flag("tie", FlagState.RESOLVED, 5),
    )
    [row] = current_drift(client, "acme")
    assert (row["flag_id"], row["first_seen"]) == ("again", at(3))
    optimize(client, "drift_flags")
    assert count(client, "drift_flags") == 4


def test_a_retried_batch_is_written_once(client: Client) -> None:
    rows = [list(row_for(auth_event(n))[1].values()) for n in range(10)]
    insert_rows(client, "auth_events", rows, dedup_token="batch-1")
    insert_rows(client, "auth_events", rows, dedup_token="batch-1")  # the retry
    assert count(client, "auth_events") == 10
    insert_rows(client, "auth_events", rows)  # a genuinely new batch counts
    assert count(client, "auth_events") == 20


def test_parameters_are_bound_not_formatted(client: Client) -> None:
    hostile = "acme' OR '1'='1"
    dropper = "x'); DROP TABLE drift_flags; --"
    for tenant in ("acme", hostile, dropper):
        insert(
            client,
            snapshot(0, tenant=tenant, endpoint=f"{tenant}/SN1"),
            flag(f"f-{tenant}", FlagState.RAISED, 1, tenant=tenant, endpoint=f"{tenant}/SN1"),
        )
    for tenant in (hostile, dropper):
        [row] = current_drift(client, tenant)
        assert (row["tenant_id"], row["flag_id"]) == (tenant, f"f-{tenant}")
        [endpoint] = latest_endpoints(client, tenant)
        assert endpoint["endpoint_id"] == f"{tenant}/SN1"
    assert current_drift(client, "acme' OR 1=1 --") == []
    assert count(client, "drift_flags") == 3
    with pytest.raises(ValueError):
        optimize(client, "drift_flags; DROP TABLE auth_events")


# --------------------------------------------------------------------------- batch writer


async def test_writer_flushes_by_size(client: Client) -> None:
    async with BatchWriter(client, max_rows=50, max_delay=60) as writer:
        for n in range(50):
            await writer.add(auth_event(n))
        await eventually(lambda: writer.rows_written == 50)
        assert count(client, "auth_events") == 50

        await writer.add(auth_event(50))
        await asyncio.sleep(0.3)
        assert writer.rows_written == 50 and writer.pending_rows == 1
    assert writer.rows_written == 51 and count(client, "auth_events") == 51


async def test_writer_flushes_by_time(client: Client) -> None:
    async with BatchWriter(client, max_rows=5000, max_delay=0.2) as writer:
        started = time.monotonic()
        for n in range(3):
            await writer.add(auth_event(n))
        await eventually(lambda: writer.rows_written == 3)
        assert 0.15 <= time.monotonic() - started < 3
        assert writer.batches_written == 1
    assert count(client, "auth_events") == 3


async def test_a_table_with_its_own_delay_is_written_without_waiting_for_the_others(
    client: Client,
) -> None:
    async with BatchWriter(client, max_delay=60, delays={"drift_flags": 0.1}) as writer:
        await writer.add(auth_event(0))
        await writer.add(flag("f1", FlagState.RAISED, 1))
        # the writer counts the flag's row as written just after chDB shows it
        await eventually(lambda: count(client, "drift_flags") == 1 and writer.pending_rows == 1)
        assert count(client, "auth_events") == 0
    assert count(client, "auth_events") == 1


async def test_writer_routes_every_table(client: Client) -> None:
    async with BatchWriter(client) as writer:
        await writer.add(snapshot(0))
        await writer.add(snapshot(1))  # same state: collapses
        await writer.add(auth_event(1))
        await writer.add(flag("f1", FlagState.RAISED, 1))
        await writer.add_row(
            "compliance_records",
            {
                "tenant_id": "acme",
                "vendor": "jamf",
                "device_id": "42",
                "serial_number": "SN1",
                "status": "non_compliant",
                "reason": "missing profile",
                "reported_at": at(0),
                "imported_at": at(1),
                "last_contact": None,
            },
        )
        await writer.add_row(
            "remediation_audit",
            {
                "tenant_id": "acme",
                "action_id": "a1",
                "attempt": 1,
                "state": "planned",
                "endpoint_id": "acme/SN1",
                "serial_number": "SN1",
                "vendor": "jamf",
                "device_id": "mgmt-1",
                "action": "force_sync",
                "reason": "outdated_client",
                "detail": "",
                "dry_run": True,
                "request": "POST /api/v2/mdm/blank-push",
                "response_status": None,
                "at": at(2),
            },
        )
        with pytest.raises(ValueError, match="missing"):
            await writer.add_row("remediation_audit", {"tenant_id": "acme"})
        await writer.flush()
        assert writer.pending_rows == 0 and writer.rows_written == 6
        for table in ("auth_events", "drift_flags", "compliance_records", "remediation_audit"):
            assert count(client, table) == 1, table
        assert count(client, "endpoint_states", final=True) == 1
        assert client.query("SELECT dry_run FROM remediation_audit").result_rows == [(True,)]


async def test_backpressure_while_the_table_is_gone_then_catch_up(client: Client) -> None:
    writer = BatchWriter(
        client,
        max_rows=10,
        max_delay=0.05,
        max_pending_rows=30,
        backoff_initial=0.05,
        backoff_max=0.2,
    )
    await writer.add(auth_event(0))
    await writer.flush()
    client.command("RENAME TABLE auth_events TO auth_events_offline")

    for n in range(1, 31):
        await writer.add(auth_event(n))
    blocked = asyncio.create_task(writer.add(auth_event(31)))
    await asyncio.sleep(0.5)
    assert not blocked.done(), "add must wait while max_pending_rows are unwritten"
    assert writer.pending_rows == 30
    assert writer.retries >= 2
    assert "auth_events" in str(writer.last_error)

    client.command("RENAME TABLE auth_events_offline TO auth_events")
    await asyncio.wait_for(blocked, 5)
    await writer.flush()
    assert await writer.close() == 0

    assert writer.rows_written == 32
    assert count(client, "auth_events") == 32
    distinct = client.query("SELECT uniqExact(endpoint_id) FROM auth_events").result_rows
    assert distinct == [(32,)]


async def test_writer_waits_for_an_unreachable_server_then_catches_up(dsn: str) -> None:
    """A factory pointing at a closed port fails for real; then the store becomes reachable."""
    target = {"dsn": f"http://127.0.0.1:{free_port()}"}
    writer = BatchWriter(
        lambda: connect(target["dsn"]),
        max_rows=5,
        max_delay=0.05,
        max_pending_rows=10,
        backoff_initial=0.05,
        backoff_max=0.1,
    )
    for n in range(10):
        await writer.add(auth_event(n))
    blocked = asyncio.create_task(writer.add(auth_event(10)))
    await asyncio.sleep(0.4)
    assert not blocked.done()
    assert writer.rows_written == 0 and writer.retries >= 2
    assert isinstance(writer.last_error, OperationalError)

    setup = connect(dsn)
    try:
        migrate(setup)
        target["dsn"] = dsn
        await asyncio.wait_for(blocked, 5)
        await writer.flush()
        assert await writer.close() == 0
        assert count(setup, "auth_events") == 11
    finally:
        setup.close()


async def test_close_gives_up_after_its_grace_and_reports_the_loss() -> None:
    writer = BatchWriter(
        lambda: connect(f"http://127.0.0.1:{free_port()}"), max_delay=0.01, backoff_initial=0.05
    )
    for n in range(5):
        await writer.add(auth_event(n))
    started = time.monotonic()
    assert await writer.close(grace=0.3) == 5
    assert time.monotonic() - started < 2
    with pytest.raises(WriterClosed):
        await writer.add(auth_event(6))


# --------------------------------------------------------------------------- rows it can never take


def failure_of(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except Exception as error:
        return error
    raise AssertionError("expected a failure")


def test_what_bad_values_and_an_unavailable_store_raise_is_told_apart(
    bare: Client, tmp_path: Path
) -> None:
    """Pins the evidence ``about_data`` is built on, so a client or chdb upgrade is noticed."""
    bare.command(
        "CREATE TABLE probe (n UInt16, at DateTime64(3, 'UTC'), s String, "
        "CONSTRAINT small CHECK n < 100) ENGINE = MergeTree ORDER BY tuple()"
    )
    columns = ["n", "at", "s"]
    types = ["UInt16", "DateTime64(3, 'UTC')", "String"]
    bad: dict[int, list[Any]] = {
        0: [70000, -1, None, "abc", 200],  # 200: the engine's constraint refuses it
        1: ["not a date", None],
        2: [None, 5, "\ud800"],
    }

    def insert(row: list[Any], column_types: list[str] | None) -> None:
        bare.insert("probe", [row], column_names=columns, column_type_names=column_types)

    for index, values in bad.items():
        for value in values:
            row: list[Any] = [1, NOW, "x"]
            row[index] = value
            for column_types in (None, types):
                error = failure_of(functools.partial(insert, row, column_types))
                assert about_data(error), f"{columns[index]}={value!r}: {error!r}"
    assert count(bare, "probe") == 0

    unavailable = [
        failure_of(lambda: bare.insert("gone", [[1]], column_names=["n"])),  # UNKNOWN_TABLE
        failure_of(lambda: connect(f"chdb://{tmp_path}/elsewhere")),  # one path per process
        failure_of(lambda: connect(f"http://127.0.0.1:{free_port()}")),  # connection refused
    ]
    for error in unavailable:
        assert not about_data(error), repr(error)


BAD_VALUES = [
    pytest.param("policy_version", 2**64, "DataError", id="out-of-range"),
    pytest.param("last_seen", "not a date", "ValueError", id="not-a-datetime"),
    pytest.param("tenant_id", None, "DataError", id="none-in-non-nullable"),
    pytest.param("detail", "\ud800", "UnicodeEncodeError", id="lone-surrogate"),
]


@pytest.mark.parametrize(("column", "value", "error"), BAD_VALUES)
async def test_a_row_clickhouse_refuses_is_dead_lettered_and_the_rest_written(
    client: Client, tmp_path: Path, column: str, value: Any, error: str
) -> None:
    dead_letter = tmp_path / "data" / "dead-letter.jsonl"
    rows = [row_for(flag(f"f{n}", FlagState.RAISED, n))[1] for n in range(9)]
    rows[4] = {**rows[4], column: value}
    async with BatchWriter(client, max_rows=100, max_delay=60, dead_letter=dead_letter) as writer:
        for row in rows:
            await writer.add_row("drift_flags", row)
        await writer.flush()
        assert (writer.rows_written, writer.rows_rejected, writer.pending_rows) == (8, 1, 0)
        assert writer.batches_written == 1 and writer.retries == 0

        await writer.add(flag("later", FlagState.RAISED, 10))  # nothing is stuck behind it
        await writer.flush()
        assert (writer.rows_written, writer.rows_rejected) == (9, 1)

    flags = {row[0] for row in client.query("SELECT flag_id FROM drift_flags").result_rows}
    assert flags == {f"f{n}" for n in range(9) if n != 4} | {"later"}
    [line] = dead_letter.read_text(encoding="utf-8").splitlines()
    record = json.loads(line)
    assert record["table"] == "drift_flags"
    assert record["error"].startswith(error), record["error"]
    assert record["row"]["flag_id"] == "f4" and record["row"][column] == value
    assert record["row"]["first_seen"] == at(0).isoformat()


async def test_durable_adds_return_once_their_bad_rows_are_rejected(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a dead-letter file the rows go to the ERROR log; waiters are released either way."""
    good = [flag(f"g{n}", FlagState.RAISED, n) for n in range(20)]
    bad = [
        flag(f"b{n}", FlagState.RAISED, n).model_copy(update={"policy_version": 2**64})
        for n in range(3)
    ]
    messages = [*good[:5], bad[0], *good[5:12], bad[1], bad[2], *good[12:]]
    caplog.set_level(logging.ERROR, logger="store.writer")
    async with BatchWriter(client, max_delay=0.05) as writer:
        await asyncio.wait_for(
            asyncio.gather(writer.add_durably(messages[:10]), writer.add_durably(messages[10:])),
            10,
        )
        assert (writer.rows_written, writer.rows_rejected) == (20, 3)
    assert count(client, "drift_flags") == 20
    rejections = [record.getMessage() for record in caplog.records if record.name == "store.writer"]
    assert len(rejections) == 3
    for flag_id, message in zip(("b0", "b1", "b2"), rejections, strict=True):
        assert "drift_flags" in message and "DataError" in message and flag_id in message


async def test_a_store_refusing_connections_is_retried_not_rejected(
    dsn: str, client: Client, tmp_path: Path
) -> None:
    attempts = 0

    def factory() -> Client:
        nonlocal attempts
        attempts += 1
        if attempts <= 3:
            raise ConnectionRefusedError("connection refused")
        return connect(dsn)  # a second client on the path; the writer closes it

    dead_letter = tmp_path / "dead-letter.jsonl"
    writer = BatchWriter(
        factory, max_delay=0.02, backoff_initial=0.02, backoff_max=0.05, dead_letter=dead_letter
    )
    for n in range(10):
        await writer.add(auth_event(n))
    await asyncio.wait_for(writer.flush(), 10)
    assert await writer.close() == 0
    assert writer.retries == 3 and isinstance(writer.last_error, ConnectionRefusedError)
    assert (writer.rows_written, writer.rows_rejected) == (10, 0)
    assert not dead_letter.exists()
    assert count(client, "auth_events") == 10


async def test_retried_halves_of_a_bisected_batch_are_written_once(
    client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every half lands, then reports a lost connection once: its retry must be dropped."""
    client.command("SYSTEM STOP MERGES auth_events")  # a duplicate must stay visible
    reset: list[str] = []

    def landed_then_reset(
        target: Client,
        table: str,
        rows: Sequence[Sequence[Any]],
        *,
        dedup_token: str | None = None,
        column_types: Sequence[str] | None = None,
    ) -> None:
        insert_rows(target, table, rows, dedup_token=dedup_token, column_types=column_types)
        if dedup_token is not None and "." in dedup_token and dedup_token not in reset:
            reset.append(dedup_token)
            raise ConnectionResetError("connection reset after the insert landed")

    monkeypatch.setattr("store.writer.insert_rows", landed_then_reset)
    rows = [row_for(auth_event(n))[1] for n in range(16)]
    rows[11] = {**rows[11], "observed_at": "not a date"}
    async with BatchWriter(
        client, max_rows=100, max_delay=60, backoff_initial=0.01, dead_letter=tmp_path / "dl"
    ) as writer:
        for row in rows:
            await writer.add_row("auth_events", row)
        await writer.flush()
        assert (writer.rows_written, writer.rows_rejected) == (15, 1)
        assert writer.retries == len(reset) == 4  # halves 0-7, 12-15, 8-9 and 10

    assert count(client, "auth_events") == 15
    distinct = client.query("SELECT uniqExact(endpoint_id) FROM auth_events").result_rows
    assert distinct == [(15,)]


async def test_rows_refused_under_stale_column_types_are_retried_with_fresh_ones(
    client: Client,
) -> None:
    async with BatchWriter(client, max_delay=0.02) as writer:
        await writer.add(flag("before", FlagState.RAISED, 1))
        await writer.flush()  # drift_flags' column types are cached now
        client.command("TRUNCATE TABLE drift_flags")
        client.command("ALTER TABLE drift_flags MODIFY COLUMN detail UInt16")
        await writer.add_row(
            "drift_flags", {**row_for(flag("after", FlagState.RAISED, 2))[1], "detail": 7}
        )
        await writer.flush()
        assert (writer.rows_written, writer.rows_rejected) == (2, 0)
    assert client.query("SELECT flag_id, detail FROM drift_flags").result_rows == [("after", 7)]


# --------------------------------------------------------------------------- chdb rules


def test_chdb_one_engine_path_per_process(tmp_path: Path, dsn: str) -> None:
    """Pins what the store's docstring promises, so a chdb upgrade that changes it is noticed."""
    first, second = connect(dsn), connect(dsn)
    try:
        migrate(first)
        insert(first, auth_event(1))
        assert count(second, "auth_events") == 1  # same path: shared data
        with pytest.raises(ProgrammingError, match="already initialized"):
            connect(f"chdb://{tmp_path}/elsewhere")
    finally:
        first.close()
        second.close()
    other = connect(f"chdb://{tmp_path}/elsewhere")  # all closed: another path is fine
    other.close()


def test_chdb_path_is_locked_against_a_second_process(dsn: str, bare: Client) -> None:
    script = "import sys; from store import connect; connect(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", script, dsn], capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    assert "Another server instance in same directory is already running" in result.stderr


def _beat(endpoint: str, version: str, second: float) -> EndpointSnapshot:
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC) + timedelta(seconds=second)
    return EndpointSnapshot(
        tenant_id="acme",
        endpoint_id=endpoint,
        service_name="claude-code",
        app_version=version,
        team_id="web",
        serial_number=None,
        resource_attributes={"service.version": version},
        signal=Signal.METRICS,
        observed_at=at,
        received_at=at,
    )


def test_heartbeats_store_new_states_and_a_sighting_per_resolution() -> None:
    beats = Heartbeats(resolution=60)
    first = _beat("acme/a", "2.0.1", 0)
    assert beats.needed(first)
    beats.stored(first)
    assert not beats.needed(_beat("acme/a", "2.0.1", 59.9))  # same state, recent sighting
    assert beats.needed(_beat("acme/a", "2.0.2", 1))  # a change is always stored
    assert beats.needed(_beat("acme/b", "2.0.1", 1))  # another endpoint
    assert beats.needed(_beat("acme/a", "2.0.1", 60))  # the sighting is due
    assert beats.skipped == 1


def test_heartbeats_off_and_bounded() -> None:
    off = Heartbeats(resolution=0)
    off.stored(_beat("acme/a", "2.0.1", 0))
    assert off.needed(_beat("acme/a", "2.0.1", 1))
    bounded = Heartbeats(resolution=60, max_endpoints=2)
    for name in ("a", "b", "c"):
        bounded.stored(_beat(f"acme/{name}", "2.0.1", 0))
    assert bounded.needed(_beat("acme/a", "2.0.1", 1))  # forgotten first: written again
    assert not bounded.needed(_beat("acme/c", "2.0.1", 1))


def test_coalesced_auth_events_are_stored_with_their_count_and_recovered_per_request(
    client: Client,
) -> None:
    from processors.recovery import load_states

    run = auth_event(1).model_copy(
        update={"count": 3, "first_observed_at": at(0.5), "observed_at": at(2)}
    )
    insert(client, auth_event(0).model_copy(update={"endpoint_id": "acme/SN1"}), run)
    rows = client.query(
        "SELECT count, first_observed_at, observed_at FROM auth_events FINAL "
        "WHERE endpoint_id = 'acme/SN1' ORDER BY observed_at"
    ).result_rows
    assert [(r[0], r[1], r[2]) for r in rows] == [(1, at(0), at(0)), (3, at(0.5), at(2))]
    state = load_states(client)["acme/SN1"]
    # the 4 rejected requests, not the 2 events (at most MAX_STALE_THRESHOLD of them)
    assert state.rejections == (at(0), at(0.5), at(2), at(2))


def test_auth_event_rows_written_before_counts_read_as_one_rejection(bare: Client) -> None:
    from store import load_migrations

    migrate(bare, migrations=[m for m in load_migrations() if m.version < 8])
    bare.command(
        "INSERT INTO auth_events (tenant_id, endpoint_id, identity, token_id, reason, source,"
        " observed_at) VALUES ('acme', 'acme/OLD', NULL, NULL, 'retired', 's', '2026-11-27')"
    )
    migrate(bare)
    [(count_, first, last)] = bare.query(
        "SELECT count, first_observed_at, observed_at FROM auth_events"
    ).result_rows
    assert count_ == 1 and first == last
