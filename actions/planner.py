"""Decides which MDM devices to act on, and why: the functional core of remediation.

Pure and total: no I/O, no clock, no exceptions on odd input. The caller loads open flags,
endpoint serials, compliance history and inventory; this module only decides, so every rule is
testable without an MDM. The rules (DESIGN.md, "Remediation rules"):

- The devices needing a force-sync are the union of (a) devices reached from open telemetry flags
  and (b) devices whose latest MDM compliance record is noncompliant or missing_profile.
- A flag reaches a device by exact serial match (case-insensitive, whitespace-trimmed) within the
  flag's tenant. No serial, an unknown serial, or a serial on several device records is reported
  as ``Unresolvable``: acting on a guessed device is worse than not acting.
- One action per device, with every reason merged.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import TypeAlias

from schemas.messages import DriftFlag, FlagState
from schemas.remediation import (
    ActionKind,
    ComplianceRecord,
    ComplianceStatus,
    Device,
    Plan,
    PlannedAction,
    Reason,
    ReasonSource,
    Unresolvable,
    Vendor,
)

DeviceKey: TypeAlias = tuple[str, Vendor, str]
"""(tenant_id, vendor, device_id): a device as its MDM's API knows it."""

NEEDS_SYNC = frozenset({ComplianceStatus.NONCOMPLIANT, ComplianceStatus.MISSING_PROFILE})

NO_SERIAL = "no serial number in telemetry"
NOT_ENROLLED = "serial not enrolled in any MDM of the tenant"


def normalize_serial(serial: str | None) -> str | None:
    """The join key: OTel attributes and MDMs disagree on case and padding; blank is none."""
    if serial is None:
        return None
    return serial.strip().casefold() or None


def _display_serial(serial: str | None) -> str | None:
    """Serials as shown to people: trimmed, original case, blank as none."""
    return (serial or "").strip() or None


def action_id(
    tenant_id: str, vendor: Vendor, device_id: str, kind: ActionKind, identities: Iterable[str]
) -> str:
    """Deterministic, so re-planning the same situation yields the same id for audit rows.

    ``identities`` name the reasons (a flag's id, an MDM status), not their wording, so a
    reworded detail does not make a new action. JSON keeps the fields unambiguous.
    """
    key = json.dumps([tenant_id, vendor.value, device_id, kind.value, sorted(set(identities))])
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _raised_flags(flags: Iterable[DriftFlag]) -> list[DriftFlag]:
    """Raised flags, one per flag_id: a redelivered flag is the same flag, the newest copy wins."""
    by_id: dict[str, DriftFlag] = {}
    for flag in flags:
        if flag.state is not FlagState.RAISED:
            continue
        current = by_id.get(flag.flag_id)
        if current is None or _flag_rank(flag) > _flag_rank(current):
            by_id[flag.flag_id] = flag
    return sorted(by_id.values(), key=lambda f: f.flag_id)


def _flag_rank(flag: DriftFlag) -> tuple[object, ...]:
    """Newest first; the JSON breaks ties so the choice never depends on input order."""
    return (flag.last_seen, flag.model_dump_json())


def _latest_records(records: Iterable[ComplianceRecord]) -> dict[DeviceKey, ComplianceRecord]:
    """The latest report per device decides; a re-import of one report (newer imported_at) wins."""
    latest: dict[DeviceKey, ComplianceRecord] = {}
    for record in records:
        key = (record.tenant_id, record.vendor, record.device_id)
        current = latest.get(key)
        if current is None or _record_rank(record) > _record_rank(current):
            latest[key] = record
    return latest


def _record_rank(record: ComplianceRecord) -> tuple[object, ...]:
    return (record.reported_at, record.imported_at, record.model_dump_json())


def _index_inventory(
    inventory: Iterable[Device],
) -> tuple[dict[tuple[str, str], set[DeviceKey]], dict[DeviceKey, str]]:
    """(tenant, normalized serial) → distinct devices, and each device's serial for display.

    Duplicate rows of one device count once; a device listed with several serials shows the
    smallest, so the choice does not depend on input order.
    """
    by_serial: dict[tuple[str, str], set[DeviceKey]] = defaultdict(set)
    serials: dict[DeviceKey, str] = {}
    for device in inventory:
        normalized = normalize_serial(device.serial_number)
        shown = _display_serial(device.serial_number)
        if normalized is None or shown is None:
            continue
        key = (device.tenant_id, device.vendor, device.device_id)
        by_serial[(device.tenant_id, normalized)].add(key)
        serials[key] = min(shown, serials.get(key, shown))
    return by_serial, serials


def _telemetry_reason(flag: DriftFlag) -> Reason:
    return Reason(
        source=ReasonSource.TELEMETRY, detail=f"{flag.kind}: {flag.detail}", flag_id=flag.flag_id
    )


def _mdm_reason(record: ComplianceRecord) -> Reason:
    detail = f"{record.status}: {record.reason}" if record.reason else str(record.status)
    return Reason(source=ReasonSource.MDM, detail=detail, flag_id=None)


class _Collector:
    """Per-device reasons (each with its identity) and the endpoints that led to the device."""

    def __init__(self) -> None:
        self.reasons: dict[DeviceKey, dict[Reason, str]] = defaultdict(dict)
        self.endpoints: dict[DeviceKey, set[str]] = defaultdict(set)

    def add(self, key: DeviceKey, reason: Reason, identity: str, endpoint: str | None) -> None:
        self.reasons[key][reason] = identity
        if endpoint is not None:
            self.endpoints[key].add(endpoint)


def _resolve_flags(
    flags: Sequence[DriftFlag],
    serial_of: Mapping[str, str | None],
    by_serial: Mapping[tuple[str, str], set[DeviceKey]],
    collector: _Collector,
) -> list[Unresolvable]:
    """Map each endpoint's flags to its one device, or report why there is none."""
    by_endpoint: dict[tuple[str, str], list[DriftFlag]] = defaultdict(list)
    for flag in flags:
        by_endpoint[(flag.tenant_id, flag.endpoint_id)].append(flag)
    unresolvable: list[Unresolvable] = []
    for (tenant_id, endpoint_id), endpoint_flags in by_endpoint.items():
        raw = serial_of.get(endpoint_id)
        serial = normalize_serial(raw)
        devices = by_serial.get((tenant_id, serial), set()) if serial is not None else set()
        why = _why_unresolvable(serial, devices)
        if why is not None:
            unresolvable.append(
                Unresolvable(
                    tenant_id=tenant_id,
                    endpoint_id=endpoint_id,
                    serial_number=_display_serial(raw),
                    why=why,
                )
            )
            continue
        (device,) = devices
        for flag in endpoint_flags:
            collector.add(device, _telemetry_reason(flag), f"flag:{flag.flag_id}", endpoint_id)
    return unresolvable


def _why_unresolvable(serial: str | None, devices: set[DeviceKey]) -> str | None:
    """None when the serial names exactly one device of the tenant."""
    if serial is None:
        return NO_SERIAL
    if not devices:
        return NOT_ENROLLED
    if len(devices) > 1:
        return f"serial matches {len(devices)} devices"
    return None


def plan(
    open_flags: Sequence[DriftFlag],
    serial_of: Mapping[str, str | None],
    compliance: Sequence[ComplianceRecord],
    inventory: Sequence[Device],
) -> Plan:
    """The force-sync actions the current flags and compliance history call for.

    ``serial_of`` maps endpoint_id to the serial its snapshots carry. Resolved flags passed in by
    mistake are ignored. The output is sorted, so equal inputs in any order give an equal plan.
    """
    by_serial, inventory_serials = _index_inventory(inventory)
    latest = _latest_records(compliance)
    collector = _Collector()
    unresolvable = _resolve_flags(_raised_flags(open_flags), serial_of, by_serial, collector)
    for key, record in latest.items():
        if record.status in NEEDS_SYNC:
            collector.add(key, _mdm_reason(record), f"mdm:{record.status}", None)
    actions = [
        _action(key, reasons, collector.endpoints.get(key, set()), inventory_serials, latest)
        for key, reasons in collector.reasons.items()
    ]
    return Plan(
        actions=tuple(sorted(actions, key=lambda a: (a.tenant_id, a.vendor, a.device_id, a.kind))),
        unresolvable=tuple(
            sorted(
                unresolvable,
                key=lambda u: (u.tenant_id, u.endpoint_id, u.why, u.serial_number or ""),
            )
        ),
    )


def _action(
    key: DeviceKey,
    reasons: Mapping[Reason, str],
    endpoints: set[str],
    inventory_serials: Mapping[DeviceKey, str],
    latest: Mapping[DeviceKey, ComplianceRecord],
) -> PlannedAction:
    """One force-sync for one device. Its serial comes from inventory, else from its MDM report."""
    tenant_id, vendor, device_id = key
    record = latest.get(key)
    serial = inventory_serials.get(key) or _display_serial(record.serial_number if record else None)
    kind = ActionKind.FORCE_SYNC
    return PlannedAction(
        action_id=action_id(tenant_id, vendor, device_id, kind, reasons.values()),
        tenant_id=tenant_id,
        vendor=vendor,
        device_id=device_id,
        serial_number=serial,
        endpoint_id=min(endpoints) if endpoints else None,
        kind=kind,
        reasons=tuple(sorted(reasons, key=lambda r: (r.source, r.flag_id or "", r.detail))),
    )
