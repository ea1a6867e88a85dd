"""A known fleet in the store, for the console, report, SQL and metrics tests.

Tenant ``acme`` has 10 endpoints, A0…A9:
- A0-A5 run claude-code 2.0.14, A6-A9 run 2.0.3 (below the minimum): 4 open outdated_client;
- A0-A4 are team ``web``, A5-A8 team ``data``, A9 has no team: 1 open missing_policy;
- so 4 endpoints drift and 6 of 10 (60.0%) are compliant;
- A0 had outdated_client raised 3 days ago and resolved 2 days ago, after a live force-sync
  2 hours before that: one remediated sync, time to remediate 7,200 s; A6 has a dry-run plan;
- A7 still sends a retired token (3 rejections after its last accepted snapshot);
- acme rotated its token a moment ago (1 day of grace): A8's latest snapshot still came with
  the retiring token, the nine others' with the new one (one still on it, nine moved);
- A6's Jamf device reports noncompliant; acme pushed policy v1 to Jamf.

Tenant ``globex`` has 3 endpoints, G0…G2, team ``globex-secret-team``, version 9.9.9, G0
outdated; globex rotated too, and G2 is still on its retiring token: nothing of it may ever
appear in acme's views.

``python -m tests.support.console_fleet DATA`` seeds DATA/clickhouse in a process of its own, so
the test process never holds the chdb lock a `driftline run` needs.
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import store
from ingest.tokens import TokenStore
from schemas import AuthEvent, AuthReason, DriftFlag, EndpointSnapshot, FlagKind, FlagState, Signal
from schemas.remediation import (
    ActionKind,
    AuditRecord,
    AuditState,
    ComplianceRecord,
    ComplianceStatus,
    Vendor,
)

HOSTILE = "<img src=x onerror=\"document.title='pwned'\">"


# (retiring, current) token ids per tenant; `seed` replaces them with a real registry's
TOKENS: dict[str, tuple[str, str]] = {
    "acme": ("ac01d000", "ac2e3000"),
    "globex": ("9b01d000", "9b2e3000"),
}
STILL_ON_RETIRING = ("A8", "G2")


def _snapshot(
    tenant: str,
    serial: str,
    version: str,
    team: str | None,
    at: datetime,
    tokens: dict[str, tuple[str, str]] = TOKENS,
    *,
    retiring: bool = False,
) -> EndpointSnapshot:
    attributes = {"service.name": "claude-code", "device.serial_number": serial}
    if serial == "A5":
        attributes["host.name"] = HOSTILE  # attacker-controlled telemetry, shown on a page
    return EndpointSnapshot(
        tenant_id=tenant, endpoint_id=f"{tenant}/{serial}", serial_number=serial,
        service_name="claude-code", app_version=version, team_id=team,
        resource_attributes=attributes, signal=Signal.METRICS, observed_at=at, received_at=at,
        token_id=tokens[tenant][0 if retiring or serial in STILL_ON_RETIRING else 1],
    )  # fmt: skip


def _flag(
    tenant: str, serial: str, kind: FlagKind, state: FlagState, opened: datetime, at: datetime
) -> DriftFlag:
    return DriftFlag(
        flag_id=f"{tenant}-{serial}-{kind.value}", tenant_id=tenant,
        endpoint_id=f"{tenant}/{serial}", kind=kind, state=state,
        detail=f"{kind.value} on {serial}", first_seen=opened, last_seen=at, policy_version=1,
    )  # fmt: skip


def _audit(
    serial: str, state: AuditState, at: datetime, *, dry_run: bool, status: int | None = None
) -> AuditRecord:
    return AuditRecord(
        tenant_id="acme", action_id=f"act-{serial}", attempt=1, state=state,
        endpoint_id=f"acme/{serial}", serial_number=serial, vendor=Vendor.JAMF,
        device_id=f"jamf-{serial}", action=ActionKind.FORCE_SYNC, reason="outdated_client",
        detail="", dry_run=dry_run, request="POST /api/v2/mdm/blank-push",
        response_status=status, at=at,
    )  # fmt: skip


def messages(
    now: datetime, tokens: dict[str, tuple[str, str]] = TOKENS
) -> list[store.StoreMessage]:
    hour, day = timedelta(hours=1), timedelta(days=1)
    out: list[store.StoreMessage] = []
    for i in range(10):
        version = "2.0.14" if i < 6 else "2.0.3"
        team = "web" if i < 5 else ("data" if i < 9 else None)
        if i == 0:  # A0 was outdated until its force-sync fixed it
            out.append(
                _snapshot("acme", "A0", "2.0.3", "web", now - 3 * day, tokens, retiring=True)
            )
            out.append(_snapshot("acme", "A0", version, team, now - 2 * day, tokens, retiring=True))
        out.append(_snapshot("acme", f"A{i}", version, team, now - hour, tokens))
    for i in range(6, 10):
        opened = now - (10 - i) * day  # A6 opened 4 days ago … A9 1 day ago
        out.append(
            _flag("acme", f"A{i}", FlagKind.OUTDATED_CLIENT, FlagState.RAISED, opened, opened)
        )
    out.append(_flag("acme", "A9", FlagKind.MISSING_POLICY, FlagState.RAISED, now - day, now - day))
    a0_opened = now - 3 * day
    out.append(
        _flag("acme", "A0", FlagKind.OUTDATED_CLIENT, FlagState.RAISED, a0_opened, a0_opened)
    )
    out.append(
        _flag("acme", "A0", FlagKind.OUTDATED_CLIENT, FlagState.RESOLVED, a0_opened, now - 2 * day)
    )
    synced = now - 2 * day - 2 * hour
    out += [
        _audit("A0", AuditState.PLANNED, synced - timedelta(seconds=1), dry_run=False),
        _audit("A0", AuditState.SENT, synced - timedelta(milliseconds=500), dry_run=False),
        _audit("A0", AuditState.SUCCEEDED, synced, dry_run=False, status=201),
        _audit("A6", AuditState.PLANNED, now - hour, dry_run=True),
    ]
    for minutes in (30, 20, 10):
        out.append(
            AuthEvent(
                tenant_id="acme",
                endpoint_id="acme/A7",
                identity="A7",
                token_id="0ldt0ken",
                reason=AuthReason.RETIRED,
                source="10.1.2.3",
                observed_at=now - timedelta(minutes=minutes),
            )
        )
    out.append(
        ComplianceRecord(
            tenant_id="acme",
            vendor=Vendor.JAMF,
            device_id="jamf-A6",
            serial_number="A6",
            status=ComplianceStatus.NONCOMPLIANT,
            reason="profile missing",
            reported_at=now - 2 * hour,
            imported_at=now - 2 * hour,
        )
    )
    for i in range(3):
        out.append(_snapshot("globex", f"G{i}", "9.9.9", "globex-secret-team", now - hour, tokens))
    out.append(
        _flag("globex", "G0", FlagKind.OUTDATED_CLIENT, FlagState.RAISED, now - day, now - day)
    )
    out.append(
        AuthEvent(
            tenant_id="globex",
            endpoint_id="globex/G1",
            identity="G1",
            token_id="g10bexold",
            reason=AuthReason.REVOKED,
            source="10.9.9.9",
            observed_at=now - timedelta(minutes=5),
        )
    )
    return out


async def seed_client(
    client: store.Client, now: datetime | None = None, tokens: dict[str, tuple[str, str]] = TOKENS
) -> datetime:
    now = now or datetime.now(UTC).replace(microsecond=0)
    async with store.BatchWriter(client) as writer:
        for message in messages(now, tokens):
            await writer.add(message)
    client.insert(
        "policy_changelog",
        [
            ["acme", "jamf", 1, "d1g35t", "pushed", "profile updated", "", now - timedelta(days=5)],
            ["globex", "jamf", 7, "g10b3x", "pushed", "globex-only", "", now - timedelta(days=1)],
        ],
        column_names=list(store.TABLE_COLUMNS["policy_changelog"]),
    )
    return now


def rotated_registry(path: Path) -> dict[str, tuple[str, str]]:
    """A token registry where each tenant rotated a moment ago: (retiring, current) ids."""
    registry = TokenStore(path)
    tokens = {}
    for tenant in TOKENS:
        old, _ = registry.create(tenant)
        new, _, _ = registry.rotate(tenant, timedelta(days=1), timedelta(days=30))
        tokens[tenant] = (old, new)
    return tokens


def seed(data: Path) -> None:
    tokens = rotated_registry(data / "tokens.db")
    client = store.connect(f"chdb://{(data / 'clickhouse').resolve()}")
    try:
        store.migrate(client)
        asyncio.run(seed_client(client, tokens=tokens))
    finally:
        client.close()


if __name__ == "__main__":
    seed(Path(sys.argv[1]))
