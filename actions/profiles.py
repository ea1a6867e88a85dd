"""Claude Code managed settings rendered into a macOS configuration profile, deterministically.

Claude Code reads MDM-delivered settings from the ``com.anthropic.claudecode`` managed
preferences domain (a profile from Jamf, Intune or Iru); a profile there *replaces* the
``managed-settings.json`` file rather than merging with it. The profile's top-level keys mirror
the settings JSON (``env``, ``permissions``, ...), as public deployments do (Anthropic's docs do
not spell out the plist layout: UNCONFIRMED).

Same tenant and settings give the same bytes: keys are sorted, UUIDs are derived from the tenant,
nothing carries a date. So a digest of the bytes tells whether a push would change anything, and
an unchanged policy pushes nothing.
"""

from __future__ import annotations

import hashlib
import plistlib
import uuid
from collections.abc import Mapping
from typing import Any

PREFERENCES_DOMAIN = "com.anthropic.claudecode"
_NAMESPACE = uuid.UUID("6f1c1a52-5d7e-4f0e-9a55-6c1d2b1f0d11")  # driftline's, fixed forever


def profile_identifier(tenant_id: str) -> str:
    return f"com.driftline.{tenant_id}.claudecode"


def profile_name(tenant_id: str) -> str:
    return f"Claude Code managed settings ({tenant_id})"


def render_mobileconfig(
    tenant_id: str, settings: Mapping[str, Any], identifier: str | None = None
) -> bytes:
    """The .mobileconfig (XML plist) that sets ``settings`` in the Claude Code domain.

    ``identifier`` is an adopted profile's PayloadIdentifier (default Driftline's own), so the
    payload replaces the customer's profile in place instead of installing a second one.
    """
    identifier = identifier or profile_identifier(tenant_id)
    inner: dict[str, Any] = dict(settings)
    inner.update(
        {
            "PayloadType": PREFERENCES_DOMAIN,
            "PayloadIdentifier": f"{identifier}.settings",
            "PayloadUUID": str(uuid.uuid5(_NAMESPACE, f"{identifier}.settings")).upper(),
            "PayloadVersion": 1,
            "PayloadDisplayName": "Claude Code",
        }
    )
    profile = {
        "PayloadContent": [inner],
        "PayloadDescription": "Managed by Driftline from the tenant's policy. Edit the policy, "
        "not this profile.",
        "PayloadDisplayName": profile_name(tenant_id),
        "PayloadIdentifier": identifier,
        "PayloadOrganization": tenant_id,
        "PayloadRemovalDisallowed": True,
        "PayloadScope": "System",
        "PayloadType": "Configuration",
        "PayloadUUID": str(uuid.uuid5(_NAMESPACE, identifier)).upper(),
        "PayloadVersion": 1,
    }
    return plistlib.dumps(profile, fmt=plistlib.FMT_XML, sort_keys=True)


def settings_diff(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """What a push changes, one line per setting: ``+ env.A = '1'``, ``- permissions.deny``,
    ``~ env.B: '1' -> '2'``. Nested mappings are walked by dotted path; lists compare whole.
    ``old=None`` (never pushed) lists every setting as added."""
    before, after = _flatten(old or {}), _flatten(new)
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if key not in before:
            lines.append(f"+ {key} = {after[key]!r}")
        elif key not in after:
            lines.append(f"- {key} (was {before[key]!r})")
        elif before[key] != after[key]:
            lines.append(f"~ {key}: {before[key]!r} -> {after[key]!r}")
    return lines


def _flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


def digest(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def read_settings(mobileconfig: bytes) -> dict[str, Any]:
    """The managed settings inside a profile rendered here (for checks and emulators)."""
    profile = plistlib.loads(mobileconfig)
    (inner,) = profile["PayloadContent"]
    return {key: value for key, value in inner.items() if not key.startswith("Payload")}
