"""Messages as table rows: column order per table, the state hash, which snapshots to write."""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from schemas import AuthEvent, DriftFlag, EndpointSnapshot
from schemas.remediation import AuditRecord, ComplianceRecord

log = logging.getLogger(__name__)


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
            "first_received",
            "token_id",
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
            "last_contact",
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
        self._stored: dict[str, tuple[int, datetime, str | None]] = {}

    def needed(self, snapshot: EndpointSnapshot) -> bool:
        if self.resolution <= 0:
            return True
        stored = self._stored.get(snapshot.endpoint_id)
        if (
            stored is not None
            and stored[0] == state_hash(snapshot)
            and stored[2] == snapshot.token_id  # a laptop moving to a new token is news
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
        self._stored[snapshot.endpoint_id] = (
            state_hash(snapshot),
            snapshot.received_at,
            snapshot.token_id,
        )


def values_for(message: StoreMessage) -> tuple[str, list[Any]]:
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
            message.received_at,
            message.token_id,
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
    table, values = values_for(message)
    return table, dict(zip(TABLE_COLUMNS[table], values, strict=True))


def values_of_row(table: str, row: Mapping[str, Any]) -> list[Any]:
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
