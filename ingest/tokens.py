"""Tenant ingest tokens: issued once, stored only as SHA-256 hashes, checked in constant time.

The registry is one SQLite file, so any number of receiver processes on a host can read it
while `driftline tokens …` writes it; receivers notice changes within a second. A token's state
is a function of the clock (grace and memory windows are timestamps), so nothing has to run for
a rotated token to retire on time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path

from schemas import AuthReason, check_tenant_id
from schemas.identity import is_tenant_id

log = logging.getLogger(__name__)

TOKEN_PREFIX = "dlt"
# dlt_<8 hex token id>_<43 url-safe chars>: the id is not secret and names the token in lists,
# audit rows and AuthEvents; the rest is 256 bits of randomness.
_TOKEN_RE = re.compile(r"^dlt_([0-9a-f]{8})_([A-Za-z0-9_-]{43})$")
_MAX_HEADER = 512

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    token_id   TEXT PRIMARY KEY,
    tenant_id  TEXT NOT NULL,
    sha256     BLOB NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    expires_at REAL,            -- end of the grace window after a rotation
    forget_at  REAL,            -- after this, the token is just unknown
    revoked_at REAL
);
CREATE INDEX IF NOT EXISTS tokens_tenant ON tokens (tenant_id);
CREATE TABLE IF NOT EXISTS rotations (
    tenant_id    TEXT NOT NULL,
    rotated_at   REAL NOT NULL,
    grace_ends   REAL NOT NULL,
    new_token_id TEXT NOT NULL
);
"""


class TokenState(StrEnum):
    ACTIVE = "active"
    GRACE = "grace"  # rotated away, still accepted until the grace window ends
    RETIRED = "retired"
    REVOKED = "revoked"


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    tenant_id: str
    sha256: bytes
    created_at: float
    expires_at: float | None
    forget_at: float | None
    revoked_at: float | None

    def state(self, now: float) -> TokenState | None:
        """None once the token is forgotten: from then on it is indistinguishable from garbage."""
        if self.forget_at is not None and now >= self.forget_at:
            return None
        if self.revoked_at is not None and now >= self.revoked_at:
            return TokenState.REVOKED
        if self.expires_at is not None:
            return TokenState.GRACE if now < self.expires_at else TokenState.RETIRED
        return TokenState.ACTIVE


@dataclass(frozen=True, slots=True)
class Rotation:
    tenant_id: str
    rotated_at: float
    grace_ends: float
    new_token_id: str


@dataclass(frozen=True, slots=True)
class Granted:
    tenant_id: str
    token_id: str


@dataclass(frozen=True, slots=True)
class Denied:
    reason: AuthReason
    tenant_id: str | None = None
    token_id: str | None = None
    detail: str = ""  # more words for the answer (never the token)


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> tuple[str, str]:
    """(token_id, token). The token is shown once and never stored."""
    token_id = secrets.token_hex(4)
    return token_id, f"{TOKEN_PREFIX}_{token_id}_{secrets.token_urlsafe(32)}"


def parse_bearer(header: str | None) -> str | AuthReason:
    """The token from an Authorization value, or why there is none."""
    if header is None or not header.strip():
        return AuthReason.MISSING
    if len(header) > _MAX_HEADER:
        return AuthReason.MALFORMED
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not _TOKEN_RE.match(token):
        return AuthReason.MALFORMED
    return token


class TokenStore:
    """Read-write access to the registry file, for the `driftline tokens` commands."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with closing(sqlite3.connect(self.path, timeout=10, isolation_level=None)) as db:
            db.execute("PRAGMA busy_timeout = 10000")
            yield db

    def create(self, tenant_id: str) -> tuple[str, str]:
        """Issue a token for a tenant; returns (token_id, token)."""
        check_tenant_id(tenant_id)
        token_id, token = new_token()
        with self._connect() as db:
            db.execute(
                "INSERT INTO tokens (token_id, tenant_id, sha256, created_at) VALUES (?, ?, ?, ?)",
                (token_id, tenant_id, hash_token(token), self._clock()),
            )
        return token_id, token

    def rotate(
        self, tenant_id: str, grace: timedelta, remember: timedelta
    ) -> tuple[str, str, Rotation]:
        """Issue a new token; the tenant's current ones keep working until the grace ends."""
        check_tenant_id(tenant_id)
        now = self._clock()
        grace_ends = now + grace.total_seconds()
        token_id, token = new_token()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "UPDATE tokens SET expires_at = ?, forget_at = ? WHERE tenant_id = ? "
                "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?)",
                (grace_ends, grace_ends + remember.total_seconds(), tenant_id, grace_ends),
            )
            db.execute(
                "INSERT INTO tokens (token_id, tenant_id, sha256, created_at) VALUES (?, ?, ?, ?)",
                (token_id, tenant_id, hash_token(token), now),
            )
            db.execute(
                "INSERT INTO rotations VALUES (?, ?, ?, ?)", (tenant_id, now, grace_ends, token_id)
            )
            db.execute("COMMIT")
        return token_id, token, Rotation(tenant_id, now, grace_ends, token_id)

    def revoke(self, token_id: str, remember: timedelta) -> TokenRecord:
        now = self._clock()
        with self._connect() as db:
            cursor = db.execute(
                "UPDATE tokens SET revoked_at = ?, forget_at = ? WHERE token_id = ? "
                "AND revoked_at IS NULL",
                (now, now + remember.total_seconds(), token_id),
            )
            if cursor.rowcount == 0:
                raise KeyError(f"no active token with id {token_id!r}")
        return next(r for r in self.records() if r.token_id == token_id)

    def records(self, tenant_id: str | None = None) -> list[TokenRecord]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM tokens WHERE ?1 IS NULL OR tenant_id = ?1 ORDER BY created_at",
                (tenant_id,),
            )
            return [TokenRecord(*row) for row in rows]

    def rotations(self, tenant_id: str | None = None) -> list[Rotation]:
        with self._connect() as db:
            rows = db.execute(
                "SELECT * FROM rotations WHERE ?1 IS NULL OR tenant_id = ?1 ORDER BY rotated_at",
                (tenant_id,),
            )
            return [Rotation(*row) for row in rows]


def registered_tenants(path: Path) -> set[str]:
    """Tenants with a token in the registry, read-only (a missing file is created by no one)."""
    if not path.exists():
        return set()
    with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT DISTINCT tenant_id FROM tokens")}


class Authenticator:
    """The receivers' view of the registry: an in-memory hash index, refreshed on change."""

    def __init__(
        self,
        path: Path,
        clock: Callable[[], float] = time.time,
        refresh_every: float = 1.0,
    ) -> None:
        self._store = TokenStore(path, clock)
        self._clock = clock
        self._refresh_every = refresh_every
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._version = -1
        self._checked_at = float("-inf")
        self._by_hash: dict[bytes, TokenRecord] = {}
        self.refresh()

    def close(self) -> None:
        self._db.close()

    def refresh(self, every: float | None = None) -> None:
        """Reload when another connection has committed; cheap enough to call per request."""
        now = time.monotonic()
        if now - self._checked_at < (self._refresh_every if every is None else every):
            return
        self._checked_at = now
        # fetchall, not fetchone: an unfinished statement keeps a read transaction open,
        # and with it the old snapshot of the file.
        version = int(self._db.execute("PRAGMA data_version").fetchall()[0][0])
        if version == self._version:
            return
        self._version = version
        rows = self._db.execute("SELECT * FROM tokens").fetchall()
        records = [TokenRecord(*r) for r in rows]
        # A registry written before tenant ids were validated may name a tenant like "t/x",
        # whose endpoint ids could collide with another tenant's: such tokens authenticate
        # nobody (their requests are "unknown"), and the log says which ones.
        invalid = sorted({r.token_id for r in records if not is_tenant_id(r.tenant_id)})
        if invalid:
            log.error(
                "tokens %s name an invalid tenant id and are refused; issue new ones",
                ", ".join(invalid),
            )
        self._by_hash = {r.sha256: r for r in records if is_tenant_id(r.tenant_id)}

    def authenticate_all(self, authorizations: Sequence[str]) -> Granted | Denied:
        """Every Authorization value a request carried: more than one is refused, whatever
        they say, so no transport (or proxy in front) can pick a different one than another."""
        if len(authorizations) > 1:
            return Denied(AuthReason.MALFORMED, detail="more than one Authorization header")
        return self.authenticate(authorizations[0] if authorizations else None)

    def authenticate(self, authorization: str | None) -> Granted | Denied:
        token = parse_bearer(authorization)
        if isinstance(token, AuthReason):
            return Denied(token)
        self.refresh()
        digest = hash_token(token)
        record = self._by_hash.get(digest)
        if record is None:
            # A token issued a moment ago must work at once. Looking costs one PRAGMA (a few
            # microseconds); the table is reloaded only when the file really changed.
            self.refresh(every=0)
            record = self._by_hash.get(digest)
        # The dict lookup is keyed by a hash the caller cannot steer; the explicit
        # constant-time comparison keeps the final check free of early exits all the same.
        if record is None or not hmac.compare_digest(record.sha256, digest):
            return Denied(AuthReason.UNKNOWN)
        state = record.state(self._clock())
        if state in (TokenState.ACTIVE, TokenState.GRACE):
            return Granted(record.tenant_id, record.token_id)
        if state is None:
            return Denied(AuthReason.UNKNOWN)
        reason = AuthReason.REVOKED if state is TokenState.REVOKED else AuthReason.RETIRED
        return Denied(reason, record.tenant_id, record.token_id)


def format_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
