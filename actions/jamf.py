"""Jamf Pro: the routes Driftline may call, and how Jamf's JSON maps to devices and compliance.

Everything shared (allowlist enforcement, OAuth tokens, retries, limits) is ``actions.mdm``;
this module only describes Jamf (notes, "1. Jamf Pro"):

- Least privilege: reads of version, inventory and the one configured profile; the write is a
  PUT of that profile. Blank push (and reading MDM command status, which needs the same
  privilege) is in the allowlist only when the customer opted in to force sync. Classic
  ``computercommands`` and ``POST /api/v2/mdm/commands`` are never allowed.
- Inventory is ``/api/v4/computers-inventory`` from Jamf Pro 11.30 (v3 deprecated there, kept for
  a year), else v3; the server version is read once per client.
- ``Device.device_id`` is ``general.managementId``, the id blank push takes. Computers without
  one cannot be sent anything, so they are left out of inventory and compliance.
- Compliance comes from the inventory's CONFIGURATION_PROFILES section alone. Per-command status
  (``GET /api/v2/mdm/commands``) would cost one request per computer, needs the force-sync
  privilege, and a failed install leads to the same action as a missing profile.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Self
from xml.sax.saxutils import escape

import httpx
from packaging.version import InvalidVersion, Version

from actions.mdm import (
    Allowlist,
    ClientCredentials,
    Integration,
    Limits,
    Rejected,
    RetryPolicy,
    Route,
    Sent,
    Session,
    Sleep,
    Unavailable,
    vendor_time,
)
from schemas.remediation import ComplianceRecord, ComplianceStatus, Device, Vendor

log = logging.getLogger(__name__)

VERSION_PATH = "/api/v1/jamf-pro-version"
INVENTORY_V3 = "/api/v3/computers-inventory"
INVENTORY_V4 = "/api/v4/computers-inventory"
COMMANDS_PATH = "/api/v2/mdm/commands"
BLANK_PUSH_PATH = "/api/v2/mdm/blank-push"
TOKEN_PATH = "/api/oauth/token"
V4_SINCE = Version("11.30")

MAX_PAGE_SIZE = 2000  # Jamf's documented maximum page-size
SERIAL_PAGE_SIZE = 100  # a serial matches one computer, rarely a few
INVENTORY_PAGE_SIZE = 500  # bounded responses even with CONFIGURATION_PROFILES included

# Jamf: no published rate limit, "no more than 5 concurrent connections".
LIMITS = Limits(concurrency=5)

ROUTES = (
    Route("GET", VERSION_PATH),
    Route("GET", INVENTORY_V3),
    Route("GET", INVENTORY_V4),
)
FORCE_SYNC_ROUTES = (
    Route("POST", BLANK_PUSH_PATH),
    Route("GET", COMMANDS_PATH),
)

_PROFILE_ID = re.compile(r"[0-9]+")
# Characters XML 1.0 cannot carry even escaped: such a "mobileconfig" is not a plist.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def profile_path(profile_id: str) -> str:
    """The Classic API path of one macOS configuration profile; Jamf ids are integers."""
    if not _PROFILE_ID.fullmatch(profile_id):
        raise ValueError("Jamf profile_id must be the profile's numeric id")
    return f"/JSSResource/osxconfigurationprofiles/id/{profile_id}"


def allowlist(integration: Integration) -> Allowlist:
    """Only what Driftline calls: the profile routes name the configured profile, no other."""
    routes = list(ROUTES)
    if integration.profile_id is not None and _PROFILE_ID.fullmatch(integration.profile_id):
        path = profile_path(integration.profile_id)
        routes += [Route("GET", path), Route("PUT", path)]
    if integration.force_sync:
        routes += FORCE_SYNC_ROUTES
    return Allowlist(tuple(routes))


def rsql_quote(value: str) -> str:
    """An RSQL string literal: double quotes, with ``"`` and ``\\`` backslash-escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def uses_v4(version: object) -> bool:
    """True from 11.30 on. ``11.30.1-t1700000000``: the build suffix is not part of it."""
    if not isinstance(version, str):
        return False
    try:
        return Version(version.split("-", 1)[0].strip()) >= V4_SINCE
    except InvalidVersion:
        log.warning("jamf: unreadable Jamf Pro version %r, using inventory v3", version[:40])
        return False


def profile_xml(name: str, mobileconfig: bytes) -> bytes:
    """The Classic API body that replaces the profile's payload and redeploys it to everyone.

    The plist travels as escaped text inside ``<payloads>``; CR is escaped too, or the XML
    parser would turn CRLF into LF and the stored payload would differ from ``mobileconfig``.
    """
    if not name.strip():
        raise ValueError("profile name must not be blank")
    try:
        plist = mobileconfig.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("mobileconfig must be an unsigned XML plist (UTF-8)") from None
    if _NOT_XML.search(plist) or _NOT_XML.search(name):
        raise ValueError("mobileconfig and name must be XML text (no control characters)")
    entities = {"\r": "&#13;"}
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        "<os_x_configuration_profile><general>"
        f"<name>{escape(name, entities)}</name>"
        "<redeploy_on_update>All</redeploy_on_update>"
        f"<payloads>{escape(plist, entities)}</payloads>"
        "</general></os_x_configuration_profile>"
    ).encode()


class JamfClient:
    """One tenant's Jamf Pro, through one ``Session``. Use ``async with`` or ``aclose()``."""

    def __init__(
        self,
        integration: Integration,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        page_size: int = INVENTORY_PAGE_SIZE,
    ) -> None:
        if integration.vendor is not Vendor.JAMF:
            raise ValueError(f"not a Jamf integration: {integration.vendor.value}")
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be 1..{MAX_PAGE_SIZE}")
        self.integration = integration
        self.page_size = page_size
        self.auth = ClientCredentials(token_url=integration.base_url.rstrip("/") + TOKEN_PATH)
        self.session = Session(
            integration,
            allowlist(integration),
            self.auth,
            LIMITS,
            retry=retry,
            timeout=timeout,
            transport=transport,
            sleep=sleep,
        )
        self._inventory_path: str | None = None
        self._version_lock = asyncio.Lock()

    def __repr__(self) -> str:
        i = self.integration
        return f"JamfClient(tenant={i.tenant_id!r} base_url={i.base_url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.session.aclose()

    # --- reads ----------------------------------------------------------------------------

    async def inventory_path(self) -> str:
        """v4 or v3, decided by the server's version on first use."""
        async with self._version_lock:
            if self._inventory_path is None:
                body = await self._get_json(VERSION_PATH)
                v4 = uses_v4(body.get("version"))
                self._inventory_path = INVENTORY_V4 if v4 else INVENTORY_V3
            return self._inventory_path

    async def devices_by_serial(self, serial: str) -> list[Device]:
        """Exact (case-insensitive, trimmed) serial matches, re-checked here.

        Jamf's ``==`` may be case-sensitive and may treat ``*`` as a wildcard, so the filter
        asks for the serial as given and upper-cased (Apple's form), and the code decides.
        """
        wanted = serial.strip()
        if not wanted:
            return []
        variants = dict.fromkeys([wanted, wanted.upper()])
        query = ",".join(f"hardware.serialNumber=={rsql_quote(v)}" for v in variants)
        records = await self._computers(("GENERAL", "HARDWARE"), query, SERIAL_PAGE_SIZE)
        key = wanted.casefold()
        return [
            device
            for device in self._devices(records)
            if (device.serial_number or "").strip().casefold() == key
        ]

    async def inventory(self) -> list[Device]:
        records = await self._computers(("GENERAL", "HARDWARE"), None, self.page_size)
        return list(self._devices(records))

    async def compliance(self, imported_at: datetime) -> list[ComplianceRecord]:
        """Per computer: is the Claude Code profile (by payload identifier) installed?"""
        sections = ("GENERAL", "HARDWARE", "CONFIGURATION_PROFILES")
        records = await self._computers(sections, None, self.page_size)
        identifier = self.integration.payload_identifier
        out: list[ComplianceRecord] = []
        for record in records:
            device = self._device(record)
            if device is None:
                continue
            installed = [
                p
                for p in _items(record.get("configurationProfiles"))
                if p.get("profileIdentifier") == identifier
            ]
            if installed:
                status, reason = ComplianceStatus.COMPLIANT, f"profile {identifier} installed"
            else:
                status = ComplianceStatus.MISSING_PROFILE
                reason = f"profile {identifier} not installed"
            reported = vendor_time(_section(record, "general").get("reportDate"))
            out.append(
                ComplianceRecord(
                    tenant_id=device.tenant_id,
                    vendor=Vendor.JAMF,
                    device_id=device.device_id,
                    serial_number=device.serial_number,
                    status=status,
                    reason=reason,
                    reported_at=reported or imported_at,
                    imported_at=imported_at,
                    last_contact=device.last_contact,
                )
            )
        return out

    async def probe(self) -> Sent:
        path = await self.inventory_path()
        params = [("section", "GENERAL"), ("page", 0), ("page-size", 1)]
        _, sent = await self.session.request("GET", path, params=params)
        return sent

    # --- writes ---------------------------------------------------------------------------

    async def force_sync(self, device_id: str) -> Sent:
        """Blank push to one computer (by managementId); needs the force-sync opt-in.

        Jamf answers 2xx with the ids it could not push to; that list's field name is not
        documented, so any list in the answer that holds the id counts as a refusal.
        """
        if not device_id:
            raise ValueError("device_id (Jamf managementId) is required")
        body = {"clientManagementIds": [device_id]}
        response, sent = await self.session.request("POST", BLANK_PUSH_PATH, json=body)
        if not 200 <= response.status_code < 300:
            raise Rejected(f"{sent.request} -> {sent.status}: unexpected answer", **_at(sent))
        if _lists_id(response, device_id):
            raise Rejected(f"{sent.request} -> {sent.status}: Jamf refused the push", **_at(sent))
        return sent

    async def update_profile(self, name: str, mobileconfig: bytes) -> Sent:
        """Replace the configured profile's payload; ``redeploy_on_update=All`` reinstalls it
        on every computer in scope, not only newly assigned ones."""
        profile_id = self.integration.profile_id
        if profile_id is None:
            raise ValueError("integration has no profile_id: nothing to update")
        path = profile_path(profile_id)
        body = profile_xml(name, mobileconfig)
        headers = {"Content-Type": "application/xml"}
        response, sent = await self.session.request("PUT", path, content=body, headers=headers)
        if response.status_code not in (200, 201):
            raise Rejected(f"{sent.request} -> {sent.status}: unexpected answer", **_at(sent))
        return sent

    # --- helpers --------------------------------------------------------------------------

    async def _get_json(
        self, path: str, params: Sequence[tuple[str, Any]] | None = None
    ) -> dict[str, Any]:
        response, sent = await self.session.request("GET", path, params=params)
        if response.status_code != 200:
            raise Rejected(f"{sent.request} -> {sent.status}: unexpected answer", **_at(sent))
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise Unavailable(f"{sent.request} -> {sent.status}: not a JSON object", **_at(sent))
        return body

    async def _computers(
        self, sections: Sequence[str], query: str | None, page_size: int
    ) -> list[dict[str, Any]]:
        """Every page of computers-inventory, sorted by id so pages do not shift under us."""
        path = await self.inventory_path()
        by_id: dict[str, dict[str, Any]] = {}
        fetched, page = 0, 0
        while True:
            params: list[tuple[str, Any]] = [("section", s) for s in sections]
            params += [("page", page), ("page-size", page_size), ("sort", "id:asc")]
            if query is not None:
                params.append(("filter", query))
            body = await self._get_json(path, params)
            batch = _items(body.get("results"))
            total = body.get("totalCount")
            for record in batch:
                by_id.setdefault(str(record.get("id")), record)
            fetched += len(batch)
            page += 1
            if not batch or not isinstance(total, int) or fetched >= total:
                return list(by_id.values())

    def _devices(self, records: Iterable[dict[str, Any]]) -> Iterable[Device]:
        for record in records:
            device = self._device(record)
            if device is not None:
                yield device

    def _device(self, record: dict[str, Any]) -> Device | None:
        general = _section(record, "general")
        management_id = _text(general.get("managementId"))
        if management_id is None:
            return None
        return Device(
            tenant_id=self.integration.tenant_id,
            vendor=Vendor.JAMF,
            device_id=management_id,
            serial_number=_text(_section(record, "hardware").get("serialNumber")),
            last_contact=vendor_time(general.get("lastContactTime")),
        )


def client(integration: Integration, **kwargs: Any) -> JamfClient:
    return JamfClient(integration, **kwargs)


def _at(sent: Sent) -> dict[str, Any]:
    return {"status": sent.status, "request": sent.request}


def _section(record: dict[str, Any], name: str) -> dict[str, Any]:
    """A section object; Jamf sends ``null`` for sections that were not requested."""
    value = record.get(name)
    return value if isinstance(value, dict) else {}


def _items(value: object) -> list[dict[str, Any]]:
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def _text(value: object) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


def _lists_id(response: httpx.Response, device_id: str) -> bool:
    """Whether any list in the JSON answer names the id, as a string or in an object."""
    try:
        body = response.json()
    except ValueError:
        return False
    if not isinstance(body, dict):
        return False
    for value in body.values():
        if not isinstance(value, list):
            continue
        for item in value:
            if item == device_id or (isinstance(item, dict) and device_id in item.values()):
                return True
    return False
