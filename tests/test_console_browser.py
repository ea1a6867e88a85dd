"""The console in a real browser (Debian's Chromium through Playwright) over a real `driftline run`.

The known fleet (tests/support/console_fleet.py) is seeded into the store, `driftline run`
serves it, `driftline console url` prints the sign-in links, and Chromium opens them as a
person would. Each page's screenshot is saved under .cache/screenshots/.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.browser import ARGS, SCREENSHOTS, ensure_chromium
from tests.support.embedded import Run

pytestmark = pytest.mark.slow

PAGES = {
    "fleet": "/console/",
    "endpoints": "/console/endpoints",
    "endpoint": "/console/endpoint?id=acme/A0",
    "remediation": "/console/remediation",
    "tokens": "/console/tokens",
    "policies": "/console/policies",
}
GLOBEX_MARKS = ("globex", "G0", "9.9.9", "g10b")  # anything of the other tenant


@pytest.fixture(scope="module")
def chromium() -> Path:
    import os

    try:
        return ensure_chromium()
    except Exception as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(error))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    data = tmp_path_factory.mktemp("console") / "data"
    data.mkdir()
    subprocess.run([sys.executable, "-m", "tests.support.console_fleet", str(data)], check=True)
    (data / "policies").mkdir()
    (data / "policies" / "acme.json").write_text(
        json.dumps(
            {
                "tenant": "acme",
                "version": 3,
                "tools": {"claude-code": {"minimum_version": "2.0.10"}},
            }
        )
    )
    running = Run(data)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def browser(chromium: Path) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=ARGS)
        yield browser
        browser.close()


def base(run: Run) -> str:
    return f"http://127.0.0.1:{run.ports['admin']}"


def sign_in_link(run: Run, tenant: str | None = None) -> str:
    args = ["console", "url", *(["--tenant", tenant] if tenant else [])]
    return run.cli(*args).strip()


def signed_in(browser: Any, run: Run, tenant: str | None = None) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    response = page.goto(sign_in_link(run, tenant))
    assert response.status == 200 and page.url == base(run) + "/console/"
    return page


def text(page: Any, testid: str) -> str:
    return str(page.get_by_test_id(testid).inner_text()).strip()


def column(page: Any, testid: str, index: int) -> list[str]:
    rows = page.locator(f"[data-testid={testid}] tr").all()[1:]
    return [row.locator("td").nth(index).inner_text().strip() for row in rows]


def test_a_viewer_sees_their_fleets_numbers_and_nothing_else(browser: Any, run: Run) -> None:
    page = signed_in(browser, run, "acme")
    assert (text(page, "endpoints"), text(page, "compliant"), text(page, "drifting")) == (
        "10",
        "60.0%",
        "4",
    )
    assert text(page, "mttr") == "2.0 h" and text(page, "mttresolve") == "24.0 h"
    assert dict(zip(column(page, "by-kind", 0), column(page, "by-kind", 1), strict=True)) == {
        "outdated_client": "4",
        "missing_policy": "1",
    }
    assert page.locator("[data-testid=series] svg text.value").text_content() == "5"
    assert text(page, "scope") == "acme"
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name, path in PAGES.items():
        response = page.goto(base(run) + path)
        assert response.status == 200, name
        content = page.content()
        for mark in GLOBEX_MARKS:
            assert mark not in content, (name, mark)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    # rotation progress: A8 is still on acme's retiring token, the nine others moved; globex's
    # G2, on its own retiring token, stays out (GLOBEX_MARKS above)
    page.goto(base(run) + "/console/tokens")
    assert (text(page, "still-count"), text(page, "moved-count")) == ("1", "9")
    assert column(page, "retiring", 0) == ["acme/A8"]
    last_seen = datetime.strptime(column(page, "retiring", 2)[0], "%Y-%m-%d %H:%M")
    ago = datetime.now(UTC).replace(tzinfo=None) - last_seen
    assert timedelta(minutes=59) < ago < timedelta(minutes=62)  # seeded an hour ago
    page.screenshot(path=str(SCREENSHOTS / "tokens.png"), full_page=True)
    # another tenant's pages are not reachable by URL either
    assert page.goto(base(run) + "/console/endpoint?id=globex/G0").status == 404
    assert page.goto(base(run) + "/console/?tenant=globex").status == 403
    page.context.close()


def test_the_endpoint_page_tells_the_story(browser: Any, run: Run) -> None:
    page = signed_in(browser, run, "acme")
    page.goto(base(run) + "/console/endpoint?id=acme/A0")
    assert column(page, "states", 3) == ["2.0.3", "2.0.14"]
    assert column(page, "flags", 2) == ["resolved", "raised"]
    assert set(column(page, "actions", 2)) == {"planned", "sent", "succeeded"}
    page.goto(base(run) + "/console/endpoint?id=acme/A6")
    assert column(page, "devices", 3) == ["noncompliant"]
    page.goto(base(run) + "/console/endpoint?id=acme/A7")
    assert column(page, "rejections", 2) == ["0ldt0ken"] * 3
    assert column(page, "rejections", 4) == ["1"] * 3  # one rejected request per event
    # hostile telemetry is shown as text, never run
    page.goto(base(run) + "/console/endpoint?id=acme/A5")
    assert page.title() != "pwned"
    assert 'onerror="document.title' in page.get_by_test_id("attributes").inner_text()
    page.context.close()


def test_filters_narrow_the_endpoints(browser: Any, run: Run) -> None:
    page = signed_in(browser, run, "acme")
    page.goto(base(run) + "/console/endpoints")
    assert "10 in all" in text(page, "pager")
    page.select_option("select[name=status]", "drifting")
    page.click("form.filters button")
    assert column(page, "endpoints", 0) == ["acme/A6", "acme/A7", "acme/A8", "acme/A9"]
    page.select_option("select[name=kind]", "missing_policy")
    page.click("form.filters button")
    assert column(page, "endpoints", 0) == ["acme/A9"]
    page.goto(base(run) + "/console/endpoints")
    page.fill("input[name=q]", "a3")
    page.click("form.filters button")
    assert column(page, "endpoints", 0) == ["acme/A3"]
    page.goto(base(run) + "/console/endpoints")
    page.select_option("select[name=team]", "web")
    page.select_option("select[name=status]", "compliant")
    page.click("form.filters button")
    assert len(column(page, "endpoints", 0)) == 5
    page.context.close()


def test_an_administrator_sees_every_tenant_and_can_pick_one(browser: Any, run: Run) -> None:
    page = signed_in(browser, run)
    assert (text(page, "endpoints"), text(page, "drifting")) == ("13", "5")
    page.select_option("select[name=tenant]", "globex")
    page.click("header form[method=get] button")
    assert (text(page, "endpoints"), text(page, "drifting")) == ("3", "1")
    page.goto(base(run) + "/console/tokens?tenant=acme")
    assert text(page, "stale-count") == "1"
    assert column(page, "stale", 0) == ["acme/A7"]
    assert column(page, "retiring", 0) == ["acme/A8"]
    page.goto(base(run) + "/console/tokens")  # all tenants: each rotation's laggards
    assert column(page, "retiring", 0) == ["acme/A8", "globex/G2"]
    assert text(page, "moved-count") == "11"
    page.context.close()


def test_the_session_cookie_is_locked_down_and_a_link_works_once(browser: Any, run: Run) -> None:
    link = sign_in_link(run, "acme")
    context = browser.new_context()
    page = context.new_page()
    assert page.goto(link).status == 200
    [cookie] = context.cookies()
    assert (cookie["httpOnly"], cookie["sameSite"], cookie["path"]) == (True, "Strict", "/console")
    context.close()
    again = browser.new_context().new_page()
    response = again.goto(link)
    assert response.status == 403 and "used or expired" in again.content()
    assert again.context.cookies() == []
    again.context.close()


def test_no_page_answers_without_a_session(run: Run) -> None:
    for path in PAGES.values():
        response = httpx.get(base(run) + path, follow_redirects=False)
        assert response.status_code == 401, path
        assert "acme/A" not in response.text and "Not signed in" in response.text
    assert httpx.get(base(run) + "/console").headers["Location"] == "/console/"
    forged = httpx.get(base(run) + "/console/", cookies={"driftline_console": "forged"})
    assert forged.status_code == 401
    rebound = httpx.get(base(run) + "/console/sign-in?token=x", headers={"Host": "evil.example"})
    assert rebound.status_code == 403


class _EvilSite(BaseHTTPRequestHandler):
    """Another origin on this machine whose page posts a form to the console on load."""

    target = ""

    def do_GET(self) -> None:
        body = (
            f'<form id="f" method="post" action="{self.target}/console/sign-out">'
            '<input name="csrf" value="guess"></form>'
            "<script>document.getElementById('f').submit()</script>"
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


def test_a_forged_cross_site_post_is_refused(browser: Any, run: Run) -> None:
    page = signed_in(browser, run, "acme")
    _EvilSite.target = base(run)
    evil = HTTPServer(("127.0.0.1", 0), _EvilSite)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    try:
        with page.expect_response(lambda r: r.url.endswith("/console/sign-out")) as posted:
            page.goto(f"http://127.0.0.1:{evil.server_port}/")
        assert posted.value.status == 403
    finally:
        evil.shutdown()
    # still signed in: the forged sign-out changed nothing
    assert page.goto(base(run) + "/console/").status == 200
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    csrf = page.locator("input[name=csrf]").get_attribute("value")
    url = base(run) + "/console/sign-out"
    same_origin = {"Origin": base(run)}
    # the cookie alone is not enough: the session's CSRF token and this origin are needed
    no_token = httpx.post(url, cookies=cookies, headers=same_origin, data={"csrf": "x"})
    assert no_token.status_code == 403
    wrong_origin = httpx.post(
        url, cookies=cookies, headers={"Origin": "http://evil.example"}, data={"csrf": csrf}
    )
    assert wrong_origin.status_code == 403
    assert page.goto(base(run) + "/console/").status == 200
    # the real button signs out, and the session is gone
    page.click("header button:has-text('Sign out')")
    assert "Signed out" in page.content()
    assert page.goto(base(run) + "/console/").status == 401
    page.context.close()


def test_the_api_wants_the_admin_token_json_and_no_browser(run: Run) -> None:
    url = base(run) + "/api/console/sign-in-links"
    token = (run.data / "admin.token").read_text().strip()
    assert httpx.post(url, json={}).status_code == 401
    assert httpx.post(url, json={}, headers={"Authorization": "Bearer wrong"}).status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    assert httpx.post(url, json={}, headers={**auth, "Origin": base(run)}).status_code == 403
    assert httpx.post(url, content="tenant=acme", headers=auth).status_code == 415
    unknown = httpx.post(url, json={"tenant": "nobody"}, headers=auth)
    assert unknown.status_code == 400 and "unknown tenant" in unknown.json()["error"]
    assert httpx.post(url, json={"tenant": "acme"}, headers=auth).status_code == 200


def test_sql_query_and_report_go_through_the_running_process(run: Run) -> None:
    rows = json.loads(
        run.cli(
            "sql",
            "SELECT DISTINCT tenant_id FROM drift_flags",
            "--tenant",
            "acme",
            "--format",
            "json",
        )
    )
    assert rows == [{"tenant_id": "acme"}]
    refused = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "sql", "DROP TABLE drift_flags", "--tenant", "acme",
         "--data", str(run.data)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0
    teams = run.cli("query", "drift_by_team", "--tenant", "acme", "--format", "csv")
    assert teams.splitlines()[0] == "team,kind,endpoints,oldest_since"
    assert len(teams.splitlines()) == 4 and "globex" not in teams
    report = json.loads(run.cli("report", "--tenant", "acme", "--format", "json"))
    assert (report["endpoints"], report["compliant_percent"], report["open_remediation"]) == (
        10,
        60.0,
        0,
    )
    metrics = httpx.get(base(run) + "/metrics").text
    assert 'driftline_open_drift{kind="outdated_client",tenant="acme"} 4.0' in metrics
    assert "endpoint" not in "".join(
        line for line in metrics.splitlines() if line.startswith("driftline_open_drift")
    )
