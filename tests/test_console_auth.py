"""Sign-in links, sessions and scopes: the console's credentials, without I/O."""

from __future__ import annotations

import pytest

from driftline.console import auth
from driftline.console.pages import host_is_local, human_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_link_is_redeemed_once_and_only_in_time() -> None:
    clock = Clock()
    links = auth.SignInLinks(ttl=300, clock=clock)
    token, ttl = links.issue(auth.Scope(("acme",)))
    assert ttl == 300
    assert links.redeem(token) == auth.Scope(("acme",))
    assert links.redeem(token) is None  # single use
    late, _ = links.issue(auth.Scope(None))
    clock.now += 301
    assert links.redeem(late) is None  # expired
    assert links.redeem("guessed") is None


def test_links_are_kept_as_hashes_only() -> None:
    links = auth.SignInLinks()
    token, _ = links.issue(auth.Scope(None))
    assert token.encode() not in repr(links._pending).encode()
    assert all(len(key) == 32 for key in links._pending)


def test_sessions_expire_and_end() -> None:
    clock = Clock()
    sessions = auth.Sessions(ttl=60, clock=clock)
    sid, session = sessions.create(auth.Scope(("acme",)))
    assert sessions.get(sid) is session
    assert sessions.get(sid + "x") is None and sessions.get(None) is None
    clock.now += 61
    assert sessions.get(sid) is None
    sid, _ = sessions.create(auth.Scope(None))
    sessions.end(sid)
    assert sessions.get(sid) is None


def test_csrf_token_is_the_sessions_own() -> None:
    _, one = auth.Sessions().create(auth.Scope(None))
    _, two = auth.Sessions().create(auth.Scope(None))
    assert one.csrf_matches(one.csrf)
    assert not one.csrf_matches(two.csrf)
    assert not one.csrf_matches("") and not one.csrf_matches(None)


def test_a_viewer_cannot_widen_the_scope() -> None:
    viewer = auth.Scope(("acme",))
    assert viewer.narrowed(None) == ("acme",)
    assert viewer.narrowed("acme") == ("acme",)
    with pytest.raises(PermissionError):
        viewer.narrowed("globex")
    assert auth.Scope(None).narrowed("globex") == ("globex",)
    assert auth.Scope(None).narrowed(None) is None


def test_only_local_host_names() -> None:
    assert (
        host_is_local("127.0.0.1:8888")
        and host_is_local("localhost:1")
        and host_is_local("[::1]:80")
    )
    assert not host_is_local("evil.example:8888") and not host_is_local("127.0.0.1.nip.io:8888")
    assert not host_is_local(None)


def test_durations_read_as_people_say_them() -> None:
    assert [human_duration(s) for s in (None, 12, 600, 7200, 86400 * 3)] == [
        "-", "12 s", "10 min", "2.0 h", "3.0 d",
    ]  # fmt: skip


def test_chart_labels_from_telemetry_are_escaped() -> None:
    from datetime import UTC, datetime

    from driftline.console import svg

    hostile = '<script>alert(1)</script>"&'
    chart = str(svg.bar_chart([(hostile, 3), ("web", 1)], f"teams {hostile}"))
    assert "<script>" not in chart and "&lt;script&gt;" in chart
    line = str(svg.line_chart([(datetime(2026, 1, 1, tzinfo=UTC), 0)], hostile))
    assert "<script>" not in line
    assert 'data-last="0"' in line
