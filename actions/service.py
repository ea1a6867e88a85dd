"""The remediation stage's shell: loads what the planner needs, runs the executor, imports
compliance, pushes policy. Every decision is made by ``actions.planner`` and
``actions.executor.gate`` (pure); this module only does the I/O around them.

Inputs come from the store (open flags, endpoint serials, compliance history, the audit of past
actions) and from the MDMs (devices by serial). Flagged serials are looked up live only when the
compliance import has not already seen the device, which keeps Iru's shared hourly budget for
actions.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from actions import planner, profiles
from actions.clients import client_for
from actions.executor import (
    AuditSink,
    Decision,
    Executor,
    ExecutorOptions,
    History,
    Past,
    Progress,
    RunReport,
    gate,
)
from actions.integrations import IntegrationStore
from actions.mdm import Integration, MdmClient, MdmError, PartialFailure
from schemas.identity import check_tenant_id
from schemas.messages import DriftFlag, FlagKind, FlagState, aware
from schemas.policy import TenantPolicy
from schemas.remediation import (
    AuditState,
    ComplianceRecord,
    ComplianceStatus,
    Device,
    Plan,
    Vendor,
)
from store import query_dicts

log = logging.getLogger(__name__)


# --- loading from the store ---------------------------------------------------------------


def open_flags(client: Client, tenant: str) -> list[DriftFlag]:
    rows = query_dicts(
        client,
        "SELECT tenant_id, flag_id, endpoint_id, kind, detail, first_seen, last_seen, "
        "policy_version FROM drift_current WHERE tenant_id = {tenant:String}",
        {"tenant": tenant},
    )
    return [
        DriftFlag(
            flag_id=row["flag_id"],
            tenant_id=row["tenant_id"],
            endpoint_id=row["endpoint_id"],
            kind=FlagKind(row["kind"]),
            state=FlagState.RAISED,
            detail=row["detail"],
            first_seen=aware(row["first_seen"]),
            last_seen=aware(row["last_seen"]),
            policy_version=row["policy_version"],
        )
        for row in rows
    ]


def endpoint_serials(client: Client, tenant: str) -> dict[str, str | None]:
    rows = query_dicts(
        client,
        "SELECT endpoint_id, serial_number FROM endpoints_latest WHERE tenant_id = {tenant:String}",
        {"tenant": tenant},
    )
    return {row["endpoint_id"]: row["serial_number"] for row in rows}


def compliance_history(client: Client, tenant: str) -> list[ComplianceRecord]:
    """The latest report per device (the planner picks the latest too; this bounds the read)."""
    rows = query_dicts(
        client,
        "SELECT tenant_id, vendor, device_id, latest.1 AS serial_number, latest.2 AS status, "
        "latest.3 AS reason, latest.4 AS reported_at, latest.5 AS imported_at, "
        "latest.6 AS last_contact FROM ("
        "SELECT tenant_id, vendor, device_id, argMax((serial_number, status, reason, "
        "reported_at, imported_at, last_contact), (reported_at, imported_at)) AS latest "
        "FROM compliance_records WHERE tenant_id = {tenant:String} "
        "GROUP BY tenant_id, vendor, device_id)",
        {"tenant": tenant},
    )
    return [
        ComplianceRecord(
            tenant_id=row["tenant_id"],
            vendor=Vendor(row["vendor"]),
            device_id=row["device_id"],
            serial_number=row["serial_number"],
            status=ComplianceStatus(row["status"]),
            reason=row["reason"],
            reported_at=aware(row["reported_at"]),
            imported_at=aware(row["imported_at"]),
            last_contact=aware(row["last_contact"]) if row["last_contact"] else None,
        )
        for row in rows
    ]


def action_history(client: Client, tenant: str, cooldown: timedelta, now: datetime) -> History:
    rows = query_dicts(
        client,
        "SELECT action_id, attempt, groupUniqArray(state) AS states, max(at) AS last_at "
        "FROM remediation_audit FINAL WHERE tenant_id = {tenant:String} AND NOT dry_run "
        "AND state IN ('sent', 'succeeded', 'failed') GROUP BY action_id, attempt",
        {"tenant": tenant},
    )
    actions: dict[str, Past] = {}
    for row in rows:
        past = Past(
            row["attempt"], frozenset(AuditState(s) for s in row["states"]), aware(row["last_at"])
        )
        if row["action_id"] not in actions or past.attempt > actions[row["action_id"]].attempt:
            actions[row["action_id"]] = past
    synced = query_dicts(
        client,
        "SELECT vendor, device_id, max(at) AS last_at FROM remediation_audit "
        "WHERE tenant_id = {tenant:String} AND NOT dry_run AND action = 'force_sync' "
        "AND state IN ('sent', 'succeeded') AND at >= {since:DateTime64(3, 'UTC')} "
        "GROUP BY vendor, device_id",
        {"tenant": tenant, "since": now - cooldown},
    )
    last_sync = {(tenant, Vendor(r["vendor"]), r["device_id"]): aware(r["last_at"]) for r in synced}
    return History(actions=actions, last_sync=last_sync)


# --- the service --------------------------------------------------------------------------


@dataclass
class Lookups:
    """Devices found (or not) by serial, remembered across passes, and a budget per pass.

    A long-running process plans every minute; asking the MDM again each time for every
    flagged serial the compliance import has not seen would spend Iru's shared 10,000
    requests an hour on lookups alone. What a pass cannot look up waits for the next one.
    """

    found_for: float = 3600.0  # seconds a found device is trusted
    missing_for: float = 900.0  # seconds a "no such serial" answer is trusted
    per_pass: int = 200  # new lookups per integration per pass
    _seen: dict[tuple[str, Vendor, str], tuple[float, list[Device]]] = field(default_factory=dict)

    def get(self, key: tuple[str, Vendor, str], now: float) -> list[Device] | None:
        seen = self._seen.get(key)
        return seen[1] if seen is not None and seen[0] > now else None

    def put(self, key: tuple[str, Vendor, str], devices: list[Device], now: float) -> None:
        self._seen[key] = (now + (self.found_for if devices else self.missing_for), devices)


@dataclass
class Outcome:
    tenant_id: str
    plan: Plan
    report: RunReport
    held: str = ""  # why nothing was done: the run waits for a confirmation


Confirm = Callable[[Plan, list[Decision]], str | None]
"""Given the plan and the gate's decisions: why to hold the run for confirmation, or None."""


class Remediation:
    """One tenant-scoped remediation pass at a time, over one store client."""

    def __init__(
        self,
        store: Client,
        integrations: IntegrationStore,
        options: ExecutorOptions,
        audit: AuditSink,
        *,
        client_for: Callable[[Integration], MdmClient] = client_for,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lookups: Lookups | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.progress = progress
        self.lookups = lookups or Lookups()
        self.store = store
        self.integrations = integrations
        self.options = options
        self.audit = audit
        self.client_for = client_for
        self.clock = clock

    async def run(self, tenant: str, confirm: Confirm | None = None) -> Outcome:
        """Plan from the store's current picture and carry it out (dry-run unless live).

        ``confirm`` sees the plan and the gate's decisions first; a reason from it holds the
        run: nothing is sent or audited, and the outcome says why.
        """
        now = self.clock()
        flags, serials, compliance, history = await asyncio.to_thread(self._load, tenant, now)
        integrations = {(i.tenant_id, i.vendor): i for i in self.integrations.for_tenant(tenant)}
        inventory, waiting = await self._inventory(
            integrations.values(), _flagged_serials(flags, serials), compliance
        )
        if waiting:  # not "unknown to the MDM": not asked yet; the next pass plans them
            log.info("tenant %s: %d flagged serials wait for an MDM lookup", tenant, len(waiting))
            flags = [
                f
                for f in flags
                if planner.normalize_serial(serials.get(f.endpoint_id)) not in waiting
            ]
        plan = planner.plan(flags, serials, compliance, inventory)
        decisions = gate(
            plan, history, integrations, self.options, self.clock(), self.options.killed()
        )
        if confirm is not None and (held := confirm(plan, decisions)):
            return Outcome(tenant, plan, RunReport(dry_run=not self.options.live), held)
        executor = Executor(self.audit, self.client_for, self.options, self.clock, self.progress)
        report = await executor.execute(plan, history, integrations, decisions)
        return Outcome(tenant, plan, report)

    def _load(
        self, tenant: str, now: datetime
    ) -> tuple[list[DriftFlag], dict[str, str | None], list[ComplianceRecord], History]:
        return (
            open_flags(self.store, tenant),
            endpoint_serials(self.store, tenant),
            compliance_history(self.store, tenant),
            action_history(self.store, tenant, self.options.cooldown, now),
        )

    async def _inventory(
        self,
        integrations: Iterable[Integration],
        serials: set[str],
        compliance: list[ComplianceRecord],
    ) -> tuple[list[Device], set[str]]:
        """Devices the compliance import saw, plus lookups of flagged serials it did not; and
        the (normalized) serials no device was found for because their lookup must wait."""
        devices = [
            Device(
                tenant_id=r.tenant_id,
                vendor=r.vendor,
                device_id=r.device_id,
                serial_number=r.serial_number,
                last_contact=r.last_contact,
            )
            for r in compliance
            if r.serial_number
        ]
        known = {planner.normalize_serial(d.serial_number) for d in devices}
        missing = sorted(s for s in serials if planner.normalize_serial(s) not in known)
        waiting: set[str] = set()
        now = time.monotonic()
        for integration in integrations:
            if integration.current is not None and missing:
                found, later = await self._look_up(integration, missing, now)
                devices.extend(found)
                waiting |= later
        return devices, waiting - {planner.normalize_serial(d.serial_number) for d in devices}

    async def _look_up(
        self, integration: Integration, serials: list[str], now: float
    ) -> tuple[list[Device], set[str]]:
        """One MDM's devices for ``serials``: remembered answers, then new lookups within the
        pass's budget; the (normalized) serials over budget or after an MDM error wait."""
        devices: list[Device] = []
        waiting: set[str] = set()
        budget = self.lookups.per_pass
        client: MdmClient | None = None
        try:
            for serial in serials:
                key = (
                    integration.tenant_id,
                    integration.vendor,
                    planner.normalize_serial(serial) or "",
                )
                found = self.lookups.get(key, now)
                if found is None:
                    if budget <= 0:
                        waiting.add(key[2])
                        continue
                    client = client or self.client_for(integration)
                    try:
                        found = await client.devices_by_serial(serial)
                    except MdmError as error:
                        log.warning(
                            "%s lookup for tenant %s failed: %s",
                            integration.vendor.value,
                            integration.tenant_id,
                            error,
                        )
                        budget = 0  # the rest waits for the next pass
                        waiting.add(key[2])
                        continue
                    budget -= 1
                    self.lookups.put(key, found, now)
                devices.extend(found)
        finally:
            if client is not None:
                await client.aclose()
        return devices, waiting

    async def import_compliance(
        self, tenant: str, store: Callable[[list[ComplianceRecord]], Awaitable[None]]
    ) -> tuple[dict[Vendor, int], dict[Vendor, str]]:
        """Pull each integration's compliance view into the store.

        Returns records per vendor, and per vendor why nothing was pulled (a configuration gap
        such as no profile id, or the MDM's error): one failing MDM does not stop the others.
        """
        counts: dict[Vendor, int] = {}
        errors: dict[Vendor, str] = {}
        found = [i for i in self.integrations.for_tenant(tenant) if i.current is not None]
        for number, integration in enumerate(found):
            if self.progress is not None:
                self.progress(f"pull {integration.vendor.value}", number, len(found))
            if integration.current is None:
                continue
            client: MdmClient | None = None
            try:
                client = self.client_for(integration)  # a bad setting raises here: this MDM only
                records = await client.compliance(self.clock())
            except Exception as error:  # one MDM failing never stops the others
                log.warning(
                    "compliance pull from %s for %s failed",
                    integration.vendor.value,
                    tenant,
                    exc_info=not isinstance(error, MdmError | ValueError),
                )
                errors[integration.vendor] = f"{type(error).__name__}: {error}"
                continue
            finally:
                if client is not None:
                    await client.aclose()
            await store(records)
            counts[integration.vendor] = len(records)
        if self.progress is not None and found:
            self.progress("pull", len(found), len(found))
        return counts, errors


def _flagged_serials(flags: list[DriftFlag], serials: dict[str, str | None]) -> set[str]:
    return {s for f in flags if (s := serials.get(f.endpoint_id))}


# --- policy push --------------------------------------------------------------------------


@dataclass(frozen=True)
class PushEntry:
    """A changelog entry: what a push did for one integration, and why."""

    tenant_id: str
    vendor: Vendor
    policy_version: int
    digest: str
    outcome: str  # pushed | unchanged | republish_required | failed | partial | dry_run
    detail: str
    payload_file: str
    at: datetime
    changes: tuple[str, ...] = ()  # against the payload this integration last received


def write_payload(
    policy: TenantPolicy, out_dir: Path, identifier: str | None = None
) -> tuple[bytes, str, Path]:
    payload = profiles.render_mobileconfig(policy.tenant, policy.managed_settings, identifier)
    digest = profiles.digest(payload)
    out_dir.mkdir(parents=True, exist_ok=True)
    # a validated tenant id holds no separator, so the file stays inside out_dir
    path = out_dir / f"{check_tenant_id(policy.tenant)}-{digest[:12]}.mobileconfig"
    path.write_bytes(payload)
    return payload, digest, path


def pushed_settings(payload_file: str | None) -> dict[str, Any] | None:
    """The managed settings of a payload pushed before (None: never pushed, or file gone)."""
    if not payload_file:
        return None
    try:
        return profiles.read_settings(Path(payload_file).read_bytes())
    except (OSError, ValueError, KeyError):
        return None


async def push_policy(
    policy: TenantPolicy,
    integrations: list[Integration],
    out_dir: Path,
    last_pushed: Callable[[Vendor], tuple[str, str] | None],
    *,
    live: bool,
    client_for: Callable[[Integration], MdmClient] = client_for,
    now: datetime,
) -> list[PushEntry]:
    """Render the tenant's managed settings and update each MDM's profile where it changed.

    The payload file is always written (``out_dir/<tenant>-<digest12>.mobileconfig``): it is
    what an admin uploads by hand for a push-only integration ("republish required"). Each
    integration gets its profile's own PayloadIdentifier (an adopted profile keeps its own).
    ``last_pushed(vendor)`` is (digest, payload file) that integration last received: an equal
    digest means nothing to push; the file gives the changes this push makes.
    A change that stops part-way (Iru: the profile updated, its blueprint assignment refused)
    is ``partial``, with the steps that succeeded.
    """
    entries = []
    for integration in integrations:
        payload, digest, path = await asyncio.to_thread(
            write_payload, policy, out_dir, integration.payload_identifier
        )
        before = last_pushed(integration.vendor)
        changes = tuple(
            profiles.settings_diff(
                await asyncio.to_thread(pushed_settings, before[1] if before else None),
                policy.managed_settings,
            )
        )

        def entry(
            integration: Integration,
            outcome: str,
            detail: str,
            digest: str = digest,
            path: Path = path,
            changes: tuple[str, ...] = changes,
        ) -> PushEntry:
            return PushEntry(
                policy.tenant,
                integration.vendor,
                policy.version,
                digest,
                outcome,
                detail,
                str(path),
                now,
                changes,
            )

        if before is not None and before[0] == digest:
            entries.append(entry(integration, "unchanged", "the profile already has this payload"))
            continue
        if integration.current is None or integration.profile_id is None:
            why = "no credential" if integration.current is None else "no profile id configured"
            entries.append(
                entry(
                    integration,
                    "republish_required",
                    f"push-only integration ({why}): upload {path.name} to the MDM profile",
                )
            )
            continue
        if not live:
            entries.append(
                entry(integration, "dry_run", "would update the profile (--live to push)")
            )
            continue
        client = client_for(integration)
        try:
            sent = await client.update_profile(profiles.profile_name(policy.tenant), payload)
            detail = f"{sent.request} -> {sent.status}"
            if sent.credential == "previous":
                detail += "; previous credential (in grace) used"
            entries.append(entry(integration, "pushed", detail))
        except PartialFailure as partial:
            entries.append(entry(integration, "partial", str(partial)))
        except MdmError as error:
            entries.append(entry(integration, "failed", f"{type(error).__name__}: {error}"))
        finally:
            await client.aclose()
    return entries
