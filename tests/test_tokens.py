from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from ingest.tokens import (
    Authenticator,
    Denied,
    Granted,
    TokenState,
    TokenStore,
    hash_token,
    parse_bearer,
)
from schemas import AuthReason

DAY = timedelta(days=1)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(tmp_path: Path, clock: Clock) -> TokenStore:
    return TokenStore(tmp_path / "tokens.db", clock)


def auth(store: TokenStore, clock: Clock) -> Authenticator:
    return Authenticator(store.path, clock, refresh_every=0)


def test_only_a_hash_is_stored(store: TokenStore) -> None:
    _, token = store.create("acme")
    raw = store.path.read_bytes()
    assert token.encode() not in raw
    assert token.split("_", 2)[2].encode() not in raw
    assert hash_token(token) in raw


def test_valid_token_names_its_tenant(store: TokenStore, clock: Clock) -> None:
    token_id, token = store.create("acme")
    assert auth(store, clock).authenticate(f"Bearer {token}") == Granted("acme", token_id)
    assert auth(store, clock).authenticate(f"bearer   {token}  ") == Granted("acme", token_id)


def test_rotation_keeps_old_token_for_the_grace_then_retires_then_forgets(
    store: TokenStore, clock: Clock
) -> None:
    old_id, old = store.create("acme")
    new_id, new, rotation = store.rotate("acme", timedelta(minutes=10), timedelta(days=30))
    assert rotation.grace_ends == clock.now + 600
    a = auth(store, clock)
    assert a.authenticate(f"Bearer {old}") == Granted("acme", old_id)
    assert a.authenticate(f"Bearer {new}") == Granted("acme", new_id)
    clock.now += 601
    assert a.authenticate(f"Bearer {old}") == Denied(AuthReason.RETIRED, "acme", old_id)
    assert a.authenticate(f"Bearer {new}") == Granted("acme", new_id)
    clock.now += 30 * 86400
    assert a.authenticate(f"Bearer {old}") == Denied(AuthReason.UNKNOWN)
    assert store.rotations("acme") == [rotation]


def test_a_second_rotation_does_not_extend_an_earlier_grace(
    store: TokenStore, clock: Clock
) -> None:
    first_id, _ = store.create("acme")
    store.rotate("acme", timedelta(minutes=10), DAY)
    clock.now += 60
    store.rotate("acme", timedelta(hours=5), DAY)
    records = {r.token_id: r for r in store.records("acme")}
    assert records[first_id].expires_at == clock.now - 60 + 600


def test_revoked_token_is_refused_at_once(store: TokenStore, clock: Clock) -> None:
    token_id, token = store.create("acme")
    a = auth(store, clock)
    store.revoke(token_id, DAY)
    assert a.authenticate(f"Bearer {token}") == Denied(AuthReason.REVOKED, "acme", token_id)
    with pytest.raises(KeyError):
        store.revoke(token_id, DAY)


def test_tokens_of_other_tenants_are_untouched_by_rotation(store: TokenStore, clock: Clock) -> None:
    other_id, other = store.create("globex")
    store.create("acme")
    store.rotate("acme", timedelta(0), DAY)
    clock.now += 1
    assert auth(store, clock).authenticate(f"Bearer {other}") == Granted("globex", other_id)


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, AuthReason.MISSING),
        ("", AuthReason.MISSING),
        ("Bearer", AuthReason.MALFORMED),
        ("Token abc", AuthReason.MALFORMED),
        ("Bearer dlt_zzzzzzzz_" + "a" * 43, AuthReason.MALFORMED),
        ("Bearer " + "a" * 1000, AuthReason.MALFORMED),
    ],
)
def test_parse_bearer_reasons(header: str | None, reason: AuthReason) -> None:
    assert parse_bearer(header) is reason


def test_state_is_a_function_of_time(store: TokenStore, clock: Clock) -> None:
    store.create("acme")
    store.rotate("acme", timedelta(seconds=5), timedelta(seconds=10))
    old = store.records("acme")[0]
    assert old.state(clock.now) is TokenState.GRACE
    assert old.state(clock.now + 5) is TokenState.RETIRED
    assert old.state(clock.now + 15) is None


def test_two_authenticators_see_changes_made_by_another_process(
    store: TokenStore, clock: Clock
) -> None:
    a, b = auth(store, clock), auth(store, clock)
    _, token = store.create("acme")
    assert isinstance(a.authenticate(f"Bearer {token}"), Granted)
    assert isinstance(b.authenticate(f"Bearer {token}"), Granted)


def test_cli_prints_the_token_last_and_list_never_shows_it(tmp_path: Path) -> None:
    def driftline(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "driftline.cli", *args, "--data", str(tmp_path)],
            capture_output=True,
            text=True,
            check=True,
        )

    created = driftline("tokens", "create", "--tenant", "acme")
    token = created.stdout.strip().splitlines()[-1]
    assert parse_bearer(f"Bearer {token}") == token
    rotated = driftline("tokens", "rotate", "--tenant", "acme", "--grace", "10m")
    new_token = rotated.stdout.strip().splitlines()[-1]
    listing = driftline("tokens", "list").stdout
    assert token not in listing and new_token not in listing
    assert "grace" in listing and "active" in listing
    token_id = token.split("_")[1]
    assert "revoked" in driftline("tokens", "revoke", token_id).stdout
    assert "revoked" in driftline("tokens", "list", "--tenant", "acme").stdout
