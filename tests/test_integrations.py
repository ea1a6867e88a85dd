"""The integrations file: owner-only, rotation with grace, due dates; secrets never shown."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from actions.integrations import IntegrationError, IntegrationStore
from actions.mdm import Integration
from schemas.remediation import Vendor

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def store(tmp_path: Path) -> IntegrationStore:
    integrations = IntegrationStore(tmp_path / "mdm" / "integrations.json")
    integrations.configure(
        Integration(tenant_id="acme", vendor=Vendor.JAMF, base_url="https://acme.jamfcloud.com")
    )
    return integrations


def test_the_file_is_owner_only_and_round_trips_secrets(tmp_path: Path) -> None:
    integrations = store(tmp_path)
    integrations.set_credential("acme", Vendor.JAMF, "first-secret", T0, client_id="cid")
    mode = stat.S_IMODE(integrations.path.stat().st_mode)
    assert mode == 0o600
    loaded = integrations.get("acme", Vendor.JAMF)
    assert loaded is not None and loaded.current is not None
    assert loaded.current.secret.get_secret_value() == "first-secret"
    assert "first-secret" not in repr(loaded) and "first-secret" not in str(loaded)


def test_rotation_keeps_the_previous_credential_for_the_grace_window(tmp_path: Path) -> None:
    integrations = store(tmp_path)
    integrations.set_credential("acme", Vendor.JAMF, "old", T0, client_id="cid")
    later = T0 + timedelta(days=80)
    rotated = integrations.set_credential(
        "acme", Vendor.JAMF, "new", later, client_id="cid2", grace=timedelta(days=2)
    )
    names = [name for name, _ in rotated.credentials(later + timedelta(days=1))]
    assert names == ["current", "previous"]
    assert [n for n, _ in rotated.credentials(later + timedelta(days=3))] == ["current"]
    # configuring again (e.g. a new base URL) keeps both credentials
    integrations.configure(
        Integration(tenant_id="acme", vendor=Vendor.JAMF, base_url="https://acme2.jamfcloud.com")
    )
    kept = integrations.get("acme", Vendor.JAMF)
    assert (
        kept is not None and kept.previous is not None and kept.base_url.startswith("https://acme2")
    )


def test_rotation_status_ok_warning_due_missing(tmp_path: Path) -> None:
    integrations = store(tmp_path)
    integrations.configure(
        Integration(tenant_id="acme", vendor=Vendor.IRU, base_url="https://acme.api.kandji.io")
    )
    integrations.set_credential("acme", Vendor.JAMF, "s", T0, client_id="cid")

    def states(days: int) -> dict[Vendor, str]:
        return {s.vendor: s.state for s in integrations.status(T0 + timedelta(days=days))}

    assert states(10) == {Vendor.JAMF: "ok", Vendor.IRU: "missing"}
    assert states(76)[Vendor.JAMF] == "warning"
    assert states(90)[Vendor.JAMF] == "due"


def test_clear_errors(tmp_path: Path) -> None:
    integrations = store(tmp_path)
    with pytest.raises(IntegrationError, match="no intune integration"):
        integrations.set_credential("acme", Vendor.INTUNE, "s", T0, client_id="c")
    with pytest.raises(IntegrationError, match="client id"):
        integrations.set_credential("acme", Vendor.JAMF, "s", T0)
    with pytest.raises(IntegrationError, match="empty"):
        integrations.set_credential("acme", Vendor.JAMF, "  ", T0, client_id="c")
