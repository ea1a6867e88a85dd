"""The admin API's credential: a random token in the data directory, and the middleware that
demands it.

`driftline run` creates ``DATA/admin.token`` (0600, in a 0700 directory) on start; the CLI reads
it and sends ``Authorization: Bearer <token>`` on every ``/api/`` request. No web page can read
the file, and no other OS user can either, so neither can drive the API. The middleware also
refuses what a browser would send on a page's behalf: a ``Host`` that is not this server's (DNS
rebinding), a foreign ``Origin``, and operations in a content type other than JSON (a form or
``text/plain`` post needs no CORS preflight). It covers ``/api/`` only; ``/healthz``,
``/readyz`` and ``/metrics`` stay open, and other apps on the port (``/console/``) bring their
own sessions.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import secrets
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from driftline.datadir import private_dir

if TYPE_CHECKING:  # aiohttp is imported when a server mounts the guard, not by the CLI
    from aiohttp import web
    from aiohttp.typedefs import Middleware

TOKEN_FILE = "admin.token"
API_PREFIX = "/api/"
_WILDCARD = ("", "0.0.0.0", "::")  # noqa: S104 - names of "every interface", compared only


def token_path(data: Path) -> Path:
    return data / TOKEN_FILE


def load_or_create(data: Path) -> str:
    """The admin token of a data directory, created (0600) when missing."""
    private_dir(data)
    path = token_path(data)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        token = read(data)
        if token is None:
            raise ValueError(f"{path} is empty: delete it to have a new token made") from None
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        return token
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as file:
        file.write(token + "\n")
    return token


def read(data: Path) -> str | None:
    """The admin token if there is one (PermissionError: it is another user's)."""
    try:
        return token_path(data).read_text().strip() or None
    except FileNotFoundError:
        return None


def verify(presented: str | None, expected: str) -> bool:
    """Constant-time comparison; a missing or non-ASCII token simply does not match."""
    if not presented or not expected:
        return False
    return hmac.compare_digest(presented.encode(), expected.encode())


def bearer(header: str | None) -> str | None:
    scheme, _, value = (header or "").strip().partition(" ")
    return value.strip() if scheme.lower() == "bearer" else None


def host_header(host: str, port: int) -> str:
    """``host:port`` as a client puts it in the Host header (IPv6 literals bracketed)."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]:{port}"
    except ValueError:
        pass
    return f"{host}:{port}"


def allowed_hosts(bound: str, port: int) -> frozenset[str]:
    """The Host values a request for this server carries: loopback names and the bound
    address, with the port (a wildcard bind is reached through loopback)."""
    names = ["127.0.0.1", "localhost", "::1"]
    if bound not in _WILDCARD:
        names.append(bound)
    return frozenset(host_header(name, port).lower() for name in names)


def client_address(bound: str) -> str:
    """The address the CLI on this machine calls a server bound to ``bound`` on."""
    return "127.0.0.1" if bound in _WILDCARD else bound


def same_machine(peer: str | None, local: str | None) -> bool:
    """Whether a connection comes from this machine: a loopback peer, or a peer whose address
    is the one it reached (a connection from this machine to its own address has that address
    as its source; from elsewhere it cannot, the handshake would never complete)."""
    try:
        address = ipaddress.ip_address(peer or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return True
    try:
        own = ipaddress.ip_address(local or "")
    except ValueError:
        return False
    if isinstance(own, ipaddress.IPv6Address) and own.ipv4_mapped is not None:
        own = own.ipv4_mapped
    return address == own


def local_address(request: Any) -> str | None:
    """The address an aiohttp request reached (the other half of ``same_machine``)."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    return str(sockname[0]) if sockname else None


def refusal(
    *,
    path: str,
    method: str,
    host: str | None,
    origin: str | None,
    authorization: str | None,
    content_type: str,
    peer: str | None,
    local: str | None,
    expected_token: str,
    hosts: frozenset[str],
) -> tuple[int, str] | None:
    """Why a request to the admin API is refused (status, message), or None to let it in.

    Pure, so each rule is tested on its own; the middleware only gathers the inputs.
    """
    if not (path.startswith(API_PREFIX) or path == API_PREFIX.rstrip("/")):
        return None
    if (host or "").lower() not in hosts:
        return 403, "the admin API answers requests addressed to it (Host) only"
    if origin is not None and origin.lower() not in {f"http://{h}" for h in hosts}:
        return 403, "the admin API does not answer web pages (foreign Origin)"
    if not same_machine(peer, local):
        return 403, "the admin API answers callers on this machine only"
    if not verify(bearer(authorization), expected_token):
        return 401, "the admin API needs the admin token (Authorization: Bearer, DATA/admin.token)"
    if method not in ("GET", "HEAD") and content_type != "application/json":
        return 415, "operations take Content-Type: application/json"
    return None


Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


def guard(expected_token: str, allowed_hosts: Iterable[str]) -> Middleware:
    """aiohttp middleware enforcing ``refusal`` on ``/api/`` (other paths pass untouched).

    ``allowed_hosts`` are the Host values to accept, ``host:port`` (the function
    ``allowed_hosts`` makes them for a bound address and port).
    """
    from aiohttp import web

    allowed = frozenset(h.lower() for h in allowed_hosts)

    @web.middleware
    async def admin_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = refusal(
            path=request.path,
            method=request.method,
            host=request.headers.get("Host"),
            origin=request.headers.get("Origin"),
            authorization=request.headers.get("Authorization"),
            content_type=request.content_type,
            peer=request.remote,
            local=local_address(request),
            expected_token=expected_token,
            hosts=allowed,
        )
        if refused is not None:
            status, message = refused
            return web.json_response({"error": message}, status=status)
        return await handler(request)

    return admin_guard
