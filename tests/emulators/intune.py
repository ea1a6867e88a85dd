"""Microsoft Graph v1.0 (Intune) and the Entra token endpoint, as far as Driftline uses them.

Faithful where clients go wrong: ``$filter=serialNumber eq ...`` is silently ignored unless
``honours_serial_filter`` (Graph documents no filter support for it and ignores unsupported
filters, returning every device), pages are small and linked by an absolute ``@odata.nextLink``
with an opaque ``$skiptoken``, access tokens live 60-90 minutes at random, and writes are
throttled per app per tenant with 429 + Retry-After.
"""

from __future__ import annotations

import base64
import binascii
import math
import random
import re
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from yarl import URL

from tests.emulators.base import Emulator

SCOPE = "https://graph.microsoft.com/.default"
READ_DEVICES = "DeviceManagementManagedDevices.Read.All"
WRITE_DEVICES = "DeviceManagementManagedDevices.ReadWrite.All"
SYNC_DEVICES = "DeviceManagementManagedDevices.PrivilegedOperations.All"
READ_CONFIG = "DeviceManagementConfiguration.Read.All"
WRITE_CONFIG = "DeviceManagementConfiguration.ReadWrite.All"
MACOS_CUSTOM = "#microsoft.graph.macOSCustomConfiguration"
# ReadWrite includes Read, as in Graph.
_IMPLIES = {WRITE_DEVICES: READ_DEVICES, WRITE_CONFIG: READ_CONFIG}
_FILTER = re.compile(r"\s*(\w+)\s+eq\s+'((?:[^']|'')*)'\s*")

DEVICES = "/v1.0/deviceManagement/managedDevices"
CONFIG = "/v1.0/deviceManagement/deviceConfigurations/{id}"


@dataclass
class App:
    """An Entra app registration: its client secrets and granted application permissions."""

    secrets: set[str]
    roles: set[str]


def _error(status: int, code: str, message: str = "") -> web.Response:
    return web.json_response({"error": {"code": code, "message": message or code}}, status=status)


class IntuneEmulator(Emulator):
    def __init__(
        self,
        entra_tenant: str = "contoso-tid",
        *,
        configurations: Sequence[str] = ("cfg-1",),
        page_size: int = 3,
        token_lifetime: int | None = None,  # None: random 3600-5400 s like Entra
        write_limits: dict[str, int] | None = None,
        throttle_window: float = 20.0,
        prefix: str = "",
    ) -> None:
        super().__init__(prefix)
        self.entra_tenant = entra_tenant
        self.page_size = page_size
        self.token_lifetime = token_lifetime
        self.write_limits = write_limits or {"configuration": 100, "devices": 200}
        self.throttle_window = throttle_window
        self.honours_serial_filter = False
        self.next_link_origin: str | None = None  # e.g. another host, to test the client refuses
        self.apps: dict[str, App] = {}
        self.devices: list[dict[str, Any]] = []
        self.profiles = {cid: {"@odata.type": MACOS_CUSTOM, "id": cid} for cid in configurations}
        self.configurations: dict[str, bytes] = {}  # decoded payloads, as PATCHed
        self.statuses: dict[str, list[dict[str, Any]]] = {cid: [] for cid in configurations}
        self.synced: list[str] = []
        self._skiptokens: dict[str, int] = {}
        self._writes: dict[tuple[str, str], list[float]] = {}  # (tenant/app, family) -> times
        self.route("POST", "/{tenant}/oauth2/v2.0/token", None, self._token)
        self.route("GET", DEVICES, READ_DEVICES, self._list_devices)
        self.route("POST", DEVICES + "/{id}/syncDevice", SYNC_DEVICES, self._sync)
        self.route("GET", CONFIG, READ_CONFIG, self._get_config)
        self.route("PATCH", CONFIG, WRITE_CONFIG, self._patch_config)
        self.route("GET", CONFIG + "/deviceStatuses", READ_CONFIG, self._device_statuses)

    # --- set-up -------------------------------------------------------------------------

    def add_app(self, client_id: str, secret: str, roles: set[str]) -> None:
        self.apps[client_id] = App({secret}, set(roles))

    def add_secret(self, client_id: str, secret: str) -> None:
        self.apps[client_id].secrets.add(secret)

    def remove_secret(self, client_id: str, secret: str) -> None:
        """New token requests with it fail; tokens already issued stay valid, as in Entra."""
        self.apps[client_id].secrets.discard(secret)

    def revoke(self, client_id: str) -> None:
        """Invalidate every access token issued to the app."""
        for token, issued in list(self.tokens.items()):
            if issued.credential.endswith("/" + client_id):
                del self.tokens[token]

    def add_device(
        self,
        serial: str,
        *,
        name: str | None = None,
        upn: str | None = None,
        compliance_state: str = "compliant",
        profile_status: str | None = None,
        configuration: str = "cfg-1",
        last_sync: str = "2025-01-01T08:00:00Z",
        last_reported: str = "2025-01-01T09:00:00Z",
    ) -> str:
        """A managed Mac; ``profile_status`` adds its deviceStatuses row for ``configuration``."""
        device_id = str(uuid.uuid4())
        name = name or f"Mac-{serial}"
        self.devices.append(
            {
                "id": device_id,
                "deviceName": name,
                "serialNumber": serial,
                "userPrincipalName": upn or "",
                "complianceState": compliance_state,
                "lastSyncDateTime": last_sync,
                "operatingSystem": "macOS",
                "azureADDeviceId": str(uuid.uuid4()),
            }
        )
        if profile_status is not None:
            self.add_status(configuration, name, profile_status, upn=upn, reported=last_reported)
        return device_id

    def add_status(
        self, configuration: str, name: str, status: str, *, upn: str | None, reported: str
    ) -> None:
        """A deviceConfigurationDeviceStatus row: no serial, no device id, as in Graph."""
        self.statuses[configuration].append(
            {
                "id": str(uuid.uuid4()),
                "deviceDisplayName": name,
                "userName": (upn or "").split("@")[0] or None,
                "deviceModel": "MacBookPro18,3",
                "complianceGracePeriodExpirationDateTime": "0001-01-01T00:00:00Z",
                "status": status,
                "lastReportedDateTime": reported,
                "userPrincipalName": upn or "",
            }
        )

    # --- Entra token endpoint -----------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if request.match_info["tenant"] != self.entra_tenant:
            return _error(400, "invalid_request", "AADSTS90002: tenant not found")
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type")
        client_id = str(form.get("client_id", ""))
        app = self.apps.get(client_id)
        if app is None or str(form.get("client_secret", "")) not in app.secrets:
            return _error(401, "invalid_client", "AADSTS7000215: invalid client secret")
        if form.get("scope") != SCOPE:
            return _error(400, "invalid_scope", "AADSTS1002012: scope must be .default")
        roles = app.roles | {_IMPLIES[r] for r in app.roles if r in _IMPLIES}
        lifetime = self.token_lifetime or random.randint(3600, 5400)
        owner = f"{self.entra_tenant}/{client_id}"
        token = self.issue(roles, lifetime, owner)
        body = {"token_type": "Bearer", "expires_in": lifetime, "access_token": token}
        return web.json_response({**body, "ext_expires_in": lifetime})

    # --- Graph --------------------------------------------------------------------------

    async def _list_devices(self, request: web.Request) -> web.Response:
        devices = self.devices
        raw = request.query.get("$filter")
        if raw is not None:
            match = _FILTER.fullmatch(raw)
            if match is None:
                return _error(400, "BadRequest", "Invalid filter clause")
            prop, value = match[1], match[2].replace("''", "'")
            if prop == "serialNumber" and self.honours_serial_filter:
                devices = [d for d in devices if d["serialNumber"].casefold() == value.casefold()]
            # any other property, or serialNumber when not honoured: silently ignored
        if "$select" in request.query:
            keep = {f.strip() for f in request.query["$select"].split(",")}
            devices = [{k: v for k, v in d.items() if k in keep} for d in devices]
        return self._page(request, devices)

    async def _sync(self, request: web.Request) -> web.Response:
        device_id = request.match_info["id"]
        if not any(d["id"] == device_id for d in self.devices):
            return _error(404, "ResourceNotFound")
        if (throttled := self._throttle(request, "devices")) is not None:
            return throttled
        self.synced.append(device_id)
        return web.Response(status=204)

    async def _get_config(self, request: web.Request) -> web.Response:
        profile = self.profiles.get(request.match_info["id"])
        if profile is None:
            return _error(404, "ResourceNotFound")
        return web.json_response(profile)

    async def _patch_config(self, request: web.Request) -> web.Response:
        config_id = request.match_info["id"]
        if config_id not in self.profiles:
            return _error(404, "ResourceNotFound")
        body = await request.json()
        if not isinstance(body, dict) or body.get("@odata.type") != MACOS_CUSTOM:
            return _error(400, "BadRequest", "@odata.type must be macOSCustomConfiguration")
        try:
            payload = base64.b64decode(str(body.get("payload")), validate=True)
        except (binascii.Error, ValueError):
            return _error(400, "BadRequest", "payload must be base64")
        if (throttled := self._throttle(request, "configuration")) is not None:
            return throttled
        self.configurations[config_id] = payload
        self.profiles[config_id].update(body)
        return web.json_response(self.profiles[config_id])

    async def _device_statuses(self, request: web.Request) -> web.Response:
        config_id = request.match_info["id"]
        if config_id not in self.profiles:
            return _error(404, "ResourceNotFound")
        return self._page(request, self.statuses.get(config_id, []))

    # --- paging and throttling ----------------------------------------------------------

    def _page(self, request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        offset = 0
        if "$skiptoken" in request.query:
            found = self._skiptokens.get(request.query["$skiptoken"])
            if found is None:
                return _error(400, "BadRequest", "invalid $skiptoken")
            offset = found
        size = self.page_size
        if "$top" in request.query:
            size = min(size, int(request.query["$top"]))
        body: dict[str, Any] = {"value": items[offset : offset + size]}
        if offset + size < len(items):
            token = secrets.token_urlsafe(16)
            self._skiptokens[token] = offset + size
            origin = self.next_link_origin or f"{request.scheme}://{request.host}"
            query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
            body["@odata.nextLink"] = str(
                URL(origin + request.path).with_query({**query, "$skiptoken": token})
            )
        return web.json_response(body)

    def _throttle(self, request: web.Request, family: str) -> web.Response | None:
        """Intune counts writes per app per tenant in a 20 s window; beyond it, 429."""
        token = request.headers["Authorization"].partition(" ")[2]
        key = (self.tokens[token].credential, family)
        now = self.clock()
        window = [t for t in self._writes.get(key, []) if t > now - self.throttle_window]
        self._writes[key] = window
        if len(window) >= self.write_limits[family]:
            wait = max(1, math.ceil(window[0] + self.throttle_window - now))
            response = _error(429, "TooManyRequests", "Too many requests")
            response.headers["Retry-After"] = str(wait)
            return response
        window.append(now)
        return None
