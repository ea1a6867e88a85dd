"""The one edge every MDM call goes through: allowlist, credentials, retries, rate limits.

Vendor modules (``jamf``, ``intune``, ``iru``) only describe their API: the routes they may call,
how they authenticate, their limits, and how their JSON maps to ``Device``/``ComplianceRecord``.
Everything that must behave the same for all three lives here, written once:

- Least privilege: a request whose (method, path) is not in the integration's allowlist raises
  ``NotAllowed`` before anything leaves the process.
- Credentials: the current one first; on 401, when a previous one is still inside its grace
  window, the previous one is tried and ``Session.used_previous`` says so for the audit.
- Throttling: 429 waits for Retry-After (seconds or HTTP date), 5xx and timeouts back off with
  full jitter, both bounded; concurrency and request rates are capped per vendor and tenant.
- Secrets are ``SecretStr``: they never reach reprs, logs, exceptions or audit rows. Errors name
  the method and path only.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, SecretStr

from schemas.messages import aware
from schemas.remediation import ComplianceRecord, Device, Vendor

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]


# --- errors -------------------------------------------------------------------------------


class MdmError(Exception):
    """An MDM call that did not succeed. Messages carry method, path and status, never secrets."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        request: str = "",
        detail: str = "",
        credential: str = "",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.request = request
        self.detail = detail  # the start of the vendor's error body, e.g. "Command already running"
        self.credential = credential  # which one got this answer: "current" | "previous"


class NotAllowed(MdmError):
    """Outside the least-privilege allowlist: refused before any request was made."""


class AuthFailed(MdmError):
    """401 (or a refused token request) with every usable credential."""


class Forbidden(MdmError):
    """403: the credential lacks the privilege (the customer granted less than the allowlist)."""


class Throttled(MdmError):
    """Still 429 after the bounded retries, or Retry-After longer than we are willing to wait."""

    def __init__(self, message: str, *, retry_after: float | None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Unavailable(MdmError):
    """5xx, timeouts or connection errors after the bounded retries."""


class Rejected(MdmError):
    """Any other 4xx: the request itself is wrong (unknown device, invalid payload)."""


class PartialFailure(MdmError):
    """A change of several steps stopped part-way: ``done`` succeeded (method + path -> status),
    then ``error`` failed. The MDM is in between: say so, never "failed" nor "pushed"."""

    def __init__(self, done: list[str], error: MdmError) -> None:
        super().__init__(
            f"{'; '.join(done)} succeeded, then {type(error).__name__}: {error}",
            status=error.status,
            request=error.request,
        )
        self.done = done
        self.error = error


# --- allowlist ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """One permitted (method, path template) pair; ``{name}`` matches one path segment."""

    method: str
    template: str

    def matches(self, method: str, path: str) -> bool:
        return method.upper() == self.method.upper() and bool(self._pattern.fullmatch(path))

    @property
    def _pattern(self) -> re.Pattern[str]:
        return _compile(self.template)

    def __str__(self) -> str:
        return f"{self.method.upper()} {self.template}"


_patterns: dict[str, re.Pattern[str]] = {}


def _compile(template: str) -> re.Pattern[str]:
    pattern = _patterns.get(template)
    if pattern is None:
        parts = re.split(r"(\{[^/{}]+\})", template)
        # A parameter is one plain segment: not "." or ".." (clients and servers resolve those,
        # turning an allowed path into another), and no "%" (an encoded "/" or dot segment).
        segment = r"(?!\.\.?(?:/|$))[^/%?#]+"
        regex = "".join(segment if p.startswith("{") else re.escape(p) for p in parts)
        pattern = _patterns[template] = re.compile(regex)
    return pattern


@dataclass(frozen=True)
class Allowlist:
    routes: tuple[Route, ...]

    def check(self, method: str, path: str) -> Route:
        for route in self.routes:
            if route.matches(method, path):
                return route
        raise NotAllowed(
            f"{method.upper()} {path} is not in the integration's allowlist",
            request=f"{method.upper()} {path}",
        )


# --- credentials --------------------------------------------------------------------------


class Credential(BaseModel):
    """What the customer issued: OAuth client id + secret (Jamf, Intune) or a bearer token (Iru)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    client_id: str | None = None
    secret: SecretStr
    created_at: datetime


class Integration(BaseModel):
    """One tenant's connection to one MDM: where, with what, allowed to do what.

    ``previous`` stays usable until ``grace_until`` so a rotation never fails a push mid-way.
    ``force_sync`` is the customer's opt-in to the force-sync privilege; without it the
    force-sync route is not in the allowlist at all. ``profile_id`` names the vendor object the
    Claude Code profile lives in (Jamf profile id, Intune deviceConfiguration id, Iru library
    item id); ``profile_identifier`` is the payload identifier devices report it under: by
    default ``com.driftline.<tenant>.claudecode``, or a customer's own profile's identifier when
    Driftline adopts a profile they already deploy (``mdm connect --profile-identifier``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    tenant_id: str
    vendor: Vendor
    base_url: str
    token_url: str | None = None  # Intune: https://login.microsoftonline.com/<entra-tenant>/...
    current: Credential | None = None  # None: push-only, nothing is called
    previous: Credential | None = None
    grace_until: datetime | None = None
    force_sync: bool = False
    profile_id: str | None = None
    profile_identifier: str | None = None
    blueprint_id: str | None = None  # Iru: where the custom profile is assigned

    @property
    def payload_identifier(self) -> str:
        """The profile's PayloadIdentifier: the adopted one, else Driftline's default."""
        return self.profile_identifier or f"com.driftline.{self.tenant_id}.claudecode"

    def credentials(self, now: datetime) -> list[tuple[str, Credential]]:
        """The credentials to try, in order, each named for the audit ("current"/"previous")."""
        usable = [("current", self.current)] if self.current else []
        if self.previous and self.grace_until and now < self.grace_until:
            usable.append(("previous", self.previous))
        return [(name, cred) for name, cred in usable if cred is not None]


# --- authentication -----------------------------------------------------------------------


class Auth(Protocol):
    """Turns a credential into an Authorization header value."""

    async def header(self, http: httpx.AsyncClient, credential: Credential) -> str: ...

    def forget(self, credential: Credential) -> None:
        """Drop any cached token for the credential (after a 401)."""


@dataclass
class StaticBearer:
    """Iru: the credential's secret is the bearer token itself."""

    async def header(self, http: httpx.AsyncClient, credential: Credential) -> str:
        return f"Bearer {credential.secret.get_secret_value()}"

    def forget(self, credential: Credential) -> None:
        return None


@dataclass
class ClientCredentials:
    """OAuth2 client-credentials grant (Jamf, Intune), cached until shortly before expiry.

    ``refresh_margin`` is a fraction of ``expires_in``: tokens are renewed early so a request
    never goes out with a token that expires in flight (Jamf's example lifetime is 599 s,
    Entra's 60-90 min at random, so only ``expires_in`` is trusted).
    """

    token_url: str
    scope: str | None = None
    refresh_margin: float = 0.1
    clock: Clock = time.monotonic
    _cache: dict[tuple[str | None, str], tuple[str, float]] = field(
        default_factory=dict, repr=False
    )
    _locks: dict[tuple[str | None, str], asyncio.Lock] = field(default_factory=dict, repr=False)

    def _key(self, credential: Credential) -> tuple[str | None, str]:
        return (credential.client_id, credential.created_at.isoformat())

    async def header(self, http: httpx.AsyncClient, credential: Credential) -> str:
        lock = self._locks.setdefault(self._key(credential), asyncio.Lock())
        async with lock:  # concurrent first calls share one token request
            return await self._header(http, credential)

    async def _header(self, http: httpx.AsyncClient, credential: Credential) -> str:
        cached = self._cache.get(self._key(credential))
        if cached and self.clock() < cached[1]:
            return f"Bearer {cached[0]}"
        form = {
            "grant_type": "client_credentials",
            "client_id": credential.client_id or "",
            "client_secret": credential.secret.get_secret_value(),
        }
        if self.scope:
            form["scope"] = self.scope
        request = f"POST {httpx.URL(self.token_url).path}"
        try:
            response = await http.post(self.token_url, data=form)
        except httpx.HTTPError as exc:
            raise Unavailable(f"{request}: {type(exc).__name__}", request=request) from None
        if response.status_code == 429:
            raise Throttled(
                f"{request} -> 429",
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                status=429,
                request=request,
            )
        if response.status_code >= 500:
            raise Unavailable(
                f"{request} -> {response.status_code}", status=response.status_code, request=request
            )
        if response.status_code != 200:
            raise AuthFailed(
                f"{request} -> {response.status_code}: token refused",
                status=response.status_code,
                request=request,
            )
        body = response.json()
        lifetime = float(body.get("expires_in", 0))
        token = str(body["access_token"])
        self._cache[self._key(credential)] = (
            token,
            self.clock() + lifetime * (1 - self.refresh_margin),
        )
        return f"Bearer {token}"

    def forget(self, credential: Credential) -> None:
        self._cache.pop(self._key(credential), None)


# --- limits -------------------------------------------------------------------------------


class RateLimit:
    """At most ``requests`` per ``per`` seconds; callers wait for their turn (FIFO)."""

    def __init__(
        self, requests: int, per: float, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.requests, self.per = requests, per
        self._clock, self._sleep = clock, sleep
        self._sent: list[float] = []
        self._locks: dict[int, asyncio.Lock] = {}  # per event loop: limiters outlive loops

    async def acquire(self) -> None:
        lock = self._locks.setdefault(id(asyncio.get_running_loop()), asyncio.Lock())
        async with lock:
            while True:
                now = self._clock()
                self._sent = [t for t in self._sent if t > now - self.per]
                if len(self._sent) < self.requests:
                    self._sent.append(now)
                    return
                await self._sleep(self._sent[0] + self.per - now)


@dataclass(frozen=True)
class Limits:
    """A vendor's published limits. ``write_rate`` applies to POST/PUT/PATCH/DELETE only."""

    concurrency: int = 5
    rate: tuple[int, float] | None = None  # (requests, seconds), any method
    write_rate: tuple[int, float] | None = None


_shared_limits: dict[tuple[Vendor, str, str], RateLimit] = {}


def shared_rate_limit(
    vendor: Vendor, tenant_id: str, kind: str, spec: tuple[int, float]
) -> RateLimit:
    """One limiter per vendor, tenant and kind in this process: the vendor counts per tenant."""
    key = (vendor, tenant_id, kind)
    limiter = _shared_limits.get(key)
    if limiter is None or (limiter.requests, limiter.per) != spec:
        limiter = _shared_limits[key] = RateLimit(*spec)
    return limiter


# --- retries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4  # total tries of one request
    backoff: float = 0.5  # first backoff ceiling; doubles per try, full jitter
    max_backoff: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After is returned to the caller as Throttled


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date (RFC 9110); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (aware(when) - (now or datetime.now(UTC))).total_seconds())


def vendor_time(value: object) -> datetime | None:
    """An ISO 8601 time from a vendor's JSON (``…Z`` included); absent or unreadable is None."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return aware(datetime.fromisoformat(value.replace("Z", "+00:00")))
    except ValueError:
        return None


# --- the session --------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """What the audit records of a call: method + path, status, and which credential worked."""

    request: str
    status: int
    credential: str  # "current" | "previous"


class Session:
    """An integration's HTTP session. Use one per integration, ``async with`` or ``aclose()``."""

    def __init__(
        self,
        integration: Integration,
        allowlist: Allowlist,
        auth: Auth,
        limits: Limits,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Sleep = asyncio.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.integration = integration
        self.allowlist = allowlist
        self.auth = auth
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._now = now
        self._http = httpx.AsyncClient(
            base_url=integration.base_url,
            timeout=timeout,
            transport=transport,
            limits=httpx.Limits(max_connections=limits.concurrency),
            follow_redirects=False,
        )
        self._concurrency = asyncio.Semaphore(limits.concurrency)
        tenant, vendor = integration.tenant_id, integration.vendor
        self._rate = shared_rate_limit(vendor, tenant, "any", limits.rate) if limits.rate else None
        self._write_rate = (
            shared_rate_limit(vendor, tenant, "write", limits.write_rate)
            if limits.write_rate
            else None
        )
        self.used_previous = False

    def __repr__(self) -> str:
        i = self.integration
        return f"Session({i.vendor.value} tenant={i.tenant_id!r} base_url={i.base_url!r})"

    async def __aenter__(self) -> Session:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        """For token requests by an ``Auth`` only; API calls go through ``request``."""
        return self._http

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | Sequence[tuple[str, Any]] | None = None,
        json: Any = None,
        content: bytes | str | None = None,
        data: Mapping[str, Any] | None = None,
        files: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        absolute_url: str | None = None,
    ) -> tuple[httpx.Response, Sent]:
        """One API call with every rule applied; returns the 2xx/3xx response and its audit.

        ``absolute_url`` is for paging links the server hands out (Graph's ``@odata.nextLink``):
        it must stay on the integration's host and under its base path (a base URL behind a
        reverse proxy, ``https://proxy.corp/graph``), and its path relative to the base is
        checked like any other.
        """
        method = method.upper()
        if absolute_url is not None:
            path = self._relative(method, absolute_url)
        self.allowlist.check(method, path)
        audit = f"{method} {path}"
        credentials = self.integration.credentials(self._now())
        if not credentials:
            raise AuthFailed(
                f"{audit}: no usable credential (push-only integration)", request=audit
            )
        last: MdmError | None = None
        for name, credential in credentials:
            try:
                response = await self._send(
                    method,
                    absolute_url or path,
                    credential,
                    name,
                    audit,
                    params=params,
                    json=json,
                    content=content,
                    data=data,
                    files=files,
                    headers=headers,
                )
            except AuthFailed as exc:
                self.auth.forget(credential)
                last = exc
                continue
            self.used_previous = name == "previous"
            if self.used_previous:
                log.warning(
                    "%s %s: current credential refused, previous one (in grace) used for %s",
                    self.integration.vendor.value,
                    self.integration.tenant_id,
                    audit,
                )
            return response, Sent(audit, response.status_code, name)
        assert last is not None
        raise last

    def _relative(self, method: str, absolute_url: str) -> str:
        """The path of a server-given URL below the base URL, or NotAllowed."""
        url = httpx.URL(absolute_url)
        base = httpx.URL(self.integration.base_url)
        if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
            raise NotAllowed(f"{method} to another host refused", request=f"{method} {url.path}")
        prefix = base.path.rstrip("/")
        if not url.path.startswith(prefix + "/"):
            raise NotAllowed(
                f"{method} outside the integration's base path refused",
                request=f"{method} {url.path}",
            )
        return url.path[len(prefix) :]

    async def _send(
        self,
        method: str,
        url: str,
        credential: Credential,
        credential_name: str,
        audit: str,
        **kwargs: Any,
    ) -> httpx.Response:
        extra_headers = dict(kwargs.pop("headers", None) or {})
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            await self._take_rate(method)
            try:
                authorization = await self.auth.header(self._http, credential)
            except (Unavailable, Throttled) as error:  # the token endpoint: same retry rules
                if attempt >= self.retry.attempts:
                    raise
                wait = error.retry_after if isinstance(error, Throttled) else None
                await self._sleep(wait if wait is not None else self._backoff(attempt))
                continue
            headers = {**extra_headers, "Authorization": authorization}
            try:
                async with self._concurrency:
                    response = await self._http.request(method, url, headers=headers, **kwargs)
            except (httpx.TimeoutException, httpx.TransportError) as exc:
                if attempt >= self.retry.attempts:
                    raise Unavailable(f"{audit}: {type(exc).__name__}", request=audit) from None
                await self._sleep(self._backoff(attempt))
                continue
            status = response.status_code
            if status < 300:
                return response
            if status < 400:  # never followed: a redirect means a wrong base URL, not success
                raise Rejected(f"{audit} -> {status} (redirect)", status=status, request=audit)
            if status == 401:
                if not refreshed:  # an expired or revoked cached token: fetch a new one once
                    refreshed = True
                    self.auth.forget(credential)
                    continue
                raise AuthFailed(f"{audit} -> 401", status=401, request=audit)
            if status == 403:
                raise Forbidden(f"{audit} -> 403: privilege not granted", status=403, request=audit)
            if status == 429:
                wait = retry_after_seconds(response.headers.get("Retry-After"))
                if attempt >= self.retry.attempts or (wait or 0) > self.retry.max_retry_after:
                    raise Throttled(f"{audit} -> 429", retry_after=wait, status=429, request=audit)
                await self._sleep(wait if wait is not None else self._backoff(attempt))
                continue
            if status >= 500:
                if attempt >= self.retry.attempts:
                    raise Unavailable(f"{audit} -> {status}", status=status, request=audit)
                await self._sleep(self._backoff(attempt))
                continue
            await response.aread()
            raise Rejected(
                f"{audit} -> {status}",
                status=status,
                request=audit,
                detail=response.text[:200],
                credential=credential_name,
            )

    async def _take_rate(self, method: str) -> None:
        if self._rate is not None:
            await self._rate.acquire()
        if self._write_rate is not None and method in {"POST", "PUT", "PATCH", "DELETE"}:
            await self._write_rate.acquire()

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.retry.max_backoff, self.retry.backoff * 2 ** (attempt - 1))
        return random.uniform(0, ceiling)


# --- what the executor and the compliance import need from a vendor -----------------------


class MdmClient(Protocol):
    """One vendor behind one small interface. Implementations: actions.jamf/intune/iru."""

    integration: Integration
    session: Session

    async def devices_by_serial(self, serial: str) -> list[Device]:
        """Devices whose serial equals ``serial`` exactly (case-insensitive), checked in code."""

    async def inventory(self) -> list[Device]:
        """Every device the MDM holds for the tenant (paged through)."""

    async def compliance(self, imported_at: datetime) -> list[ComplianceRecord]:
        """The MDM's own view of the Claude Code profile: missing, failed, non-compliant, ok."""

    async def force_sync(self, device_id: str) -> Sent:
        """Ask the device to check in now (blank push / syncDevice)."""

    async def update_profile(self, name: str, mobileconfig: bytes) -> Sent:
        """Replace the Claude Code profile's payload so devices in scope reinstall it."""

    async def probe(self) -> Sent:
        """One small read of the inventory: does the credential work and can it read?"""

    async def aclose(self) -> None: ...
