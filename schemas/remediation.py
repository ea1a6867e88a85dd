"""What remediation plans with: MDM inventory and compliance, and the actions it decides on.

Field names match the store's ``compliance_records`` and ``remediation_audit`` columns, so rows
and messages convert without renaming. Like every message these are frozen and JSON on the wire.
"""

from __future__ import annotations

from enum import StrEnum

from schemas.messages import Message, Timestamp


class Vendor(StrEnum):
    JAMF = "jamf"
    INTUNE = "intune"
    IRU = "iru"


class ComplianceStatus(StrEnum):
    COMPLIANT = "compliant"
    NONCOMPLIANT = "noncompliant"
    MISSING_PROFILE = "missing_profile"
    UNKNOWN = "unknown"


class ComplianceRecord(Message):
    """One vendor report about one device (a row of ``compliance_records``)."""

    tenant_id: str
    vendor: Vendor
    device_id: str
    serial_number: str | None
    status: ComplianceStatus
    reason: str
    reported_at: Timestamp
    imported_at: Timestamp
    # when the device last checked in with this MDM (Jamf general.lastContactTime, Graph
    # lastSyncDateTime, Iru last_check_in): decides which MDM acts on a Mac enrolled in several
    last_contact: Timestamp | None = None


class Device(Message):
    """A device the MDM inventory knows.

    ``device_id`` is the vendor's own id (Jamf managementId, Intune managedDevice id, Iru
    device_id), the one its API is called with. ``serial_number`` is nullable because vendors
    do hold devices without one; such a device can only be reached through compliance records.
    """

    tenant_id: str
    vendor: Vendor
    device_id: str
    serial_number: str | None
    last_contact: Timestamp | None = None  # the MDM's last check-in of the device


class ActionKind(StrEnum):
    FORCE_SYNC = "force_sync"
    POLICY_PUSH = "policy_push"


class ReasonSource(StrEnum):
    TELEMETRY = "telemetry"
    MDM = "mdm"
    POLICY = "policy"  # a policy push asked devices to pick up the new profile now


class Reason(Message):
    """Why a device is acted on: an open drift flag (with its id) or the MDM's own report."""

    source: ReasonSource
    detail: str
    flag_id: str | None


class PlannedAction(Message):
    """One action on one MDM device, with every reason for it.

    ``action_id`` is deterministic (see ``actions.planner.action_id``), so re-planning the same
    situation yields the same id and the audit trail and cooldowns can key on it.
    ``endpoint_id`` is the telemetry endpoint that led here, when one did. ``route`` says why
    this MDM was chosen when the device is enrolled in several ("" when it is in one).
    """

    action_id: str
    tenant_id: str
    vendor: Vendor
    device_id: str
    serial_number: str | None
    endpoint_id: str | None
    kind: ActionKind
    reasons: tuple[Reason, ...]
    route: str = ""


class Unresolvable(Message):
    """An endpoint with open flags that maps to no single MDM device: reported, never guessed."""

    tenant_id: str
    endpoint_id: str
    serial_number: str | None
    why: str


class Plan(Message):
    """The planner's whole answer, in a deterministic order."""

    actions: tuple[PlannedAction, ...]
    unresolvable: tuple[Unresolvable, ...]


class AuditState(StrEnum):
    PLANNED = "planned"
    SENT = "sent"  # written durably *before* the request leaves: a restart never re-sends it
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


class AuditRecord(Message):
    """One step of one action (a row of ``remediation_audit``, a message on driftline.actions).

    ``request`` is method + path only, never headers or bodies; ``detail`` says why a step was
    skipped or failed and which credential answered ("previous credential (in grace)").
    """

    tenant_id: str
    action_id: str
    attempt: int
    state: AuditState
    endpoint_id: str
    serial_number: str | None
    vendor: Vendor
    device_id: str
    action: ActionKind
    reason: str
    detail: str
    dry_run: bool
    request: str
    response_status: int | None
    at: Timestamp
