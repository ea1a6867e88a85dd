"""What every MDM emulator shares: a real HTTP server, bearer tokens with expiry, privileges,
a request log, and injectable faults (429 + Retry-After, 5xx storms, slow answers).

Vendor emulators (jamf.py, intune.py, iru.py) add their routes with ``route(method, template,
privilege, handler)``; a request with no valid token gets 401, one whose token lacks the route's
privilege gets 403, an unknown path 404, exactly as the vendors answer.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Fault:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering (a client timeout shorter than this = timeout)
    body: str = ""


@dataclass
class Logged:
    method: str
    path: str
    query: str
    status: int
    authorization: str | None
    body: bytes


@dataclass
class IssuedToken:
    privileges: frozenset[str]
    expires_at: float
    credential: str  # which client/secret it was issued to


class Emulator:
    """Base: subclasses register routes in ``__init__`` and may add a token endpoint."""

    def __init__(self, prefix: str = "") -> None:
        """``prefix``: the API is served under a path, as behind a reverse proxy
        (``https://proxy.corp/graph``); ``url`` includes it."""
        self.prefix = prefix.rstrip("/")
        self.app = web.Application(middlewares=[self._middleware], client_max_size=50 * 1024**2)
        self.log: list[Logged] = []
        self.faults: list[tuple[Callable[[web.Request], bool], Fault]] = []
        self.tokens: dict[str, IssuedToken] = {}
        self._routes: list[tuple[str, str, str | None]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.clock: Callable[[], float] = time.monotonic

    # --- set-up -------------------------------------------------------------------------

    def route(self, method: str, template: str, privilege: str | None, handler: Handler) -> None:
        """``privilege=None``: no bearer needed (token endpoints)."""
        self.app.router.add_route(method, self.prefix + template, handler)
        self._routes.append((method.upper(), self.prefix + template, privilege))

    def issue(self, privileges: set[str] | frozenset[str], lifetime: float, credential: str) -> str:
        token = secrets.token_urlsafe(24)
        self.tokens[token] = IssuedToken(frozenset(privileges), self.clock() + lifetime, credential)
        return token

    def inject(
        self,
        fault: Fault,
        times: int = 1,
        when: Callable[[web.Request], bool] = lambda request: True,
    ) -> None:
        """The next ``times`` matching requests get ``fault`` instead of an answer."""
        self.faults.extend([(when, fault)] * times)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.prefix}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Emulator:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # --- what tests check ---------------------------------------------------------------

    def calls(self, method: str | None = None, path_prefix: str = "") -> list[Logged]:
        return [
            entry
            for entry in self.log
            if (method is None or entry.method == method) and entry.path.startswith(path_prefix)
        ]

    # --- enforcement --------------------------------------------------------------------

    def _privilege_for(self, request: web.Request) -> tuple[bool, str | None]:
        info = request.match_info.route.resource
        canonical = info.canonical if info is not None else None
        for method, template, privilege in self._routes:
            if method == request.method and template == canonical:
                return True, privilege
        return False, None

    def authorize(self, request: web.Request, privilege: str) -> web.Response | None:
        """401 without a valid unexpired token, 403 without the privilege, else None."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        issued = self.tokens.get(token) if scheme == "Bearer" else None
        if issued is None or issued.expires_at <= self.clock():
            return web.json_response({"error": "unauthorized"}, status=401)
        if privilege not in issued.privileges:
            return web.json_response({"error": f"forbidden: needs {privilege}"}, status=403)
        return None

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        body = await request.read()
        response = await self._answer(request, handler)
        self.log.append(
            Logged(
                request.method,
                request.path,
                request.query_string,
                response.status,
                request.headers.get("Authorization"),
                body,
            )
        )
        return response

    async def _answer(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        for index, (when, fault) in enumerate(self.faults):
            if when(request):
                del self.faults[index]
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                return web.Response(status=fault.status, headers=fault.headers, text=fault.body)
        known, privilege = self._privilege_for(request)
        if not known:
            return web.json_response({"error": "not found"}, status=404)
        if privilege is not None:
            refused = self.authorize(request, privilege)
            if refused is not None:
                return refused
        try:
            return await handler(request)
        except web.HTTPException as exc:
            return web.Response(status=exc.status, text=exc.text or "")
