"""The ClickHouse store every stage writes through: client factory, migrations, rows, batch writer.

One engine, two places: ``chdb://PATH`` runs ClickHouse in-process (embedded default, tests),
``http(s)://user:pass@host:8123/db`` talks to a server. Both give the same clickhouse-connect
``Client`` and the same SQL, so nothing above this module knows which one it has.

chdb is in-process, and that has rules (checked against chdb 4.4 / ClickHouse 26.9):

- One engine path per process. Any number of clients on the *same* path work (each has its own
  session; they share the data, and can be used from different threads). A client on a
  *different* path raises ``ProgrammingError`` while any client of the first path is still open;
  once all are closed, another path can be opened. Close clients you are done with.
- One process per path. A second process opening a path that another process holds fails at
  ``connect`` ("Cannot lock file …/status. Another server instance in same directory is already
  running"). Several processes (e.g. one ingest worker per core) must use a server, or hand their
  rows to the one process that owns the chdb path.
- A chdb client serialises its own calls with a lock, so one client used from a writer thread and
  from the event loop is safe, just not parallel.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import re
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Final, Self

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError, DataError

from driftline.aio import wait_at_most
from schemas import AuthEvent, DriftFlag, EndpointSnapshot
from schemas.remediation import AuditRecord, ComplianceRecord

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TTL_DAYS",
    "TABLE_COLUMNS",
    "BatchWriter",
    "Client",
    "Migration",
    "StoreMessage",
    "WriterClosed",
    "connect",
    "current_drift",
    "insert_rows",
    "latest_endpoints",
    "load_migrations",
    "migrate",
    "optimize",
    "query_dicts",
    "row_for",
    "state_hash",
]

# --------------------------------------------------------------------------- connect

_CHDB: Final = "chdb://"


def connect(dsn: str) -> Client:
    """The one client factory: ``chdb://PATH`` (directory created) or ``http(s)://…``.

    Everything after ``chdb://`` is the path, so ``chdb:///var/lib/driftline`` is absolute and
    ``chdb://.driftline/clickhouse`` is relative (clickhouse-connect's own parsing would read the
    first segment of the latter as a host). ``chdb://:memory:`` is an in-memory engine.
    Timestamps come back timezone-aware; HTTP clients get no session id, so one client can be
    shared by threads (a session would serialise them and reject concurrent queries).
    """
    if dsn.startswith(_CHDB):
        location = dsn[len(_CHDB) :]
        if not location or location == ":memory:":
            return clickhouse_connect.get_client(interface="chdb", tz_mode="aware")
        path = Path(location).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(interface="chdb", path=str(path), tz_mode="aware")
    if dsn.startswith(("http://", "https://")):
        return clickhouse_connect.get_client(
            dsn=dsn, tz_mode="aware", autogenerate_session_id=False
        )
    scheme = dsn.split("://", 1)[0] if "://" in dsn else "(none)"
    raise ValueError(
        f"unsupported store DSN scheme {scheme!r}: use chdb://PATH, http://… or https://…"
    )


# --------------------------------------------------------------------------- migrations

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
    """The ``NNN_name.sql`` files by version; default ``schemas/ddl``, shipped as package data."""
    root = directory if directory is not None else resources.files("schemas.ddl")
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


# --------------------------------------------------------------------------- rows

# Insert column order per table; columns with defaults (drift_flags.recorded_at) are left out.
TABLE_COLUMNS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "endpoint_states": (
            "tenant_id",
            "endpoint_id",
            "state_hash",
            "service_name",
            "app_version",
            "team_id",
            "serial_number",
            "resource_attributes",
            "first_seen",
            "last_seen",
            "last_received",
        ),
        "auth_events": (
            "tenant_id",
            "endpoint_id",
            "identity",
            "token_id",
            "reason",
            "source",
            "observed_at",
            "count",
            "first_observed_at",
        ),
        "drift_flags": (
            "tenant_id",
            "flag_id",
            "state",
            "endpoint_id",
            "kind",
            "detail",
            "first_seen",
            "last_seen",
            "policy_version",
        ),
        "compliance_records": (
            "tenant_id",
            "vendor",
            "device_id",
            "serial_number",
            "status",
            "reason",
            "reported_at",
            "imported_at",
        ),
        "remediation_audit": (
            "tenant_id",
            "action_id",
            "attempt",
            "state",
            "endpoint_id",
            "serial_number",
            "vendor",
            "device_id",
            "action",
            "reason",
            "detail",
            "dry_run",
            "request",
            "response_status",
            "at",
        ),
        "policy_changelog": (
            "tenant_id",
            "vendor",
            "policy_version",
            "digest",
            "outcome",
            "detail",
            "payload_file",
            "at",
        ),
    }
)

StoreMessage = EndpointSnapshot | AuthEvent | DriftFlag | ComplianceRecord | AuditRecord


_last_hashed: list[Any] = [None, 0]  # (snapshot, hash): Heartbeats asks, then the writer


def state_hash(snapshot: EndpointSnapshot) -> int:
    """UInt64 identity of what an endpoint *is*, independent of when it said so.

    Covers service_name, app_version, team_id, serial_number and resource_attributes (key order
    ignored). Stored in endpoint_states' key: changing this function splits every endpoint's
    history in two, so don't. The last answer is remembered by identity (snapshots are
    immutable): the heartbeat check and the row for the same snapshot share one computation.
    """
    if _last_hashed[0] is snapshot:
        return int(_last_hashed[1])
    canonical = json.dumps(
        [
            snapshot.service_name,
            snapshot.app_version,
            snapshot.team_id,
            snapshot.serial_number,
            sorted(snapshot.resource_attributes.items()),
        ],
        separators=(",", ":"),
        ensure_ascii=False,
    )
    digest = hashlib.blake2b(canonical.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "big")
    _last_hashed[:] = (snapshot, value)
    return value


class Heartbeats:
    """Which snapshots the store needs: "latest per endpoint plus changes, not every export".

    A laptop re-exports the same resource every few seconds. Its row in ``endpoint_states``
    changes only by ``last_seen``, so a snapshot is written when its state is new for the
    endpoint, or when the stored sighting is ``resolution`` seconds old (by receipt time);
    the rest are acknowledged without a write. ``last_seen`` in the store thus trails by at
    most ``resolution``; ``0`` writes every snapshot. Concurrent duplicates merge in the table,
    so the check needs no lock. Memory: one small tuple per endpoint, at most ``max_endpoints``
    (oldest forgotten first: a forgotten endpoint is just written again).
    """

    def __init__(self, resolution: float, max_endpoints: int = 1_000_000) -> None:
        self.resolution = resolution
        self.max_endpoints = max_endpoints
        self.skipped = 0
        self._stored: dict[str, tuple[int, datetime]] = {}

    def needed(self, snapshot: EndpointSnapshot) -> bool:
        if self.resolution <= 0:
            return True
        stored = self._stored.get(snapshot.endpoint_id)
        if (
            stored is not None
            and stored[0] == state_hash(snapshot)
            and (snapshot.received_at - stored[1]).total_seconds() < self.resolution
        ):
            self.skipped += 1
            return False
        return True

    def stored(self, snapshot: EndpointSnapshot) -> None:
        if self.resolution <= 0:
            return
        stored = self._stored.pop(snapshot.endpoint_id, None)  # re-insert: newest last
        if stored is None and len(self._stored) >= self.max_endpoints:
            del self._stored[next(iter(self._stored))]
        self._stored[snapshot.endpoint_id] = (state_hash(snapshot), snapshot.received_at)


def _values_for(message: StoreMessage) -> tuple[str, list[Any]]:
    """Table and values in TABLE_COLUMNS order: the writer's hot path, no dict in between."""
    if isinstance(message, EndpointSnapshot):
        return "endpoint_states", [
            message.tenant_id,
            message.endpoint_id,
            state_hash(message),
            message.service_name,
            message.app_version,
            message.team_id,
            message.serial_number,
            message.resource_attributes,
            message.observed_at,
            message.observed_at,
            message.received_at,
        ]
    if isinstance(message, AuthEvent):
        return "auth_events", [
            message.tenant_id or "",
            message.endpoint_id or "",
            message.identity,
            message.token_id,
            message.reason.value,
            message.source,
            message.observed_at,
            message.count,
            message.first_at,
        ]
    if isinstance(message, DriftFlag):
        return "drift_flags", [
            message.tenant_id,
            message.flag_id,
            message.state.value,
            message.endpoint_id,
            message.kind.value,
            message.detail,
            message.first_seen,
            message.last_seen,
            message.policy_version,
        ]
    if isinstance(message, ComplianceRecord | AuditRecord):
        table = (
            "compliance_records" if isinstance(message, ComplianceRecord) else "remediation_audit"
        )
        fields = message.model_dump()
        return table, [fields[column] for column in TABLE_COLUMNS[table]]
    raise TypeError(f"no table stores {type(message).__name__}")


def row_for(message: StoreMessage) -> tuple[str, dict[str, Any]]:
    """The table a bus message belongs in and its row, so sinks need no per-message glue."""
    table, values = _values_for(message)
    return table, dict(zip(TABLE_COLUMNS[table], values, strict=True))


def _values_of_row(table: str, row: Mapping[str, Any]) -> list[Any]:
    """Check a hand-built row here, in the caller, not later in the writer thread."""
    columns = TABLE_COLUMNS.get(table)
    if columns is None:
        raise ValueError(f"unknown table {table!r}; known: {', '.join(TABLE_COLUMNS)}")
    if row.keys() != set(columns):
        missing = sorted(set(columns) - row.keys())
        extra = sorted(row.keys() - set(columns))
        raise ValueError(f"row for {table}: missing {missing}, unexpected {extra}")
    return [row[column] for column in columns]


def insert_rows(
    client: Client,
    table: str,
    rows: Sequence[Sequence[Any]],
    *,
    dedup_token: str | None = None,
    column_types: Sequence[str] | None = None,
) -> None:
    """Insert rows (values in TABLE_COLUMNS order) as one block.

    ``dedup_token`` names the batch: the same token again within the table's last 1000 inserts
    (``non_replicated_deduplication_window``, set in the DDL; replicated tables dedupe by
    default) is dropped by ClickHouse, so a retried batch is not written twice. Without one a
    fresh token is used, so identical rows in two different batches both count. Async insert
    is off: we batch ourselves, and async inserts skip token deduplication.
    """
    client.insert(
        table,
        rows,
        column_names=list(TABLE_COLUMNS[table]),
        column_type_names=list(column_types) if column_types is not None else None,
        settings={
            "insert_deduplicate": 1,
            "insert_deduplication_token": dedup_token or uuid.uuid4().hex,
            "async_insert": 0,
        },
    )


# --------------------------------------------------------------------------- reads


def query_dicts(
    client: Client, sql: str, parameters: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows as dicts. Values travel as bound ``{name:Type}`` parameters, never inside the SQL."""
    result = client.query(sql, parameters=dict(parameters or {}))
    return [dict(row) for row in result.named_results()]


def current_drift(client: Client, tenant_id: str) -> list[dict[str, Any]]:
    """A tenant's open drift flags with their endpoint's team, service and version."""
    return query_dicts(
        client,
        "SELECT * FROM drift_current WHERE tenant_id = {tenant_id:String} "
        "ORDER BY endpoint_id, kind, flag_id",
        {"tenant_id": tenant_id},
    )


def latest_endpoints(client: Client, tenant_id: str) -> list[dict[str, Any]]:
    """A tenant's endpoints, each in its latest known state."""
    return query_dicts(
        client,
        "SELECT * FROM endpoints_latest WHERE tenant_id = {tenant_id:String} ORDER BY endpoint_id",
        {"tenant_id": tenant_id},
    )


def optimize(client: Client, table: str) -> None:
    """Merge a table's parts now (tests, maintenance); queries never depend on it."""
    if table not in TABLE_COLUMNS:
        raise ValueError(f"unknown table {table!r}")
    client.command("OPTIMIZE TABLE {table:Identifier} FINAL", parameters={"table": table})


# --------------------------------------------------------------------------- batch writer


class WriterClosed(RuntimeError):
    """The writer is closing or closed and takes no more rows."""


@dataclass(slots=True)
class _Buffer:
    rows: list[list[Any]] = field(default_factory=list)
    since: float = 0.0  # monotonic time of the oldest buffered row
    landed: asyncio.Future[None] | None = None  # for add_durably: set once these rows are written


@dataclass(slots=True)
class _Batch:
    number: int
    table: str
    rows: list[list[Any]]
    token: str  # the same on every retry, so a retry of a batch that did land is dropped
    landed: asyncio.Future[None] | None  # the buffer's, carried over when it was sealed


class BatchWriter:
    """Buffers rows per table and writes them in batches from one worker task.

    A buffer is written when it holds ``max_rows`` or its oldest row is ``max_delay`` seconds
    old (``delays`` overrides that per table: rows someone waits for go out sooner). Memory is
    bounded: once ``max_pending_rows`` are buffered or in flight, ``add`` waits, which passes
    ClickHouse's pace back to the consumer (a Kafka sink stops fetching instead of growing).
    Inserts run in a thread, one at a time, each batch with its own deduplication token. A batch
    that fails because the store is unavailable is kept and retried with exponential backoff
    until it lands or ``close`` gives up: ``retries`` and ``last_error`` show a writer that is
    stuck. A batch refused for its *data* would fail the same way forever and hold up every
    later row, so it is bisected instead: the good rows are written, each row ClickHouse can
    never take is logged at ERROR, appended to the ``dead_letter`` JSON-lines file (when given)
    and counted in ``rows_rejected``. Nothing is dropped silently. ``flush`` returns once
    everything added before it is written or dead-lettered (call it before committing consumer
    offsets).

    ``client`` may be a client or a factory; a factory is called in the worker (and retried) so
    the writer can start while ClickHouse is still down, and the client it made is closed with
    the writer.
    """

    def __init__(
        self,
        client: Client | Callable[[], Client],
        *,
        max_rows: int = 5000,
        max_delay: float = 1.0,
        delays: Mapping[str, float] | None = None,
        max_pending_rows: int = 50_000,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        close_timeout: float = 10.0,
        dead_letter: Path | None = None,
    ) -> None:
        if not 0 < max_rows <= max_pending_rows:
            raise ValueError("need 0 < max_rows <= max_pending_rows")
        if isinstance(client, Client):
            self._client: Client | None = client
            self._factory: Callable[[], Client] | None = None
        else:
            self._client = None
            self._factory = client
        self.max_rows = max_rows
        self.max_delay = max_delay
        self.delays = dict(delays or {})
        self.max_pending_rows = max_pending_rows
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.close_timeout = close_timeout
        self.dead_letter = dead_letter

        self.rows_added = 0
        self.rows_written = 0
        self.rows_rejected = 0  # refused for their data: logged and dead-lettered
        self.batches_written = 0
        self.retries = 0
        self.last_error: BaseException | None = None

        self._buffers: dict[str, _Buffer] = {}
        self._ready: deque[_Batch] = deque()
        self._pending = 0
        self._numbers = itertools.count(1)
        self._sealed = 0  # number of the last sealed batch
        self._written = 0  # batches are written in order, so this is a high-water mark
        self._column_types: dict[str, list[str]] = {}
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None

    @property
    def pending_rows(self) -> int:
        """Rows accepted but not yet written (buffered or in a batch)."""
        return self._pending

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start the worker (``add`` does it too); needs a running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name="driftline-store-writer"
            )
            # wake adds and flushes waiting for progress that a dead worker will never make
            self._worker.add_done_callback(lambda _: self._progress.set())
            self._worker.add_done_callback(lambda _: self._fail_waiters())

    def _check_worker(self) -> None:
        """A worker that died of a bug must fail adds loudly, not block them forever."""
        if self._worker is None or not self._worker.done() or self._closing:
            return
        error = None if self._worker.cancelled() else self._worker.exception()
        raise WriterClosed("store writer stopped unexpectedly") from error

    async def add(self, message: StoreMessage) -> None:
        table, values = _values_for(message)
        await self._add(table, values)

    async def add_row(self, table: str, row: Mapping[str, Any]) -> None:
        """A row for a table without a bus message (compliance_records, remediation_audit).

        Values must already have the column types (aware datetimes, ints, bools): a row with a
        value ClickHouse cannot take is rejected (dead-lettered), not written.
        """
        await self._add(table, _values_of_row(table, row))

    async def _add(self, table: str, values: list[Any]) -> None:
        while self._pending >= self.max_pending_rows and not self._closing:
            self._check_worker()
            self._progress.clear()
            await self._progress.wait()
        if self._closing:
            raise WriterClosed("store writer is closed")
        self._check_worker()
        self.start()
        buffer = self._buffers.setdefault(table, _Buffer())
        if not buffer.rows:
            buffer.since = time.monotonic()
            self._wake.set()  # the worker must learn the new deadline
        buffer.rows.append(values)
        self._pending += 1
        self.rows_added += 1
        if len(buffer.rows) >= self.max_rows:
            self._seal(table)
            self._wake.set()

    async def add_durably(self, messages: Sequence[StoreMessage]) -> None:
        """Add, then return once every one of these rows is written (group commit).

        Concurrent callers share batches, so ``max_delay`` bounds the wait and the insert rate.
        Every caller whose rows went into one batch waits on that batch's one future, so a
        thousand callers per batch cost a thousand wake-ups, not a thousand futures and
        gathers. A rejected row counts as done: it is in the dead-letter file, and waiting for
        it would wait forever.
        """
        landings: list[asyncio.Future[None]] = []
        for message in messages:
            table, values = _values_for(message)
            await self._add(table, values)
            landed = self._landing_of_last_row(table)
            if not landings or landings[-1] is not landed:
                landings.append(landed)
        for landed in landings:
            await landed

    def _landing_of_last_row(self, table: str) -> asyncio.Future[None]:
        """The future of the batch holding the row just added to ``table`` (no await since)."""
        holder: _Buffer | _Batch = self._buffers[table]
        if not holder.rows:  # the add filled the buffer and sealed it: it is the newest batch
            holder = self._ready[-1]
        if holder.landed is None:
            holder.landed = asyncio.get_running_loop().create_future()
        return holder.landed

    def _fail_waiters(self) -> None:
        holders: list[_Buffer | _Batch] = [*self._buffers.values(), *self._ready]
        for holder in holders:
            if holder.landed is not None and not holder.landed.done():
                holder.landed.set_exception(WriterClosed("store writer closed before the write"))
                holder.landed.exception()  # retrieved: nobody may be waiting any more

    async def flush(self) -> None:
        """Write (or reject) everything added so far; waits while ClickHouse is unavailable."""
        for table in list(self._buffers):
            self._seal(table)
        target = self._sealed
        self._wake.set()
        while self._written < target:
            if self._worker is None or self._worker.done():
                raise WriterClosed("store writer stopped before the flush completed")
            self._progress.clear()
            await self._progress.wait()

    async def close(self, grace: float | None = None) -> int:
        """Stop taking rows, write what can be written in ``grace`` seconds; return rows lost.

        Default grace: ``close_timeout``. Batches still unwritten then are abandoned and logged.
        """
        self._closing = True
        for table in list(self._buffers):
            self._seal(table)
        self._wake.set()
        self._progress.set()  # release adds waiting for room: they raise WriterClosed
        if self._worker is not None:
            limit = self.close_timeout if grace is None else grace
            done, _ = await asyncio.wait({self._worker}, timeout=limit)
            if not done:
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
        self._fail_waiters()
        lost = self._pending
        if lost:
            log.error(
                "store writer closed with %d rows unwritten (last error: %s)",
                lost,
                self.last_error,
            )
        if self._factory is not None and self._client is not None:
            client, self._client = self._client, None
            # an abandoned insert may still hold the client; don't let it hold up close too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(client.close), timeout=1.0)
        return lost

    def _seal(self, table: str) -> None:
        buffer = self._buffers.get(table)
        if buffer is None or not buffer.rows:
            return
        number = next(self._numbers)
        self._ready.append(_Batch(number, table, buffer.rows, uuid.uuid4().hex, buffer.landed))
        self._sealed = number
        buffer.rows = []
        buffer.landed = None

    def _seal_due(self) -> float | None:
        """Seal buffers whose oldest row waited max_delay; return seconds to the next deadline.

        Nothing is sealed by time while batches wait to be written: rows keep gathering in
        the buffer and go out as one larger batch, so a slow store gets fewer, bigger inserts
        instead of a growing queue of small ones.
        """
        if self._ready:
            return None
        now = time.monotonic()
        wait: float | None = None
        for table, buffer in self._buffers.items():
            if not buffer.rows:
                continue
            left = buffer.since + self.delays.get(table, self.max_delay) - now
            if left <= 0:
                self._seal(table)
            elif wait is None or left < wait:
                wait = left
        return wait

    async def _run(self) -> None:
        while True:
            wait = self._seal_due()
            if self._ready:
                batch = self._ready[0]
                rejected = await self._write(batch)
                self._ready.popleft()
                self._pending -= len(batch.rows)
                self._written = batch.number
                # rejected rows are done too (dead-lettered): their waiters must not hang
                if batch.landed is not None and not batch.landed.done():
                    batch.landed.set_result(None)
                self.rows_written += len(batch.rows) - rejected
                self.batches_written += 1
                self._progress.set()
                continue
            if self._closing:
                return
            self._wake.clear()
            await wait_at_most(self._wake, wait)

    async def _write(self, batch: _Batch) -> int:
        """Land a batch; returns how many of its rows were rejected for their data."""
        return await self._land(batch.table, batch.rows, batch.token)

    async def _land(
        self, table: str, rows: list[list[Any]], token: str, types_checked: bool = False
    ) -> int:
        """Insert ``rows`` until they land, bisecting around rows refused for their data.

        Halves get tokens derived from ``token`` (``token.0``, ``token.1``), and bisection is
        deterministic, so a retried half carries the same token and is deduplicated. A refusal
        under column types cached before this batch is retried once with fresh ones first
        (``types_checked``: already done for the batch being bisected).
        """
        delay = self.backoff_initial
        while True:
            try:
                await asyncio.to_thread(self._insert, table, rows, token)
                return 0
            except _Refused as refused:
                error = refused.error
                self.last_error = error
                if not (refused.fresh_types or types_checked):
                    self._column_types.pop(table, None)
                    types_checked = True
                    continue  # types cached before a schema change refuse good rows too
                if len(rows) == 1:
                    await self._reject(table, rows[0], error)
                    return 1
                middle = len(rows) // 2
                log.warning(
                    "store refused %d rows for %s (%s): finding the bad ones",
                    len(rows),
                    table,
                    _describe(error),
                )
                first = await self._land(table, rows[:middle], token + ".0", True)
                return first + await self._land(table, rows[middle:], token + ".1", True)
            except Exception as error:  # the store, not the rows: keep them, they are the data
                self.retries += 1
                self.last_error = error
                self._column_types.pop(table, None)  # the table may have been re-created
                log.warning(
                    "store write of %d rows to %s failed (retry in %.1fs): %s",
                    len(rows),
                    table,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    def _insert(self, table: str, rows: list[list[Any]], token: str) -> None:
        """Runs in a worker thread: the client is synchronous.

        Only the insert itself can refuse the rows; failing to connect or to look up the
        column types is the store's trouble, whatever it raises.
        """
        if self._client is None:
            assert self._factory is not None
            self._client = self._factory()
        client = self._client
        types = self._column_types.get(table)
        fresh = types is None
        if types is None:
            context = client.create_insert_context(table, column_names=list(TABLE_COLUMNS[table]))
            types = [column_type.name for column_type in context.column_types]
            self._column_types[table] = types
        try:
            insert_rows(client, table, rows, dedup_token=token, column_types=types)
        except Exception as error:
            if _about_data(error):
                raise _Refused(error, fresh_types=fresh) from error
            raise

    async def _reject(self, table: str, values: list[Any], error: BaseException) -> None:
        """Record a row ClickHouse will never take: ERROR log, dead-letter file, counter."""
        self.rows_rejected += 1
        reason = _describe(error)
        line = json.dumps(
            {
                "table": table,
                "error": reason,
                "rejected_at": datetime.now(UTC).isoformat(),
                "row": dict(zip(TABLE_COLUMNS[table], values, strict=True)),
            },
            default=_jsonable,
        )
        if self.dead_letter is None:
            log.error("store rejected a row of %s: %s; row: %s", table, reason, line)
            return
        try:
            await asyncio.to_thread(_append_line, self.dead_letter, line)
        except OSError as failure:
            log.error(
                "store rejected a row of %s: %s; cannot dead-letter it to %s (%s); row: %s",
                table,
                reason,
                self.dead_letter,
                failure,
                line,
            )
            return
        log.error("store rejected a row of %s: %s; recorded in %s", table, reason, self.dead_letter)


class _Refused(Exception):
    """The insert failed because of the rows it carried; retrying them as they are is futile.

    Unless the column types were cached (``fresh_types`` False): the table may have changed.
    """

    def __init__(self, error: Exception, *, fresh_types: bool) -> None:
        super().__init__(str(error))
        self.error = error
        self.fresh_types = fresh_types


# What a row ClickHouse can never take raises, observed with clickhouse-connect 1.12 / chdb 4.4
# (ClickHouse 26.9), with and without column_types; clickhouse-connect encodes in the client, so
# most never reach the engine:
# - 70000 or -1 into UInt16, 2**63 into Int64: DataError (from struct.error); None into a
#   non-Nullable String: DataError; None into UInt16: TypeError; "abc" into UInt16 or "not a
#   date" into DateTime64: ValueError; a lone surrogate in a String: UnicodeEncodeError (a
#   ValueError); 5 into String or None into DateTime64: AttributeError.
# - refused by the engine: DatabaseError whose ``code`` names the data, e.g. 469
#   VIOLATED_CONSTRAINT, 6 CANNOT_PARSE_TEXT (a string sent for a UInt16 column).
# What an unavailable store raises, for contrast: a missing table is DatabaseError code 60
# UNKNOWN_TABLE; a refused HTTP connection is OperationalError; a chdb path locked by another
# process, another path open in this one, or a closed client is ProgrammingError. So
# ProgrammingError is not about data, and neither is a DatabaseError without a data code
# (HTTP 5xx without one, timeouts, memory, too many parts): those are retried.
_DATA_ERRORS: Final = (
    DataError,
    TypeError,
    ValueError,
    OverflowError,
    AttributeError,
    struct.error,
)
_DATA_ERROR_CODES: Final = frozenset(
    {
        6,  # CANNOT_PARSE_TEXT
        25,  # CANNOT_PARSE_ESCAPE_SEQUENCE
        26,  # CANNOT_PARSE_QUOTED_STRING
        27,  # CANNOT_PARSE_INPUT_ASSERTION_FAILED
        38,  # CANNOT_PARSE_DATE
        41,  # CANNOT_PARSE_DATETIME
        53,  # TYPE_MISMATCH
        70,  # CANNOT_CONVERT_TYPE
        72,  # CANNOT_PARSE_NUMBER
        117,  # INCORRECT_DATA
        321,  # VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE
        349,  # CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
        376,  # CANNOT_PARSE_UUID
        407,  # DECIMAL_OVERFLOW
        441,  # CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING
        467,  # CANNOT_PARSE_BOOL
        469,  # VIOLATED_CONSTRAINT
        675,  # CANNOT_PARSE_IPV4
        676,  # CANNOT_PARSE_IPV6
        691,  # UNKNOWN_ELEMENT_OF_ENUM
    }
)


def _about_data(error: BaseException) -> bool:
    """Whether an insert failed for the rows it carried rather than for the store (above)."""
    if isinstance(error, _DATA_ERRORS):
        return True
    return isinstance(error, DatabaseError) and error.code in _DATA_ERROR_CODES


def _describe(error: BaseException) -> str:
    """Type and message, with the cause's: DataError's own text hides the offending value."""
    text = f"{type(error).__name__}: {error}"
    cause = error.__cause__
    if cause is not None and str(cause):
        text += f" ({type(cause).__name__}: {cause})"
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    return repr(value)


def _append_line(path: Path, line: str) -> None:
    """Append and fsync: a rejected row's waiters are released on the strength of this line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as file:
        file.write(line + "\n")
        file.flush()
        os.fsync(file.fileno())
