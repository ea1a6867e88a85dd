"""Profile rendering is deterministic and carries exactly the policy's managed settings."""

from __future__ import annotations

import plistlib

import pytest

from actions.profiles import PREFERENCES_DOMAIN, digest, read_settings, render_mobileconfig
from schemas.policy import PolicyError, TenantPolicy

SETTINGS = {
    "env": {"CLAUDE_CODE_ENABLE_TELEMETRY": "1", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    "permissions": {"deny": ["WebFetch"]},
    "allowedMcpServers": [{"serverName": "github"}],
    "cleanupPeriodDays": 30,
}


def test_same_policy_same_bytes_whatever_the_key_order() -> None:
    reordered = dict(reversed(list(SETTINGS.items())))
    assert render_mobileconfig("acme", SETTINGS) == render_mobileconfig("acme", reordered)
    assert digest(render_mobileconfig("acme", SETTINGS)) == digest(
        render_mobileconfig("acme", reordered)
    )


def test_a_changed_setting_or_tenant_changes_the_bytes() -> None:
    changed = {**SETTINGS, "cleanupPeriodDays": 31}
    assert render_mobileconfig("acme", SETTINGS) != render_mobileconfig("acme", changed)
    assert render_mobileconfig("acme", SETTINGS) != render_mobileconfig("globex", SETTINGS)


def test_the_profile_is_a_configuration_profile_for_the_claude_code_domain() -> None:
    profile = plistlib.loads(render_mobileconfig("acme", SETTINGS))
    assert profile["PayloadType"] == "Configuration"
    assert profile["PayloadScope"] == "System"
    (inner,) = profile["PayloadContent"]
    assert inner["PayloadType"] == PREFERENCES_DOMAIN
    assert inner["PayloadUUID"] != profile["PayloadUUID"]
    assert read_settings(render_mobileconfig("acme", SETTINGS)) == SETTINGS


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"env": {"X": None}}, "managed_settings.env.X: null"),
        ({"big": 2**64}, "64-bit"),
        ({"nan": float("nan")}, "property list"),
        ({"list": [1, None]}, r"managed_settings.list\[1\]"),
    ],
)
def test_policies_with_values_a_profile_cannot_hold_are_rejected_naming_the_field(
    tmp_path: object, settings: dict[str, object], message: str
) -> None:
    import json
    from pathlib import Path

    path = Path(str(tmp_path)) / "p.json"
    path.write_text(json.dumps({"tenant": "acme", "managed_settings": settings}))
    with pytest.raises(PolicyError, match=message):
        TenantPolicy.from_file(path)
