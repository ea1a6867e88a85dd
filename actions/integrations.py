"""Where each tenant's MDM integrations and their credentials live, and when they are due.

One JSON file (default ``<data>/mdm/integrations.json``), created owner-only (0600) and replaced
atomically. MDM secrets cannot be stored as hashes like ingest tokens: Driftline must present
them. So the file is the secret; keep the data directory on an encrypted, backed-up volume, or
point ``DRIFTLINE_MDM_INTEGRATIONS`` at a secrets-manager-mounted file.

Rotation: ``set_credential`` moves the current credential to ``previous`` with a grace window,
so pushes keep working while the customer revokes the old one. Rotation is due 90 days after a
credential was set, with a warning 14 days ahead (the product document's schedule).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import SecretStr

from actions.mdm import Credential, Integration
from schemas.remediation import Vendor

ROTATE_AFTER = timedelta(days=90)
WARN_BEFORE = timedelta(days=14)


class IntegrationError(ValueError):
    """A configuration request that cannot be carried out (unknown integration, bad value)."""


_GRAPH_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_JAMF_ID = re.compile(r"[0-9]{1,18}")
_PAYLOAD_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(\.[A-Za-z0-9][A-Za-z0-9-]*)+")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_url(name: str, url: str, *, allow_http_loopback: bool = False) -> None:
    """An MDM URL carries client secrets and bearer tokens: https only. Plain http only to a
    loopback address and only when asked for (the emulators)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise IntegrationError(f"{name} must be a URL with a scheme and host, e.g. https://host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise IntegrationError(f"{name} must not carry user info, a query or a fragment")
    if parts.scheme == "http":
        if not is_loopback(parts.hostname):
            raise IntegrationError(
                f"{name} must be https: the MDM credential would travel in clear to "
                f"{parts.hostname}"
            )
        if not allow_http_loopback:
            raise IntegrationError(
                f"{name} is plain http: accepted for a loopback address only with "
                "--allow-http-loopback (emulators)"
            )


def validate(integration: Integration, *, allow_http_loopback: bool = False) -> None:
    """Everything checkable before the first call: URLs, and ids in the vendor's format (a
    Jamf profile id is a number, Graph and Iru ids one plain path segment)."""
    check_url("base_url", integration.base_url, allow_http_loopback=allow_http_loopback)
    vendor, profile_id = integration.vendor, integration.profile_id
    if vendor is Vendor.INTUNE:
        if not integration.token_url:
            raise IntegrationError(
                "Intune needs --token-url https://login.microsoftonline.com/<entra tenant>"
                "/oauth2/v2.0/token"
            )
        check_url("token_url", integration.token_url, allow_http_loopback=allow_http_loopback)
    elif integration.token_url:
        raise IntegrationError(f"--token-url is for Intune only, not {vendor.value}")
    if profile_id is not None:
        pattern = _JAMF_ID if vendor is Vendor.JAMF else _GRAPH_ID
        if not pattern.fullmatch(profile_id):
            kind = "numeric" if vendor is Vendor.JAMF else "a plain id (letters, digits, .-_)"
            raise IntegrationError(f"{vendor.value} profile id must be {kind}: {profile_id!r}")
    if integration.blueprint_id is not None:
        if vendor is not Vendor.IRU:
            raise IntegrationError("--blueprint-id is for Iru only")
        if not _GRAPH_ID.fullmatch(integration.blueprint_id):
            raise IntegrationError(f"Iru blueprint id is not an id: {integration.blueprint_id!r}")
    identifier = integration.profile_identifier
    if identifier is not None and not _PAYLOAD_IDENTIFIER.fullmatch(identifier):
        raise IntegrationError(
            f"profile identifier must be reverse-DNS, e.g. com.acme.claudecode: {identifier!r}"
        )


@dataclass(frozen=True)
class RotationStatus:
    tenant_id: str
    vendor: Vendor
    client_id: str | None
    set_at: datetime | None
    due_at: datetime | None
    state: str  # ok | warning | due | missing (push-only)
    previous_until: datetime | None  # the previous credential's grace end, if still usable


class IntegrationStore:
    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[Integration]:
        if not self.path.exists():
            return []
        raw = json.loads(self.path.read_text(encoding="utf-8"))
        return [Integration.model_validate(item) for item in raw]

    def for_tenant(self, tenant_id: str) -> list[Integration]:
        return [i for i in self.all() if i.tenant_id == tenant_id]

    def get(self, tenant_id: str, vendor: Vendor) -> Integration | None:
        for integration in self.all():
            if integration.tenant_id == tenant_id and integration.vendor == vendor:
                return integration
        return None

    def configure(self, integration: Integration) -> Integration:
        """Add or replace an integration's settings; its credentials are kept unless given."""
        existing = self.get(integration.tenant_id, integration.vendor)
        if existing is not None and integration.current is None:
            integration = integration.model_copy(
                update={
                    "current": existing.current,
                    "previous": existing.previous,
                    "grace_until": existing.grace_until,
                }
            )
        self._replace(integration)
        return integration

    def disconnect(self, tenant_id: str, vendor: Vendor) -> Integration:
        """Remove an integration and its credentials from the file (the customer should also
        revoke the credential in the MDM: removing it here does not)."""
        existing = self.get(tenant_id, vendor)
        if existing is None:
            raise IntegrationError(f"no {vendor.value} integration for tenant {tenant_id!r}")
        others = [i for i in self.all() if (i.tenant_id, i.vendor) != (tenant_id, vendor)]
        self._write([_dump(i) for i in others])
        return existing

    def set_credential(
        self,
        tenant_id: str,
        vendor: Vendor,
        secret: str,
        now: datetime,
        *,
        client_id: str | None = None,
        grace: timedelta = timedelta(days=7),
    ) -> Integration:
        """Install a new credential; the one it replaces stays usable for ``grace``."""
        integration = self.get(tenant_id, vendor)
        if integration is None:
            raise IntegrationError(
                f"no {vendor.value} integration for tenant {tenant_id!r}; "
                "configure it first (driftline mdm connect)"
            )
        if not secret.strip():
            raise IntegrationError("the secret is empty")
        if vendor in (Vendor.JAMF, Vendor.INTUNE) and not client_id:
            raise IntegrationError(f"{vendor.value} credentials need a client id")
        credential = Credential(
            client_id=client_id, secret=SecretStr(secret.strip()), created_at=now
        )
        updated = integration.model_copy(
            update={
                "current": credential,
                "previous": integration.current,
                "grace_until": now + grace if integration.current else None,
            }
        )
        self._replace(updated)
        return updated

    def status(self, now: datetime) -> list[RotationStatus]:
        rows = []
        for integration in self.all():
            current = integration.current
            previous_until = (
                integration.grace_until
                if integration.previous
                and integration.grace_until
                and now < integration.grace_until
                else None
            )
            if current is None:
                rows.append(
                    RotationStatus(
                        integration.tenant_id, integration.vendor, None, None, None, "missing", None
                    )
                )
                continue
            due = current.created_at + ROTATE_AFTER
            state = "due" if now >= due else "warning" if now >= due - WARN_BEFORE else "ok"
            rows.append(
                RotationStatus(
                    integration.tenant_id,
                    integration.vendor,
                    current.client_id,
                    current.created_at,
                    due,
                    state,
                    previous_until,
                )
            )
        return sorted(rows, key=lambda r: (r.tenant_id, r.vendor))

    def _replace(self, integration: Integration) -> None:
        others = [
            i
            for i in self.all()
            if (i.tenant_id, i.vendor) != (integration.tenant_id, integration.vendor)
        ]
        items = sorted([*others, integration], key=lambda i: (i.tenant_id, i.vendor))
        self._write([_dump(i) for i in items])

    def _write(self, items: list[dict[str, object]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".integrations-")
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(items, file, indent=2, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _dump(integration: Integration) -> dict[str, object]:
    """JSON with the secrets in clear: only ever written to the 0600 file."""
    data = integration.model_dump(mode="json")
    for name in ("current", "previous"):
        credential = getattr(integration, name)
        if credential is not None:
            data[name]["secret"] = credential.secret.get_secret_value()
    return data
