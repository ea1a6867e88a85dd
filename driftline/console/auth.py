"""Who may see the console: the admin token, one-time sign-in links, sessions (pure, in memory).

- ``DATA/admin.token`` (0600) is the administrator's credential: `driftline run` creates it, the
  CLI sends it as ``Authorization: Bearer …`` to the admin port's ``/api/``.
- A sign-in link carries a random one-time token, valid for five minutes, kept only as its
  SHA-256 here, scoped to some tenants (or all, for an administrator). Redeeming it forgets it.
- A session is a random id in an HttpOnly, SameSite=Strict cookie, also kept only as a hash,
  with its own CSRF token for the forms that change anything; it expires after eight hours.

Nothing here survives a restart, on purpose: a restart signs everyone out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

LINK_TTL_S: Final = 300.0
SESSION_TTL_S: Final = 8 * 3600.0
MAX_PENDING_LINKS: Final = 1000
MAX_SESSIONS: Final = 10_000


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True, slots=True)
class Scope:
    """The tenants a person may see; ``tenants=None`` is an administrator (all tenants)."""

    tenants: tuple[str, ...] | None

    @property
    def admin(self) -> bool:
        return self.tenants is None

    def narrowed(self, tenant: str | None) -> tuple[str, ...] | None:
        """The tenants a page shows: one picked from the scope, or all of the scope.
        A tenant outside the scope is refused, never silently widened or emptied."""
        if not tenant:
            return self.tenants
        if self.tenants is not None and tenant not in self.tenants:
            raise PermissionError(f"tenant {tenant!r} is not yours to see")
        return (tenant,)

    def label(self) -> str:
        return "all tenants (administrator)" if self.tenants is None else ", ".join(self.tenants)


@dataclass(slots=True)
class _Pending:
    scope: Scope
    expires: float


class SignInLinks:
    """One-time tokens, kept as hashes, each redeemable once within its lifetime."""

    def __init__(self, ttl: float = LINK_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._pending: dict[bytes, _Pending] = {}

    def issue(self, scope: Scope) -> tuple[str, float]:
        """A new token and its lifetime in seconds."""
        now = self.clock()
        self._pending = {k: p for k, p in self._pending.items() if p.expires > now}
        if len(self._pending) >= MAX_PENDING_LINKS:
            raise ValueError("too many unused sign-in links; wait for them to expire")
        token = secrets.token_urlsafe(32)
        self._pending[_digest(token)] = _Pending(scope, now + self.ttl)
        return token, self.ttl

    def redeem(self, token: str) -> Scope | None:
        """The link's scope, once; None for an unknown, used or expired token."""
        pending = self._pending.pop(_digest(token), None)
        if pending is None or pending.expires <= self.clock():
            return None
        return pending.scope


@dataclass(slots=True)
class Session:
    scope: Scope
    csrf: str
    expires: float
    created: float = field(default=0.0)

    def csrf_matches(self, presented: str | None) -> bool:
        return bool(presented) and hmac.compare_digest(
            (presented or "").encode(), self.csrf.encode()
        )


class Sessions:
    """Signed-in people, by the hash of their cookie's random id."""

    def __init__(self, ttl: float = SESSION_TTL_S, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self.clock = clock
        self._sessions: dict[bytes, Session] = {}

    def create(self, scope: Scope) -> tuple[str, Session]:
        now = self.clock()
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires > now}
        if len(self._sessions) >= MAX_SESSIONS:
            raise ValueError("too many sessions")
        session_id = secrets.token_urlsafe(32)
        session = Session(scope, secrets.token_urlsafe(32), now + self.ttl, now)
        self._sessions[_digest(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(_digest(session_id))
        if session is None:
            return None
        if session.expires <= self.clock():
            self._sessions.pop(_digest(session_id), None)
            return None
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(_digest(session_id), None)
