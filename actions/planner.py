"""Decides which MDM devices to act on, and why: the functional core of remediation.

Pure and total: no I/O, no clock, no exceptions on odd input. The caller loads open flags,
endpoint serials, compliance history and inventory; this module only decides, so every rule is
testable without an MDM. The rules (DESIGN.md, "Remediation rules"):

- The devices needing a force-sync are the union of (a) devices reached from open telemetry flags
  and (b) devices whose latest MDM compliance record is noncompliant or missing_profile.
- A flag reaches a device by exact serial match (case-insensitive, whitespace-trimmed) within the
  flag's tenant. No serial, an unknown serial, or a serial on several device records of one MDM
  is reported as ``Unresolvable``: acting on a guessed device is worse than not acting.
- A Mac enrolled in several MDMs of the tenant (one record in each, the normal state of a
  migration) is acted on through the MDM where it last checked in, and every reason found for
  it in any of them goes to that one action; ``PlannedAction.route`` says why. When no MDM
  reports a last check-in, or two report the same instant, it is reported, not guessed.
- One action per device, with every reason merged.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
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

_MOVED = re.compile("^(?:" + "|".join(v.value for v in Vendor) + ") [^:]*: ")

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


@dataclass
class _Inventory:
    """(tenant, normalized serial) → distinct devices; each device's serial for display and its
    latest known check-in.

    Duplicate rows of one device count once; a device listed with several serials shows the
    smallest and the latest check-in wins, so nothing depends on input order.
    """

    by_serial: dict[tuple[str, str], set[DeviceKey]] = field(
        default_factory=lambda: defaultdict(set)
    )
    serials: dict[DeviceKey, str] = field(default_factory=dict)
    contact: dict[DeviceKey, datetime] = field(default_factory=dict)

    def add(self, device: Device) -> None:
        key = (device.tenant_id, device.vendor, device.device_id)
        if device.last_contact is not None:
            known = self.contact.get(key)
            self.contact[key] = max(device.last_contact, known or device.last_contact)
        normalized = normalize_serial(device.serial_number)
        shown = _display_serial(device.serial_number)
        if normalized is None or shown is None:
            return
        self.by_serial[(device.tenant_id, normalized)].add(key)
        self.serials[key] = min(shown, self.serials.get(key, shown))


def _index_inventory(
    inventory: Iterable[Device], records: Iterable[ComplianceRecord]
) -> _Inventory:
    index = _Inventory()
    for device in inventory:
        index.add(device)
    for record in records:  # a compliance report's check-in time counts too
        if record.last_contact is not None:
            key = (record.tenant_id, record.vendor, record.device_id)
            known = index.contact.get(key)
            index.contact[key] = max(record.last_contact, known or record.last_contact)
    return index


@dataclass(frozen=True)
class Route:
    """The one device a serial names, and why (``note``); or why there is none."""

    device: DeviceKey | None
    note: str = ""
    why: str | None = None


def _when(moment: datetime | None) -> str:
    return (
        "no check-in reported" if moment is None else f"last check-in {moment:%Y-%m-%d %H:%M:%S}Z"
    )


def route(devices: set[DeviceKey], contact: Mapping[DeviceKey, datetime]) -> Route:
    """Which device a serial's actions go to.

    One device: that one. Several records in one MDM: ambiguous (a re-enrolment or a wrong
    serial; nothing says which is the Mac). One record in each of several MDMs: the MDM where
    the Mac last checked in; a check-in nobody reports, or a tie, is not a reason to guess.
    """
    if len(devices) == 1:
        return Route(next(iter(devices)))
    per_vendor: dict[Vendor, int] = defaultdict(int)
    for _, vendor, _ in devices:
        per_vendor[vendor] += 1
    if not devices or any(n > 1 for n in per_vendor.values()):
        return Route(None, why=f"serial matches {len(devices)} devices")
    ordered = sorted(devices, key=lambda k: (k[1], k[2]))
    seen = ", ".join(f"{k[1].value} ({_when(contact.get(k))})" for k in ordered)
    known = [k for k in ordered if k in contact]
    if not known:
        return Route(None, why=f"enrolled in {seen}: no MDM reports a check-in to choose by")
    latest = max(contact[k] for k in known)
    newest = [k for k in known if contact[k] == latest]
    if len(newest) > 1:
        return Route(None, why=f"enrolled in {seen}: equal last check-ins, none to choose")
    (chosen,) = newest
    return Route(
        chosen,
        note=f"enrolled in {seen}; acting through {chosen[1].value}, where it last checked in",
    )


def _telemetry_reason(flag: DriftFlag) -> Reason:
    return Reason(
        source=ReasonSource.TELEMETRY, detail=f"{flag.kind}: {flag.detail}", flag_id=flag.flag_id
    )


def _mdm_reason(record: ComplianceRecord) -> Reason:
    detail = f"{record.status}: {record.reason}" if record.reason else str(record.status)
    return Reason(source=ReasonSource.MDM, detail=detail, flag_id=None)


class _Collector:
    """Per-device reasons (each with its identity), the endpoints that led to the device, and
    why its MDM was chosen among several."""

    def __init__(self) -> None:
        self.reasons: dict[DeviceKey, dict[Reason, str]] = defaultdict(dict)
        self.endpoints: dict[DeviceKey, set[str]] = defaultdict(set)
        self.routes: dict[DeviceKey, str] = {}

    def add(self, key: DeviceKey, reason: Reason, identity: str, endpoint: str | None) -> None:
        self.reasons[key][reason] = identity
        if endpoint is not None:
            self.endpoints[key].add(endpoint)

    def move(self, source: DeviceKey, target: DeviceKey) -> None:
        """Everything found for ``source`` is acted on through ``target`` (the same Mac); an MDM
        finding keeps the name of the MDM and device that reported it ("jamf <id>: …")."""
        for reason, identity in self.reasons.pop(source, {}).items():
            if reason.source is ReasonSource.MDM and source[1] is not target[1]:
                detail = f"{source[1].value} {source[2]}: {reason.detail}"
                reason = reason.model_copy(update={"detail": detail})
            self.reasons[target][reason] = identity
        self.endpoints[target] |= self.endpoints.pop(source, set())
        self.routes.pop(source, None)


def _resolve_flags(
    flags: Sequence[DriftFlag],
    serial_of: Mapping[str, str | None],
    index: _Inventory,
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
        devices = index.by_serial.get((tenant_id, serial), set()) if serial is not None else set()
        if serial is None:
            chosen = Route(None, why=NO_SERIAL)
        elif not devices:
            chosen = Route(None, why=NOT_ENROLLED)
        else:
            chosen = route(devices, index.contact)
        if chosen.device is None:
            unresolvable.append(
                Unresolvable(
                    tenant_id=tenant_id,
                    endpoint_id=endpoint_id,
                    serial_number=_display_serial(raw),
                    why=chosen.why or "",
                )
            )
            continue
        for flag in endpoint_flags:
            collector.add(
                chosen.device, _telemetry_reason(flag), f"flag:{flag.flag_id}", endpoint_id
            )
        if chosen.note:
            collector.routes[chosen.device] = chosen.note
    return unresolvable


def _merge_enrolments(
    index: _Inventory, latest: Mapping[DeviceKey, ComplianceRecord], collector: _Collector
) -> None:
    """Compliance findings about one Mac from several MDMs become one action, through the MDM
    it last checked in with. Where that cannot be told, each MDM's finding stays its own action
    (the MDM named that device exactly)."""
    reported: dict[tuple[str, str], set[DeviceKey]] = defaultdict(set)
    for device, report in latest.items():  # devices the reports name, inventory or not
        if (serial := normalize_serial(report.serial_number)) is not None:
            reported[(device[0], serial)].add(device)
    for key in sorted(collector.reasons):
        if key not in collector.reasons:  # already moved
            continue
        record = latest.get(key)
        serial = normalize_serial(
            index.serials.get(key) or (record.serial_number if record else None)
        )
        if serial is None:
            continue
        devices = index.by_serial.get((key[0], serial), set()) | reported[(key[0], serial)]
        devices.add(key)
        if len({vendor for _, vendor, _ in devices}) < 2:
            continue
        chosen = route(devices, index.contact)
        if chosen.device is None:
            continue
        for other in sorted(devices - {chosen.device}):
            if other in collector.reasons:
                collector.move(other, chosen.device)
        if chosen.device in collector.reasons:
            collector.routes[chosen.device] = chosen.note


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
    latest = _latest_records(compliance)
    index = _index_inventory(inventory, latest.values())
    collector = _Collector()
    unresolvable = _resolve_flags(_raised_flags(open_flags), serial_of, index, collector)
    for key, record in latest.items():
        if record.status in NEEDS_SYNC:
            collector.add(key, _mdm_reason(record), f"mdm:{record.status}", None)
    _merge_enrolments(index, latest, collector)
    actions = [
        _action(
            key,
            reasons,
            collector.endpoints.get(key, set()),
            index.serials,
            latest,
            collector.routes.get(key, ""),
        )
        for key, reasons in collector.reasons.items()
        if reasons
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


def reason_label(reason: Reason) -> str:
    """A reason's category, for counting a plan: ``drift: outdated_client``, ``MDM:
    missing_profile``, ``policy push``."""
    if reason.source is ReasonSource.TELEMETRY:
        return f"drift: {reason.detail.split(':', 1)[0]}"
    if reason.source is ReasonSource.MDM:
        detail = _MOVED.sub("", reason.detail)  # a finding from another MDM names it first
        return f"MDM: {detail.split(':', 1)[0]}"
    return "policy push"


def summarize(actions: Iterable[PlannedAction]) -> dict[str, int]:
    """Devices per reason category, most first (a device with two reasons counts in both)."""
    counts: dict[str, int] = defaultdict(int)
    for action in actions:
        for label in {reason_label(r) for r in action.reasons}:
            counts[label] += 1
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def _action(
    key: DeviceKey,
    reasons: Mapping[Reason, str],
    endpoints: set[str],
    inventory_serials: Mapping[DeviceKey, str],
    latest: Mapping[DeviceKey, ComplianceRecord],
    route_note: str,
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
        route=route_note,
    )
