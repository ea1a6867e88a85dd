"""The admin API's rules, one at a time (pure), and the token file's life (real files).

The attacks against a real `driftline run` are in tests/test_admin_api.py.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from driftline import admin_auth
from tests.support.processes import free_port

TOKEN = "s3cret-admin-token"
HOSTS = admin_auth.allowed_hosts("127.0.0.1", 8888)


def refusal(**overrides: Any) -> tuple[int, str] | None:
    request: dict[str, Any] = {
        "path": "/api/drift",
        "method": "GET",
        "host": "127.0.0.1:8888",
        "origin": None,
        "authorization": f"Bearer {TOKEN}",
        "content_type": "application/octet-stream",
        "peer": "127.0.0.1",
        "local": "127.0.0.1",
        "expected_token": TOKEN,
        "hosts": HOSTS,
    }
    return admin_auth.refusal(**{**request, **overrides})


def status(**overrides: Any) -> int | None:
    refused = refusal(**overrides)
    return None if refused is None else refused[0]


def test_the_cli_request_passes() -> None:
    assert refusal() is None
    assert refusal(method="POST", path="/api/operations/x", content_type="application/json") is None
    assert refusal(host="localhost:8888") is None and refusal(host="[::1]:8888") is None


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"authorization": None}, 401),
        ({"authorization": "Bearer "}, 401),
        ({"authorization": "Bearer s3cret-admin-tokeN"}, 401),
        ({"authorization": f"Basic {TOKEN}"}, 401),
        ({"authorization": "Bearer ünïcode"}, 401),
        ({"host": "attacker.example:8888"}, 403),  # DNS rebinding
        ({"host": "127.0.0.1:8889"}, 403),
        ({"host": "127.0.0.1"}, 403),
        ({"host": None}, 403),
        ({"origin": "http://attacker.example"}, 403),
        ({"origin": "null"}, 403),  # sandboxed frames, file:// pages
        ({"origin": "https://127.0.0.1:8888"}, 403),
        ({"peer": "192.0.2.7", "local": "192.0.2.1"}, 403),  # another machine
        ({"method": "POST", "path": "/api/operations/x", "content_type": "text/plain"}, 415),
        ({"method": "POST", "content_type": "application/x-www-form-urlencoded"}, 415),
        ({"method": "POST", "content_type": "multipart/form-data"}, 415),
        ({"path": "/api", "authorization": None}, 401),
    ],
)
def test_each_rule_refuses(overrides: dict[str, Any], expected: int) -> None:
    assert status(**overrides) == expected


def test_open_paths_and_other_apps_are_left_alone() -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/console/", "/console/api/x", "/apis"):
        assert refusal(path=path, authorization=None, host="evil:1", origin="http://e") is None


def test_a_page_on_this_server_may_call_it() -> None:
    assert refusal(origin="http://127.0.0.1:8888") is None


@pytest.mark.parametrize(
    ("peer", "local", "same"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.8.0.1", "192.0.2.1", True),
        ("::1", "::1", True),
        ("::ffff:127.0.0.1", "::ffff:127.0.0.1", True),
        ("192.0.2.1", "192.0.2.1", True),  # this machine calling its own address
        ("::ffff:192.0.2.1", "192.0.2.1", True),
        ("192.0.2.7", "192.0.2.1", False),
        ("fd00::2", "fd00::1", False),
        ("", "127.0.0.1", False),
        (None, None, False),
    ],
)
def test_same_machine(peer: str | None, local: str | None, same: bool) -> None:
    assert admin_auth.same_machine(peer, local) is same


def test_allowed_hosts_follow_the_bound_address() -> None:
    assert "192.0.2.1:9000" in admin_auth.allowed_hosts("192.0.2.1", 9000)
    assert "[fd00::1]:9000" in admin_auth.allowed_hosts("fd00::1", 9000)
    wildcard = admin_auth.allowed_hosts("0.0.0.0", 9000)
    assert "0.0.0.0:9000" not in wildcard and "127.0.0.1:9000" in wildcard
    assert admin_auth.client_address("0.0.0.0") == "127.0.0.1"


def test_the_token_is_made_once_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    token = admin_auth.load_or_create(data)
    assert len(token) >= 43 and admin_auth.load_or_create(data) == token
    assert stat.S_IMODE((data / "admin.token").stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    (data / "admin.token").chmod(0o644)
    data.chmod(0o755)
    assert admin_auth.load_or_create(data) == token  # and loose modes are tightened
    assert stat.S_IMODE((data / "admin.token").stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert admin_auth.verify(token, token) and not admin_auth.verify(None, token)
    assert not admin_auth.verify(token[:-1], token) and not admin_auth.verify("", "")


async def test_the_guard_mounts_on_any_aiohttp_app() -> None:
    """As a console would mount it: its own /console/ routes untouched, /api/ guarded."""

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ran")

    port = free_port()
    app = web.Application(
        middlewares=[admin_auth.guard(TOKEN, admin_auth.allowed_hosts("127.0.0.1", port))]
    )
    app.router.add_post("/api/run", ok)
    app.router.add_get("/console/", ok)
    async with TestClient(TestServer(app, host="127.0.0.1", port=port)) as client:
        assert (await client.get("/console/")).status == 200
        forged = await client.post("/api/run", data="x", headers={"Content-Type": "text/plain"})
        assert forged.status == 401 and "ran" not in await forged.text()
        good = await client.post("/api/run", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert good.status == 200 and await good.text() == "ran"
