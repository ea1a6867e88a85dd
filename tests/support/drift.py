"""What the processors would have stored for an outdated laptop, for tests of later stages."""

from __future__ import annotations

from datetime import datetime

from schemas import DriftFlag, EndpointSnapshot, FlagKind, FlagState, Signal


def outdated_laptop(
    serial: str, at: datetime, version: str = "2.0.3", tenant: str = "acme"
) -> tuple[EndpointSnapshot, DriftFlag]:
    """A Claude Code snapshot of ``version`` from the laptop ``serial`` and its raised flag."""
    endpoint = f"{tenant}/{serial}"
    snapshot = EndpointSnapshot(
        tenant_id=tenant,
        endpoint_id=endpoint,
        service_name="claude-code",
        app_version=version,
        team_id="web",
        serial_number=serial,
        resource_attributes={"device.serial_number": serial},
        signal=Signal.METRICS,
        observed_at=at,
        received_at=at,
    )
    flag = DriftFlag(
        flag_id=f"flag-{serial}",
        tenant_id=tenant,
        endpoint_id=endpoint,
        kind=FlagKind.OUTDATED_CLIENT,
        state=FlagState.RAISED,
        detail=f"{version} < minimum 2.0.10 for claude-code",
        first_seen=at,
        last_seen=at,
        policy_version=1,
    )
    return snapshot, flag
