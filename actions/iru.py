"""Iru (formerly Kandji) Endpoint Management API: devices, library-item status, blank push,
custom profile upload. Everything generic (allowlist, retries, credentials) is ``actions.mdm``.

Iru facts this module is shaped by (reference notes, section 3):

- The token is a static bearer whose permissions are an explicit list of (method, path) pairs,
  so the allowlist below is exactly what the customer ticks; force sync only on opt-in.
- 10,000 requests per hour per customer, shared by every token and tool of the tenant, no
  documented Retry-After. One library-items call per device makes ``compliance`` the expensive
  call: a 10,000-device tenant costs the whole hourly budget, hence ``device_ids``/``max_devices``.
- ``GET /api/v1/devices?serial_number=`` is a substring match returning a bare JSON array of at
  most 300: we page with offset and keep exact matches in code.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any, Final, Literal

import httpx

from actions.mdm import (
    Allowlist,
    Integration,
    Limits,
    MdmError,
    PartialFailure,
    Rejected,
    RetryPolicy,
    Route,
    Sent,
    Session,
    Sleep,
    StaticBearer,
    vendor_time,
)
from schemas.remediation import ComplianceRecord, ComplianceStatus, Device, Vendor

log = logging.getLogger(__name__)

PAGE: Final = 300  # the API's hard maximum for ``limit``
LIMITS: Final = Limits(concurrency=4, rate=(10_000, 3600.0))

DEVICES = "/api/v1/devices"
LIBRARY_ITEMS = "/api/v1/devices/{device_id}/library-items"
BLANKPUSH = "/api/v1/devices/{device_id}/action/blankpush"
CUSTOM_PROFILES = "/api/v1/library/custom-profiles"
CUSTOM_PROFILE = "/api/v1/library/custom-profiles/{library_item_id}"
ASSIGN = "/api/v1/blueprints/{blueprint_id}/assign-library-item"

ALREADY_RUNNING = "Command already running"
MOBILECONFIG_TYPE = "application/x-apple-aspen-config"
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_SUBDOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]")

# Configuration profiles report lowercase success/pending/failed; other library items the
# uppercase values. Pending means "not on the device yet", which is what missing_profile means.
STATUSES: Final[dict[str, ComplianceStatus]] = {
    "success": ComplianceStatus.COMPLIANT,
    "PASS": ComplianceStatus.COMPLIANT,
    "failed": ComplianceStatus.NONCOMPLIANT,
    "ERROR": ComplianceStatus.NONCOMPLIANT,
    "INCOMPATIBLE": ComplianceStatus.NONCOMPLIANT,
    "pending": ComplianceStatus.MISSING_PROFILE,
    "PENDING": ComplianceStatus.MISSING_PROFILE,
    "CHANGE_PENDING": ComplianceStatus.MISSING_PROFILE,
    "AVAILABLE": ComplianceStatus.MISSING_PROFILE,
    "DOWNLOADING": ComplianceStatus.MISSING_PROFILE,
    "INSTALLING": ComplianceStatus.MISSING_PROFILE,
    "CACHED": ComplianceStatus.MISSING_PROFILE,
    "EXCLUDED": ComplianceStatus.UNKNOWN,
}


def api_url(subdomain: str, region: Literal["us", "eu"]) -> str:
    """The tenant's API URL as Settings > Access shows it."""
    sub = subdomain.strip().lower()
    if not _SUBDOMAIN.fullmatch(sub):
        raise ValueError(f"not an Iru subdomain: {subdomain!r}")
    if region == "us":
        return f"https://{sub}.api.kandji.io"
    if region == "eu":
        return f"https://{sub}.api.eu.kandji.io"
    raise ValueError(f"unknown Iru region {region!r} (us or eu)")


def allowlist(integration: Integration) -> Allowlist:
    """The token's permission list: read devices and statuses, write the one profile, and blank
    push only when the customer opted in. No secrets, deletes or other device actions."""
    routes = [
        Route("GET", DEVICES),
        Route("GET", LIBRARY_ITEMS),
        Route("PATCH", CUSTOM_PROFILE),
        Route("POST", CUSTOM_PROFILES),
        Route("POST", ASSIGN),
    ]
    if integration.force_sync:
        routes.append(Route("POST", BLANKPUSH))
    return Allowlist(tuple(routes))


def privileges(integration: Integration) -> set[str]:
    """The (method, path) pairs to tick when minting the token, as Iru's UI lists them."""
    return {str(route) for route in allowlist(integration).routes}


def _check_base_url(base_url: str) -> None:
    """A bearer token must never travel in clear, and paths are ours to add."""
    url = httpx.URL(base_url)
    if url.scheme != "https" and not (url.scheme == "http" and url.host in _LOCAL_HOSTS):
        raise ValueError(
            f"Iru base_url must be https (got {url.scheme}://{url.host}); "
            "plain http is only accepted for localhost in tests"
        )
    if url.userinfo or url.query or url.fragment:
        raise ValueError(
            f"Iru base_url must be the API root, e.g. {api_url('acme', 'us')} or a proxy's "
            f"https://proxy.corp/iru (got a query, fragment or user info on {url.host})"
        )
    if re.search(r"/api(/v1)?/?$", url.path):
        raise ValueError(
            "Iru base_url is the API root without /api/v1 (Driftline adds the paths), "
            f"e.g. {api_url('acme', 'us')}"
        )


def _serial(raw: Any) -> str | None:
    return raw.strip() or None if isinstance(raw, str) else None


PULL_DEVICES = 500  # devices per compliance pull: one request each, from a shared hourly budget
PULL_ROTATION = 900.0  # seconds: the scheduled pull's interval, so each pull takes the next slice


class IruClient:
    """``MdmClient`` for Iru. One per integration; ``aclose()`` when done.

    ``remaining_hour`` is the last ``X-Ratelimit-Remaining-Hour`` the server sent (undocumented,
    so None when absent): the tenant's budget is shared with tools we cannot see, and this is the
    only view of what they used.
    """

    def __init__(
        self,
        integration: Integration,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        sleep: Sleep = asyncio.sleep,
        limits: Limits = LIMITS,
    ) -> None:
        if integration.vendor is not Vendor.IRU:
            raise ValueError(f"not an Iru integration: {integration.vendor.value}")
        _check_base_url(integration.base_url)
        self.integration = integration
        self.limits = limits
        self.session = Session(
            integration,
            allowlist(integration),
            StaticBearer(),
            limits,
            retry=retry,
            timeout=timeout,
            transport=transport,
            sleep=sleep,
        )
        self.remaining_hour: int | None = None
        self.session.http.event_hooks["response"].append(self._observe)

    def __repr__(self) -> str:
        i = self.integration
        return f"IruClient(tenant={i.tenant_id!r} base_url={i.base_url!r})"

    async def aclose(self) -> None:
        await self.session.aclose()

    async def _observe(self, response: httpx.Response) -> None:
        remaining = response.headers.get("X-Ratelimit-Remaining-Hour", "").strip()
        if remaining.isdigit():
            self.remaining_hour = int(remaining)

    # --- devices ------------------------------------------------------------------------

    async def _pages(self, **query: str) -> AsyncIterator[dict[str, Any]]:
        """Every device of a listing: offset paging until an empty or short page."""
        offset = 0
        while True:
            response, _ = await self.session.request(
                "GET", DEVICES, params={**query, "limit": PAGE, "offset": offset}
            )
            page = response.json()
            if not isinstance(page, list):
                raise Rejected(f"GET {DEVICES}: expected a JSON array", request=f"GET {DEVICES}")
            for device in page:
                yield device
            if len(page) < PAGE:
                return
            offset += PAGE

    def _device(self, raw: dict[str, Any]) -> Device:
        return Device(
            tenant_id=self.integration.tenant_id,
            vendor=Vendor.IRU,
            device_id=str(raw["device_id"]),
            serial_number=_serial(raw.get("serial_number")),
            last_contact=vendor_time(raw.get("last_check_in")),
        )

    async def devices_by_serial(self, serial: str) -> list[Device]:
        """Exact matches only: the API matches substrings, so C02ABC also finds XC02ABC1."""
        wanted = serial.strip()
        if not wanted:  # an empty filter would list the whole tenant
            return []
        return [
            self._device(raw)
            async for raw in self._pages(serial_number=wanted)
            if not raw.get("is_removed")
            and (_serial(raw.get("serial_number")) or "").casefold() == wanted.casefold()
        ]

    async def inventory(self) -> list[Device]:
        """Every device not marked removed; 10,000 devices cost 34 requests."""
        return [self._device(raw) async for raw in self._pages() if not raw.get("is_removed")]

    async def probe(self) -> Sent:
        _, sent = await self.session.request("GET", DEVICES, params={"limit": 1, "offset": 0})
        return sent

    # --- compliance ---------------------------------------------------------------------

    async def compliance(
        self,
        imported_at: datetime,
        device_ids: Sequence[str] | None = None,
        *,
        max_devices: int | None = PULL_DEVICES,
        rotation: float = PULL_ROTATION,
    ) -> list[ComplianceRecord]:
        """The Claude Code profile's status on each device: one request per device.

        ``device_ids`` limits the import to those devices (their serials are then unknown
        here, the planner takes them from inventory); otherwise the inventory is listed first.
        ``max_devices`` caps the requests of one run, since the hourly budget is the tenant's:
        a larger fleet is covered in turns, the slice chosen by ``imported_at`` in steps of
        ``rotation`` seconds (the scheduled pull's interval), so successive pulls check
        successive slices (by default 500 devices a quarter hour, about a fifth of the budget).
        """
        item_id = self.integration.profile_id
        if not item_id:
            raise ValueError("Iru compliance needs integration.profile_id (the library item id)")
        contact: dict[str, datetime | None] = {}
        if device_ids is None:
            inventory = await self.inventory()
            contact = {d.device_id: d.last_contact for d in inventory}
            targets = [(d.device_id, d.serial_number) for d in inventory]
        else:
            targets = [(device_id, None) for device_id in dict.fromkeys(device_ids)]
        if max_devices is not None and len(targets) > max_devices:
            turns = -(-len(targets) // max_devices)
            turn = int(imported_at.timestamp() // rotation) % turns
            log.info(
                "iru %s: compliance of devices %d..%d of %d this time (budget)",
                self.integration.tenant_id,
                turn * max_devices,
                min(len(targets), (turn + 1) * max_devices) - 1,
                len(targets),
            )
            targets = sorted(targets)[turn * max_devices : (turn + 1) * max_devices]
        records: list[ComplianceRecord | None] = [None] * len(targets)
        queue = iter(enumerate(targets))

        async def worker() -> None:
            for index, (device_id, serial) in queue:
                found = await self._compliance_of(device_id, serial, item_id, imported_at)
                if found is not None and contact.get(device_id) is not None:
                    found = found.model_copy(update={"last_contact": contact[device_id]})
                records[index] = found

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(self.limits.concurrency, len(targets))):
                    group.create_task(worker())
        except ExceptionGroup as failed:  # the first failure stopped the others: raise it as is
            raise failed.exceptions[0] from None
        return [record for record in records if record is not None]

    async def _compliance_of(
        self, device_id: str, serial: str | None, item_id: str, imported_at: datetime
    ) -> ComplianceRecord | None:
        path = LIBRARY_ITEMS.format(device_id=device_id)
        try:
            response, _ = await self.session.request("GET", path)
        except Rejected as exc:
            if exc.status == 404:  # removed between the listing and now
                log.info("iru %s: device %s gone", self.integration.tenant_id, device_id)
                return None
            raise
        items = response.json().get("library_items") or []
        item = next((i for i in items if str(i.get("id")) == item_id), None)
        if item is None:
            status = ComplianceStatus.MISSING_PROFILE
            reason = "Claude Code profile not in the device's library items"
            reported_at = imported_at
        else:
            raw = str(item.get("status"))
            status = STATUSES.get(raw, ComplianceStatus.UNKNOWN)
            reason = f"library item {item.get('name') or item_id!s} status {raw}"
            reported_at = vendor_time(item.get("reported_at")) or imported_at
        return ComplianceRecord(
            tenant_id=self.integration.tenant_id,
            vendor=Vendor.IRU,
            device_id=device_id,
            serial_number=serial,
            status=status,
            reason=reason,
            reported_at=reported_at,
            imported_at=imported_at,
        )

    # --- actions ------------------------------------------------------------------------

    async def force_sync(self, device_id: str) -> Sent:
        """Blank push: 200 with an empty body means queued, not delivered.

        A 400 "Command already running" means a blank push is already queued for the device,
        which is what we wanted: it returns a ``Sent`` with status 400 so the audit shows what
        the server said. Any other 4xx raises ``Rejected``.
        """
        path = BLANKPUSH.format(device_id=device_id)
        try:
            _, sent = await self.session.request("POST", path)
        except Rejected as exc:
            if exc.status == 400 and ALREADY_RUNNING.lower() in exc.detail.lower():
                log.info(
                    "iru %s: blank push already queued for %s",
                    self.integration.tenant_id,
                    device_id,
                )
                return Sent(f"POST {path}", 400, exc.credential or "current")
            raise
        return sent

    async def update_profile(self, name: str, mobileconfig: bytes) -> Sent:
        """Replace the custom profile's file (and name) in place; its assignments are kept.

        With ``integration.blueprint_id`` the profile is (re)assigned to that blueprint too, so
        a profile someone removed from it comes back; assigning twice is harmless.
        """
        item_id = self._profile_id()
        _, sent = await self.session.request(
            "PATCH",
            CUSTOM_PROFILE.format(library_item_id=item_id),
            **_profile_form(name, mobileconfig),
        )
        if self.integration.blueprint_id:
            try:
                await self.assign_to_blueprint()
            except MdmError as error:  # the profile changed; only its assignment did not
                raise PartialFailure([f"{sent.request} -> {sent.status}"], error) from None
        return sent

    async def create_profile(self, name: str, mobileconfig: bytes) -> tuple[str, Sent]:
        """A new custom profile (active); returns its library item id for ``profile_id``."""
        response, sent = await self.session.request(
            "POST", CUSTOM_PROFILES, **_profile_form(name, mobileconfig)
        )
        return str(response.json()["id"]), sent

    async def assign_to_blueprint(self, *, assignment_node_id: str | None = None) -> Sent:
        """Put the profile on ``integration.blueprint_id``; the node is for Assignment Maps
        only (Iru answers 400 to a node on a classic blueprint)."""
        item_id = self._profile_id()
        blueprint_id = self.integration.blueprint_id
        if not blueprint_id:
            raise ValueError("assign_to_blueprint needs integration.blueprint_id")
        body = {"library_item_id": item_id}
        if assignment_node_id is not None:
            body["assignment_node_id"] = assignment_node_id
        _, sent = await self.session.request(
            "POST", ASSIGN.format(blueprint_id=blueprint_id), json=body
        )
        return sent

    def _profile_id(self) -> str:
        if not self.integration.profile_id:
            raise ValueError("Iru profile calls need integration.profile_id (the library item id)")
        return self.integration.profile_id


def _profile_form(name: str, mobileconfig: bytes) -> dict[str, Any]:
    """multipart/form-data as the custom-profiles endpoints take it: ``name`` and ``file``."""
    filename = _UNSAFE_FILENAME.sub("_", name) or "profile"
    return {
        "data": {"name": name},
        "files": {"file": (f"{filename}.mobileconfig", mobileconfig, MOBILECONFIG_TYPE)},
    }
