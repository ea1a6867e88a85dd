"""Schema migrations: the numbered ``ddl/NNN_name.sql`` files, applied once each, in order."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from types import MappingProxyType
from typing import Final

from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)


# Days each kind of row is kept; the DDL names them as {ttl_<key>_days}.
DEFAULT_TTL_DAYS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "snapshots": 90,  # endpoint_states (endpoint history)
        "auth_events": 30,
        "flags": 365,  # drift_flags
        "compliance": 365,  # compliance_records
        "audit": 730,  # remediation_audit
    }
)

_MIGRATIONS_TABLE: Final = "driftline_migrations"
_MIGRATION_FILE: Final = re.compile(r"^(\d{3,})_(\w+)\.sql$")
_PLACEHOLDER: Final = re.compile(r"\{(ttl_[a-z_]+_days)\}")
# A statement ends with ";" at the end of a line; DDL never needs that inside a literal.
_STATEMENT_END: Final = re.compile(r";[ \t]*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str  # as written, placeholders included

    def statements(self, ttl_days: Mapping[str, int]) -> list[str]:
        """Placeholders substituted, split into statements, comment-only pieces dropped."""
        rendered = _PLACEHOLDER.sub(lambda match: _ttl_value(match.group(1), ttl_days), self.sql)
        pieces = (_strip_comments(piece) for piece in _STATEMENT_END.split(rendered))
        return [piece for piece in pieces if piece]


def _ttl_value(placeholder: str, ttl_days: Mapping[str, int]) -> str:
    key = placeholder.removeprefix("ttl_").removesuffix("_days")
    if key not in ttl_days:
        raise ValueError(f"migration uses unknown TTL placeholder {{{placeholder}}}")
    return str(ttl_days[key])


def _strip_comments(statement: str) -> str:
    lines = (line for line in statement.splitlines() if not line.lstrip().startswith("--"))
    return "\n".join(lines).strip()


def _ttl_settings(overrides: Mapping[str, int] | None) -> dict[str, int]:
    """Defaults with overrides; unknown names and non-positive days are configuration errors."""
    merged = dict(DEFAULT_TTL_DAYS)
    for key, days in (overrides or {}).items():
        if key not in DEFAULT_TTL_DAYS:
            raise ValueError(f"unknown TTL {key!r}; known: {', '.join(DEFAULT_TTL_DAYS)}")
        if isinstance(days, bool) or not isinstance(days, int) or days < 1:
            raise ValueError(f"TTL {key!r} must be a whole number of days >= 1, got {days!r}")
        merged[key] = days
    return merged


def load_migrations(directory: Traversable | Path | None = None) -> list[Migration]:
    """The ``NNN_name.sql`` files by version; default ``store/ddl``, shipped as package data."""
    root = directory if directory is not None else resources.files("store.ddl")
    found: dict[int, Migration] = {}
    for entry in root.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if not match:
            continue
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"two migrations with version {version}")
        found[version] = Migration(version, match.group(2), entry.read_text(encoding="utf-8"))
    return [found[version] for version in sorted(found)]


def applied_versions(client: Client) -> set[int]:
    _ensure_migrations_table(client)
    rows = client.query("SELECT DISTINCT version FROM driftline_migrations").result_rows
    return {int(row[0]) for row in rows}


def _ensure_migrations_table(client: Client) -> None:
    # Replacing: a version recorded twice (two migrators racing) still reads as one.
    client.command(
        "CREATE TABLE IF NOT EXISTS driftline_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) "
        "ENGINE = ReplacingMergeTree ORDER BY version"
    )


def migrate(
    client: Client,
    ttl_days: Mapping[str, int] | None = None,
    migrations: Sequence[Migration] | None = None,
) -> list[int]:
    """Apply the migrations not yet recorded, in order; return their versions.

    ClickHouse DDL is not transactional: a file that fails half-way is not recorded and runs
    again whole next time, so every statement must be idempotent (``IF NOT EXISTS``). TTLs are
    baked into the DDL when a table is created; changing them later takes a new migration
    (``ALTER TABLE … MODIFY TTL``). Run it from one place (start-up of the owning process).
    """
    settings = _ttl_settings(ttl_days)
    pending = list(migrations) if migrations is not None else load_migrations()
    done = applied_versions(client)
    applied: list[int] = []
    for migration in pending:
        if migration.version in done:
            continue
        for statement in migration.statements(settings):
            client.command(statement)
        client.insert(
            _MIGRATIONS_TABLE,
            [[migration.version, migration.name, datetime.now(UTC)]],
            column_names=["version", "name", "applied_at"],
        )
        log.info("applied migration %03d_%s", migration.version, migration.name)
        applied.append(migration.version)
    return applied
