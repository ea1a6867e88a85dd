"""Jamf Pro as documented (reference notes, section 1); what no source states is ASSUMED.

- ``POST /api/oauth/token``: form-encoded client credentials; a wrong, unknown or revoked client
  is 401 ``invalid_client``. Revoking a client also kills the tokens it was issued.
- Privileges as Jamf spells them. The version endpoint needs any valid token.
- ``computers-inventory``: v3 always, v4 only from 11.30 (404 before). ``section`` repeated or
  comma-joined (default GENERAL); sections not asked for are ``null`` (ASSUMED, as observed in
  public scripts). ``page`` from 0, ``page-size`` at most 2000 (else 400), ``sort`` by ``id`` or
  ``general.name``. RSQL ``filter``: ``==``/``!=`` joined by ``;`` (and) and ``,`` (or), values
  quoted with backslash escapes; ``==`` is case-sensitive and ``*`` is a wildcard (both
  ASSUMED: the client must not rely on either). Anything else is 400.
- ``POST /api/v2/mdm/blank-push``: unknown ids come back in a list whose key is not documented
  (``blank_push_error_key``, ASSUMED ``errorUuids``).
- Classic ``osxconfigurationprofiles/id/{id}``: XML; PUT changes only the elements sent, answers
  201 with the id (ASSUMED), 409 on malformed XML or an invalid plist, 404 for unknown ids.
"""

from __future__ import annotations

import hmac
import json
import plistlib
import re
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any
from xml.parsers.expat import ExpatError

from aiohttp import web
from packaging.version import Version

from tests.emulators.base import Emulator

READ_COMPUTERS = "Read Computers"
READ_PROFILES = "Read macOS Configuration Profiles"
UPDATE_PROFILES = "Update macOS Configuration Profiles"
MDM_COMMANDS = "View MDM command information in Jamf Pro API"
ALL_PRIVILEGES = frozenset({READ_COMPUTERS, READ_PROFILES, UPDATE_PROFILES, MDM_COMMANDS})
AUTHENTICATED = "(any valid token)"  # pseudo-privilege every token carries

SECTIONS = {"GENERAL", "HARDWARE", "CONFIGURATION_PROFILES"}
MAX_PAGE_SIZE = 2000
REDEPLOY = {"All", "Newly Assigned"}
NOT_FOUND = "The server has not found anything matching the request URI"

_COMPARISON = re.compile(r'\s*([A-Za-z][\w.]*)\s*(==|!=)\s*("(?:[^"\\]|\\.)*"|[^;,"\s()]+)\s*')


@dataclass
class ApiClient:
    secret: str
    privileges: frozenset[str]
    lifetime: float
    revoked: bool = False


@dataclass
class Computer:
    id: str
    serial: str | None
    management_id: str | None
    name: str
    profiles: list[str]
    report_date: str | None
    last_contact: str | None = None  # general.lastContactTime: the last check-in
    udid: str = field(default_factory=lambda: str(uuid.uuid4()).upper())


@dataclass
class Profile:
    name: str
    payload: bytes = b""
    redeploy: str = "Newly Assigned"
    updates: int = 0


FIELDS: dict[str, Callable[[Computer], str | None]] = {
    "id": lambda c: c.id,
    "general.name": lambda c: c.name,
    "general.managementId": lambda c: c.management_id,
    "hardware.serialNumber": lambda c: c.serial,
}

Clause = tuple[str, str, str]  # field, operator, value


def parse_filter(text: str) -> list[list[Clause]]:
    """RSQL without parentheses: OR (``,``) of ANDs (``;``). ValueError when unparseable."""
    groups: list[list[Clause]] = []
    current: list[Clause] = []
    position = 0
    while True:
        match = _COMPARISON.match(text, position)
        if match is None or match.group(1) not in FIELDS:
            raise ValueError(f"bad filter at {position}")
        name, operator, raw = match.groups()
        value = re.sub(r"\\(.)", r"\1", raw[1:-1]) if raw.startswith('"') else raw
        current.append((name, operator, value))
        position = match.end()
        if position == len(text):
            return [*groups, current]
        if text[position] == ",":
            groups.append(current)
            current = []
        elif text[position] != ";":
            raise ValueError(f"bad filter at {position}")
        position += 1


def _matches(computer: Computer, groups: list[list[Clause]]) -> bool:
    def holds(clause: Clause) -> bool:
        name, operator, value = clause
        pattern = "".join(
            ".*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", value)
        )
        equal = re.fullmatch(pattern, FIELDS[name](computer) or "", re.DOTALL) is not None
        return equal if operator == "==" else not equal

    return any(all(holds(clause) for clause in group) for group in groups)


def _sort_key(name: str, computer: Computer) -> tuple[int, str]:
    value = FIELDS[name](computer) or ""
    return (int(value), "") if name == "id" else (0, value)


def _error(status: int, message: str) -> web.Response:
    return web.json_response(
        {"httpStatus": status, "errors": [{"description": message}]}, status=status
    )


class JamfEmulator(Emulator):
    def __init__(self, version: str = "11.30.1-t1700000000", prefix: str = "") -> None:
        super().__init__(prefix)
        self.version = version
        self.clients: dict[str, ApiClient] = {}
        self.computers: list[Computer] = []
        self.profiles: dict[str, Profile] = {}
        self.blank_pushes: list[str] = []
        self.blank_push_error_key = "errorUuids"
        profile = "/JSSResource/osxconfigurationprofiles/id/{id}"
        self.route("POST", "/api/oauth/token", None, self._token)
        self.route("GET", "/api/v1/jamf-pro-version", AUTHENTICATED, self._version)
        self.route("GET", "/api/v3/computers-inventory", READ_COMPUTERS, self._inventory_v3)
        self.route("GET", "/api/v4/computers-inventory", READ_COMPUTERS, self._inventory_v4)
        self.route("POST", "/api/v2/mdm/blank-push", MDM_COMMANDS, self._blank_push)
        self.route("GET", profile, READ_PROFILES, self._get_profile)
        self.route("PUT", profile, UPDATE_PROFILES, self._put_profile)

    # --- set-up -------------------------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        secret: str,
        privileges: set[str] | frozenset[str],
        lifetime: float = 599,
    ) -> None:
        self.clients[client_id] = ApiClient(secret, frozenset(privileges), lifetime)

    def revoke_client(self, client_id: str) -> None:
        self.clients[client_id].revoked = True
        for token in [t for t, issued in self.tokens.items() if issued.credential == client_id]:
            del self.tokens[token]

    def add_computer(
        self,
        serial: str | None,
        management_id: str | None = None,
        *,
        managed: bool = True,
        name: str = "",
        profiles: list[str] | None = None,
        report_date: str | None = None,
        last_contact: str | None = None,
    ) -> Computer:
        """``management_id=None`` makes one up; ``managed=False``: the record has none."""
        computer = Computer(
            id=str(len(self.computers) + 1),
            serial=serial,
            management_id=(management_id or str(uuid.uuid4())) if managed else None,
            name=name or f"Mac {len(self.computers) + 1}",
            profiles=list(profiles or []),
            report_date=report_date,
            last_contact=last_contact,
        )
        self.computers.append(computer)
        return computer

    def add_profile(self, profile_id: str, name: str, payload: bytes = b"") -> Profile:
        self.profiles[profile_id] = Profile(name, payload)
        return self.profiles[profile_id]

    @property
    def has_v4(self) -> bool:
        return Version(self.version.split("-", 1)[0]) >= Version("11.30")

    # --- handlers -----------------------------------------------------------------------

    async def _token(self, request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        client_id = str(form.get("client_id", ""))
        client = self.clients.get(client_id)
        secret = str(form.get("client_secret", "")).encode()
        if (
            client is None
            or client.revoked
            or not hmac.compare_digest(client.secret.encode(), secret)
        ):
            return web.json_response({"error": "invalid_client"}, status=401)
        token = self.issue(client.privileges | {AUTHENTICATED}, client.lifetime, client_id)
        return web.json_response(
            {
                "access_token": token,
                "scope": "api-role:1",
                "token_type": "Bearer",
                "expires_in": int(client.lifetime),
            }
        )

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": self.version})

    async def _inventory_v3(self, request: web.Request) -> web.Response:
        return self._inventory(request)

    async def _inventory_v4(self, request: web.Request) -> web.Response:
        if not self.has_v4:
            return _error(404, "not found")
        return self._inventory(request)

    def _inventory(self, request: web.Request) -> web.Response:
        query = request.query
        sections = {
            s.strip() for v in query.getall("section", []) for s in v.split(",") if s.strip()
        }
        sections = sections or {"GENERAL"}
        if not sections <= SECTIONS:
            return _error(400, f"unsupported section: {sorted(sections - SECTIONS)}")
        try:
            page, size = int(query.get("page", "0")), int(query.get("page-size", "100"))
            groups = parse_filter(query["filter"]) if "filter" in query else [[]]
            order = [part.split(":") for part in query.get("sort", "id:asc").split(",")]
            if any(len(o) != 2 or o[0] not in FIELDS or o[1] not in ("asc", "desc") for o in order):
                raise ValueError("bad sort")
        except ValueError as exc:
            return _error(400, str(exc))
        if page < 0 or not 1 <= size <= MAX_PAGE_SIZE:
            return _error(400, f"page-size must be 1..{MAX_PAGE_SIZE}")
        matched = [c for c in self.computers if _matches(c, groups)]
        for name, direction in reversed(order):
            matched.sort(key=partial(_sort_key, name), reverse=direction == "desc")
        results = [self._render(c, sections) for c in matched[page * size : (page + 1) * size]]
        return web.json_response({"totalCount": len(matched), "results": results})

    def _render(self, c: Computer, sections: set[str]) -> dict[str, Any]:
        general = {
            "name": c.name,
            "managementId": c.management_id,
            "reportDate": c.report_date,
            "lastContactTime": c.last_contact,
            "platform": "Mac",
        }
        profiles = [
            {"id": str(i + 1), "profileIdentifier": p, "displayName": p, "removable": False}
            for i, p in enumerate(c.profiles)
        ]
        return {
            "id": c.id,
            "udid": c.udid,
            "general": general if "GENERAL" in sections else None,
            "hardware": {"serialNumber": c.serial} if "HARDWARE" in sections else None,
            "configurationProfiles": profiles if "CONFIGURATION_PROFILES" in sections else None,
        }

    async def _blank_push(self, request: web.Request) -> web.Response:
        if request.content_type != "application/json":
            return _error(415, "Content-Type must be application/json")
        try:
            body = json.loads(await request.read())
        except ValueError:
            return _error(400, "malformed JSON")
        ids = body.get("clientManagementIds") if isinstance(body, dict) else None
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            return _error(400, "clientManagementIds must be a non-empty list of ids")
        known = {c.management_id for c in self.computers if c.management_id}
        self.blank_pushes.extend(i for i in ids if i in known)
        return web.json_response({self.blank_push_error_key: [i for i in ids if i not in known]})

    async def _get_profile(self, request: web.Request) -> web.Response:
        profile = self.profiles.get(request.match_info["id"])
        if profile is None:
            return _classic(404, NOT_FOUND)
        root = ET.Element("os_x_configuration_profile")
        general = ET.SubElement(root, "general")
        ET.SubElement(general, "id").text = request.match_info["id"]
        ET.SubElement(general, "name").text = profile.name
        ET.SubElement(general, "redeploy_on_update").text = profile.redeploy
        ET.SubElement(general, "payloads").text = profile.payload.decode()
        return _classic(200, ET.tostring(root, encoding="unicode"))

    async def _put_profile(self, request: web.Request) -> web.Response:
        profile_id = request.match_info["id"]
        profile = self.profiles.get(profile_id)
        if profile is None:
            return _classic(404, NOT_FOUND)
        if request.content_type not in ("application/xml", "text/xml"):
            return _classic(415, "Unsupported Media Type")
        try:
            fields = _general(await request.read())
        except (ET.ParseError, ExpatError, ValueError) as exc:
            return _classic(409, f"<html><body><p>Error: {exc}</p></body></html>")
        profile.name = fields.get("name", profile.name)
        profile.redeploy = fields.get("redeploy_on_update", profile.redeploy)
        if "payloads" in fields:
            profile.payload = fields["payloads"].encode()
        profile.updates += 1
        return _classic(
            201, f"<os_x_configuration_profile><id>{profile_id}</id></os_x_configuration_profile>"
        )


def _general(body: bytes) -> dict[str, str]:
    """The ``<general>`` elements a Classic PUT sends, validated as Jamf does (else 409)."""
    root = ET.fromstring(body)
    if root.tag != "os_x_configuration_profile":
        raise ValueError(f"unexpected root element {root.tag}")
    general = root.find("general")
    fields = {child.tag: child.text or "" for child in (general if general is not None else [])}
    if not fields.get("name", "-").strip():
        raise ValueError("name is blank")
    if fields.get("redeploy_on_update", "All") not in REDEPLOY:
        raise ValueError("redeploy_on_update must be All or Newly Assigned")
    if "payloads" in fields:
        plistlib.loads(fields["payloads"].encode())  # Jamf refuses payloads that are no plist
    return fields


def _classic(status: int, text: str) -> web.Response:
    kind = "text/html" if text.startswith("<html") or status == 404 else "text/xml"
    return web.Response(status=status, text=text, content_type=kind)
