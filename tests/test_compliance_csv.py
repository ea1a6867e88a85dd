"""CSV compliance exports: the vendors' column names and words, and whole-file refusal."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from actions.compliance_csv import CsvImportError, parse
from schemas.remediation import ComplianceStatus, Vendor

AT = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_jamf_advanced_search_export() -> None:
    text = (
        "Computer Name,Serial Number,Management ID,Profile Status,Last Inventory Update\n"
        "mac-1,C02A,m-1,Not Installed,2026-11-26T08:00:00Z\n"
        "mac-2,C02B,m-2,Installed,\n"
    )
    first, second = parse(text, "acme", Vendor.JAMF, AT)
    assert (first.device_id, first.serial_number, first.status) == (
        "m-1",
        "C02A",
        ComplianceStatus.MISSING_PROFILE,
    )
    assert first.reported_at == datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    assert second.status is ComplianceStatus.COMPLIANT and second.reported_at == AT
    assert first.reason == "jamf export: Not Installed"


def test_intune_device_export_with_odd_case_and_padding() -> None:
    text = "Device ID, serial number ,Compliance\nabc,  C02C ,Noncompliant\ndef,,compliant\n"
    records = parse(text, "acme", Vendor.INTUNE, AT)
    assert [(r.device_id, r.serial_number, r.status) for r in records] == [
        ("abc", "C02C", ComplianceStatus.NONCOMPLIANT),
        ("def", None, ComplianceStatus.COMPLIANT),
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Serial Number,Status\nC02A,failed\n", "no device_id column"),
        ("Device ID,Serial\nd1,C02A\n", "no status column"),
        ("Device ID,Status\nd1,failed\nd2,sideways\n", "line 3: unknown status 'sideways'"),
        ("Device ID,Status\n,failed\n", "line 2: empty device id"),
        ("Device ID,Status,Last check-in\nd1,failed,yesterday\n", "line 2: reported time"),
    ],
)
def test_a_bad_file_is_refused_whole_naming_the_problem(text: str, message: str) -> None:
    with pytest.raises(CsvImportError, match=message):
        parse(text, "acme", Vendor.IRU, AT)
