"""Compliance reports from an MDM's CSV export, for tenants that give no API credential.

Vendors name columns differently (Jamf's advanced search "Serial Number"/"Management ID",
Intune's device export "Serial number"/"Compliance", Iru's "Device ID"), so each field accepts
the names below, case-insensitively. A file with any bad row is refused whole, naming the row:
a half-imported report would make the planner act on half a fleet.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from datetime import datetime

from schemas.identity import check_tenant_id
from schemas.messages import aware
from schemas.remediation import ComplianceRecord, ComplianceStatus, Vendor

COLUMNS: Mapping[str, tuple[str, ...]] = {
    "device_id": ("device_id", "device id", "management id", "managementid", "id", "udid"),
    "serial_number": ("serial_number", "serial number", "serialnumber", "serial"),
    "status": ("status", "compliance", "compliancestate", "compliance state", "profile status"),
    "reason": ("reason", "detail", "details", "message"),
    "reported_at": (
        "reported_at",
        "last check-in",
        "last check in",
        "last inventory update",
        "lastsyncdatetime",
        "last sync",
        "last_check_in",
    ),
}

# The vendors' own words for a device's state (complianceState, profile/library item status).
STATUS_WORDS: Mapping[str, ComplianceStatus] = {
    **dict.fromkeys(
        ["compliant", "success", "pass", "installed", "ingraceperiod", "remediated"],
        ComplianceStatus.COMPLIANT,
    ),
    **dict.fromkeys(
        ["noncompliant", "not compliant", "non-compliant", "failed", "error", "conflict"],
        ComplianceStatus.NONCOMPLIANT,
    ),
    **dict.fromkeys(
        ["missing_profile", "missing profile", "not installed", "pending", "notassigned"],
        ComplianceStatus.MISSING_PROFILE,
    ),
    **dict.fromkeys(["unknown", ""], ComplianceStatus.UNKNOWN),
}


class CsvImportError(ValueError):
    """A file that cannot be imported; the message names the line."""


def parse(
    text: str, tenant_id: str, vendor: Vendor, imported_at: datetime
) -> list[ComplianceRecord]:
    check_tenant_id(tenant_id)
    reader = csv.DictReader(io.StringIO(text))
    header = {name.strip().casefold(): name for name in reader.fieldnames or []}
    found = {field: _column(header, names) for field, names in COLUMNS.items()}
    for required in ("device_id", "status"):
        if found[required] is None:
            accepted = ", ".join(repr(n) for n in COLUMNS[required])
            raise CsvImportError(f"no {required} column (accepted names: {accepted})")
    records = []
    for line, row in enumerate(reader, start=2):

        def value(field: str, row: dict[str, str] = row) -> str:
            column = found[field]
            return (row.get(column) or "").strip() if column else ""

        device_id = value("device_id")
        if not device_id:
            raise CsvImportError(f"line {line}: empty device id")
        word = value("status").casefold()
        status = STATUS_WORDS.get(word)
        if status is None:
            raise CsvImportError(f"line {line}: unknown status {value('status')!r}")
        records.append(
            ComplianceRecord(
                tenant_id=tenant_id,
                vendor=vendor,
                device_id=device_id,
                serial_number=value("serial_number") or None,
                status=status,
                reason=value("reason") or (f"{vendor.value} export: {value('status')}"),
                reported_at=_when(value("reported_at"), imported_at, line),
                imported_at=imported_at,
            )
        )
    return records


def _column(header: Mapping[str, str], names: tuple[str, ...]) -> str | None:
    for name in names:
        if name in header:
            return header[name]
    return None


def _when(text: str, default: datetime, line: int) -> datetime:
    if not text:
        return default
    try:
        return aware(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise CsvImportError(f"line {line}: reported time {text!r} is not ISO 8601") from None
