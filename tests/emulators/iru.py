"""Iru (formerly Kandji) Endpoint Management API, as documented (reference notes, section 3).

- No token endpoint: tokens are minted in the web UI with an explicit list of (method, path)
  pairs; ``mint_token`` does the same. A token without the ``Bearer`` prefix is a 401.
- ``GET /api/v1/devices``: ``serial_number`` is a case-insensitive *contains* filter, ``limit``
  at most 300 (else 400), ``offset`` paging, a bare JSON array.
- Blank push: 200 with an empty body; 400 "Command already running" while one is pending.
- Custom profiles: multipart ``name`` + ``file``; PATCH 200, POST 201.
- 10,000 requests per hour per tenant, shared by every token: 429, with ``Retry-After`` only if
  configured (Iru documents none) and ``X-Ratelimit-*-Hour`` headers on answered requests.
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import uuid
from collections import deque
from typing import Any

from aiohttp import web

from tests.emulators.base import Emulator, Handler

DEVICES = "/api/v1/devices"
DEVICE = "/api/v1/devices/{device_id}"
FILEVAULT = "/api/v1/devices/{device_id}/secrets/filevaultkey"
LIBRARY_ITEMS = "/api/v1/devices/{device_id}/library-items"
BLANKPUSH = "/api/v1/devices/{device_id}/action/blankpush"
CUSTOM_PROFILES = "/api/v1/library/custom-profiles"
CUSTOM_PROFILE = "/api/v1/library/custom-profiles/{library_item_id}"
ASSIGN = "/api/v1/blueprints/{blueprint_id}/assign-library-item"


def privilege(method: str, template: str) -> str:
    """How a ticked permission reads: ``"POST /api/v1/devices/{device_id}/action/blankpush"``."""
    return f"{method} {template}"


def _json_error(status: int, detail: str) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


class IruEmulator(Emulator):
    def __init__(
        self,
        *,
        hourly_limit: int = 10_000,
        window: float = 3600.0,
        retry_after: str | None = None,
        prefix: str = "",
    ) -> None:
        super().__init__(prefix)
        self.devices: dict[str, dict[str, Any]] = {}
        self.library_items: dict[str, list[dict[str, Any]]] = {}
        self.profiles: dict[str, dict[str, Any]] = {}
        self.blueprints: dict[str, dict[str, Any]] = {}
        self.blank_pushes: list[str] = []
        self.pending: set[str] = set()
        self.hourly_limit, self.window, self.retry_after = hourly_limit, window, retry_after
        self._served: deque[float] = deque()
        handlers: list[tuple[str, str, Handler]] = [
            ("GET", DEVICES, self._list_devices),
            ("DELETE", DEVICE, self._delete_device),
            ("GET", FILEVAULT, self._filevault),
            ("GET", LIBRARY_ITEMS, self._library_items),
            ("POST", BLANKPUSH, self._blankpush),
            ("POST", CUSTOM_PROFILES, self._create_profile),
            ("PATCH", CUSTOM_PROFILE, self._update_profile),
            ("POST", ASSIGN, self._assign),
        ]
        self.all_privileges = frozenset(privilege(m, t) for m, t, _ in handlers)
        for method, template, handler in handlers:
            self.route(method, template, privilege(method, template), self._limited(handler))

    # --- set-up -------------------------------------------------------------------------

    def mint_token(self, privileges: set[str] | frozenset[str]) -> str:
        """Iru tokens do not expire by themselves (UNCONFIRMED: modelled as ~31 years)."""
        return self.issue(privileges, lifetime=10**9, credential="api-token")

    def revoke_token(self, token: str) -> None:
        self.tokens.pop(token, None)

    def add_device(self, serial: str | None, **fields: Any) -> dict[str, Any]:
        device_id = str(uuid.uuid4())
        device: dict[str, Any] = {
            "device_id": device_id,
            "serial_number": serial,
            "device_name": f"Mac {serial}",
            "last_check_in": "2026-01-05T10:00:00.000000Z",
            "blueprint_id": "bp-1",
            "blueprint_name": "Engineering",
            "mdm_enabled": True,
            "agent_installed": True,
            "platform": "Mac",
            "os_version": "15.2",
            "model": "MacBook Pro (14-inch, 2024)",
            "is_missing": False,
            "is_removed": False,
            "user": {"email": "dev@example.com", "name": "Dev", "id": 1, "is_archived": False},
            "tags": [],
            **fields,
        }
        self.devices[device_id] = device
        self.library_items[device_id] = []
        return device

    def set_item(
        self, device_id: str, item_id: str, status: str, name: str = "Claude Code"
    ) -> None:
        items = [i for i in self.library_items[device_id] if i["id"] != item_id]
        items.append(
            {
                "id": item_id,
                "name": name,
                "type": "custom-profile",
                "status": status,
                "reported_at": "2026-01-05T09:30:00.000000Z",
                "log": "",
                "last_audit_run": "",
                "last_audit_log": "",
                "control_log": None,
                "control_reported_at": None,
            }
        )
        self.library_items[device_id] = items

    def add_profile(self, item_id: str, name: str = "Claude Code") -> None:
        self.profiles[item_id] = {"id": item_id, "name": name, "active": True, "file": b""}

    def add_blueprint(self, blueprint_id: str, *, assignment_map: bool = False) -> None:
        self.blueprints[blueprint_id] = {"map": assignment_map, "library_items": []}

    def complete_pushes(self) -> None:
        """Devices checked in: their queued blank pushes are done."""
        self.pending.clear()

    # --- rate limit ---------------------------------------------------------------------

    def _limited(self, handler: Handler) -> Handler:
        async def limited(request: web.Request) -> web.StreamResponse:
            now = self.clock()
            while self._served and self._served[0] <= now - self.window:
                self._served.popleft()
            if len(self._served) >= self.hourly_limit:
                headers = self._rate_headers()
                if self.retry_after is not None:
                    headers["Retry-After"] = self.retry_after
                return web.json_response(
                    {"detail": "Request was throttled."}, status=429, headers=headers
                )
            self._served.append(now)
            response = await handler(request)
            response.headers.update(self._rate_headers())
            return response

        return limited

    def _rate_headers(self) -> dict[str, str]:
        remaining = max(0, self.hourly_limit - len(self._served))
        return {
            "X-Ratelimit-Limit-Hour": str(self.hourly_limit),
            "X-Ratelimit-Remaining-Hour": str(remaining),
        }

    # --- handlers -----------------------------------------------------------------------

    async def _list_devices(self, request: web.Request) -> web.StreamResponse:
        try:
            limit = int(request.query.get("limit", "300"))
            offset = int(request.query.get("offset", "0"))
        except ValueError:
            return _json_error(400, "limit and offset must be integers")
        if limit > 300 or limit < 1 or offset < 0:
            return _json_error(400, "limit must be between 1 and 300")
        devices = list(self.devices.values())
        if "serial_number" in request.query:
            wanted = request.query["serial_number"].casefold()
            devices = [d for d in devices if wanted in (d["serial_number"] or "").casefold()]
        return web.json_response(devices[offset : offset + limit])

    def _known(self, request: web.Request) -> str:
        device_id = request.match_info["device_id"]
        if device_id not in self.devices:
            raise web.HTTPNotFound(text=json.dumps({"detail": "Not found."}))
        return device_id

    async def _delete_device(self, request: web.Request) -> web.StreamResponse:
        self.devices.pop(self._known(request))
        return web.Response(status=204)

    async def _filevault(self, request: web.Request) -> web.StreamResponse:
        self._known(request)
        return web.json_response({"key": "ABCD-EFGH-IJKL-MNOP"})

    async def _library_items(self, request: web.Request) -> web.StreamResponse:
        device_id = self._known(request)
        return web.json_response(
            {"device_id": device_id, "library_items": self.library_items[device_id]}
        )

    async def _blankpush(self, request: web.Request) -> web.StreamResponse:
        device_id = self._known(request)
        if device_id in self.pending:
            return _json_error(400, "Command already running")
        self.pending.add(device_id)
        self.blank_pushes.append(device_id)
        return web.Response(status=200)

    async def _form(self, request: web.Request) -> dict[str, tuple[bytes, str | None, str]]:
        """multipart/form-data fields as (bytes, filename, content type), parsed from the body
        the base already read (aiohttp's own reader wants the unread stream)."""
        content_type = request.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            raise web.HTTPUnsupportedMediaType(text='{"detail": "multipart/form-data expected"}')
        raw = f"Content-Type: {content_type}\r\n\r\n".encode() + await request.read()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
        fields: dict[str, tuple[bytes, str | None, str]] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            if isinstance(name, str) and isinstance(payload, bytes):
                fields[name] = (payload, part.get_filename(), part.get_content_type())
        return fields

    def _store(self, item_id: str, fields: dict[str, tuple[bytes, str | None, str]]) -> None:
        profile = self.profiles[item_id]
        if "name" in fields:
            profile["name"] = fields["name"][0].decode()
        if "file" in fields:
            profile["file"], profile["filename"], profile["content_type"] = fields["file"]
        if "active" in fields:
            profile["active"] = fields["active"][0].decode().lower() == "true"

    def _profile_json(self, item_id: str) -> dict[str, Any]:
        profile = self.profiles[item_id]
        return {
            "id": item_id,
            "name": profile["name"],
            "active": profile["active"],
            "profile": profile["file"].decode(errors="replace"),
            "runs_on_mac": True,
        }

    async def _create_profile(self, request: web.Request) -> web.StreamResponse:
        fields = await self._form(request)
        if "name" not in fields or "file" not in fields:
            return _json_error(400, "name and file are required")
        item_id = str(uuid.uuid4())
        self.add_profile(item_id)
        self._store(item_id, fields)
        return web.json_response(self._profile_json(item_id), status=201)

    async def _update_profile(self, request: web.Request) -> web.StreamResponse:
        item_id = request.match_info["library_item_id"]
        if item_id not in self.profiles:
            return _json_error(404, "Not found.")
        self._store(item_id, await self._form(request))
        return web.json_response(self._profile_json(item_id))

    async def _assign(self, request: web.Request) -> web.StreamResponse:
        blueprint = self.blueprints.get(request.match_info["blueprint_id"])
        if blueprint is None:
            return _json_error(404, "Not found.")
        try:
            body = await request.json()
        except ValueError:
            return _json_error(400, "JSON body expected")
        item_id = body.get("library_item_id") if isinstance(body, dict) else None
        if item_id not in self.profiles:
            return _json_error(400, "library_item_id: unknown library item")
        node = body.get("assignment_node_id")
        if node is not None and not blueprint["map"]:
            return _json_error(400, "assignment_node_id is not valid for a classic blueprint")
        if node is None and blueprint["map"]:
            return _json_error(400, "assignment_node_id is required for an assignment map")
        if item_id not in blueprint["library_items"]:
            blueprint["library_items"].append(item_id)
        return web.json_response({"library_items": blueprint["library_items"]})
