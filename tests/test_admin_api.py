"""The admin API of a real `driftline run`, attacked the way a web page or a stranger would.

A browser lets any page POST ``text/plain`` to any address without a preflight, and DNS
rebinding lets a page talk to 127.0.0.1 under its own name. Each attack is sent as such, and
what it would have done (a live force-sync through the MDM) is checked not to have happened;
the same operation through the CLI, with the admin token, does happen (so the check can fail).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ingest.tokens import TokenStore
from tests.emulators.iru import IruEmulator
from tests.support.embedded import Run
from tests.support.otel import claude_resource, export_metrics
from tests.support.processes import heavy_imports
from tests.support.serve import Served, in_thread

POLICY = """
tenant: acme
tools:
  claude-code:
    minimum_version: "2.0.10"
"""


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    running = Run(tmp_path / "data")
    yield running
    if running.process is not None:
        running.stop(signal.SIGKILL)


@pytest.fixture
def iru() -> Iterator[tuple[IruEmulator, Served]]:
    emulator = IruEmulator()
    with in_thread(emulator) as served:
        yield emulator, served


def _mdm_ready(run: Run, emulator: IruEmulator, served: Served) -> str:
    """Tenant acme: a policy, an Iru integration with force-sync and a credential, a device."""
    device: str = served.call(lambda: emulator.add_device("C02CSRF")["device_id"])
    mdm_token = served.call(lambda: emulator.mint_token(emulator.all_privileges))
    run.data.mkdir(parents=True)
    (run.data.parent / "policy.yaml").write_text(POLICY)
    run.cli("policy", "set", str(run.data.parent / "policy.yaml"))
    run.cli(
        "mdm", "connect", "--tenant", "acme", "--vendor", "iru", "--base-url", emulator.url,
        "--force-sync", "--allow-http-loopback",
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "driftline.cli", "mdm", "credentials", "set", "--tenant", "acme",
         "--vendor", "iru", "--data", str(run.data)],
        input=mdm_token, text=True, check=True, capture_output=True,
    )  # fmt: skip
    return device


def test_a_cross_site_request_is_refused_and_runs_nothing(
    run: Run, iru: tuple[IruEmulator, Served]
) -> None:
    emulator, served = iru
    device = _mdm_ready(run, emulator, served)
    token = TokenStore(run.data / "tokens.db").create("acme")[1]
    # dry-run passes only, and rarely: anything sent live was sent by a request below
    run.start(DRIFTLINE_ACTIONS_INTERVAL="3600")
    laptop = claude_resource("C02CSRF", "web")
    assert export_metrics("http", run.ports["http"], token, laptop, "2.0.3")
    assert run.open_flags() == {("acme/C02CSRF", "outdated_client")}
    admin = run.ports["admin"]
    base = f"http://127.0.0.1:{admin}"
    body = json.dumps({"tenant": "acme", "live": True})
    admin_token = (run.data / "admin.token").read_text().strip()
    bearer = {"Authorization": f"Bearer {admin_token}"}

    def post(headers: dict[str, str], path: str = "/api/operations/actions-run") -> int:
        return httpx.post(f"{base}{path}", content=body, headers=headers).status_code

    # what a web page can send: text/plain, its own Origin, no credential
    page = {"Content-Type": "text/plain", "Origin": "http://attacker.example"}
    assert post(page) == 403
    # DNS rebinding: the page's own name in Host, so its Origin looks same-origin
    rebound = {"Content-Type": "text/plain", "Host": f"attacker.example:{admin}"}
    assert post({**rebound, "Origin": f"http://attacker.example:{admin}"}) == 403
    assert post(rebound) == 403
    # no Origin (a non-browser), no credential
    assert post({"Content-Type": "application/json"}) == 401
    assert post({"Content-Type": "application/json", "Authorization": "Bearer wrong"}) == 401
    # even with the token: a form or text/plain body is not an operation, a page is not us
    assert post({**bearer, "Content-Type": "text/plain"}) == 415
    assert post({**bearer, "Content-Type": "application/x-www-form-urlencoded"}) == 415
    assert post({**bearer, "Content-Type": "application/json", **page}) == 403
    # the same path spelled otherwise is no way around the guard
    for path in ("/%61pi/operations/actions-run", "//api/operations/actions-run"):
        assert post({"Content-Type": "application/json"}, path) in (401, 404)
    assert served.call(lambda: list(emulator.blank_pushes)) == []  # nothing was sent

    # reads too: no drift for a page or a stranger, and no "every tenant" without the token
    assert httpx.get(f"{base}/api/drift").status_code == 401
    assert httpx.get(f"{base}/api/drift", params={"tenant": "acme"}).status_code == 401
    other_port = {**bearer, "Host": f"127.0.0.1:{admin + 1}"}
    assert httpx.get(f"{base}/api/drift", headers=other_port).status_code == 403
    assert httpx.get(f"{base}/api/drift", headers=bearer).is_success
    for open_path in ("/healthz", "/readyz", "/metrics"):  # probes and scrapers need no token
        assert httpx.get(f"{base}{open_path}").status_code == 200

    # the admin's own CLI, which holds the token, does act (so the checks above could fail)
    run.cli("actions", "run", "--tenant", "acme", "--live", "--yes")
    assert served.call(lambda: list(emulator.blank_pushes)) == [device]
    assert admin_token not in run.stop()  # the admin token never reaches the logs


def _own_address() -> str:
    try:  # the address this machine reaches the network from (a UDP connect sends nothing)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.123", 9))
            return str(probe.getsockname()[0])
    except OSError:
        if os.environ.get("CI"):  # like a missing Kafka: under CI, a test that cannot run fails
            pytest.fail("no network interface on this machine")
        pytest.skip("no network interface on this machine")


def test_the_cli_reaches_a_pipeline_bound_to_any_host(run: Run) -> None:
    address = _own_address()
    run.data.mkdir(parents=True)
    TokenStore(run.data / "tokens.db").create("acme")
    run.start("--host", address)
    info = json.loads((run.data / "run.json").read_text())
    assert info["admin"] == f"http://{address}:{run.ports['admin']}"
    # the pipeline holds the store, so an answer at all means the API answered the CLI
    result = run.attempt("drift", "--tenant", "acme", "--json")
    assert (result.returncode, json.loads(result.stdout or "null")) == (0, []), result.stderr
    admin_token = (run.data / "admin.token").read_text().strip()
    # and it got there without loading the store or an HTTP library: that is what keeps it fast
    assert heavy_imports("drift", "--tenant", "acme", "--data", str(run.data)) == []
    api = f"http://{address}:{run.ports['admin']}/api/drift?tenant=acme"
    assert httpx.get(api).status_code == 401
    assert httpx.get(api, headers={"Authorization": f"Bearer {admin_token}"}).is_success


def test_the_cli_after_a_kill_9_reads_the_store(run: Run) -> None:
    run.data.mkdir(parents=True)
    token = TokenStore(run.data / "tokens.db").create("acme")[1]
    run.start()
    assert export_metrics("http", run.ports["http"], token, claude_resource("K9", None), "2.0.3")
    run.stop(signal.SIGKILL)
    assert (run.data / "run.json").exists()  # stale: its process is gone
    result = run.attempt("drift", "--tenant", "acme", "--json")
    assert result.returncode == 0, result.stderr
    assert [(r["endpoint_id"], r["kind"]) for r in json.loads(result.stdout)] == [
        ("acme/K9", "missing_policy")
    ]
    assert "Traceback" not in result.stderr
    history = run.attempt("endpoint", "K9", "--tenant", "acme", "--json")  # a bare serial
    assert history.returncode == 0, history.stderr
    assert json.loads(history.stdout)["endpoint_id"] == "acme/K9"


def test_data_files_are_owner_only(run: Run) -> None:
    """Every file a pipeline and its commands leave in the data directory: 0600 in 0700."""
    run.cli("tokens", "create", "--tenant", "acme")
    run.data.chmod(0o755)  # as an older version left it: `driftline run` tightens it
    (run.data.parent / "policy.yaml").write_text(POLICY)
    run.cli("policy", "set", str(run.data.parent / "policy.yaml"))
    run.cli("mdm", "connect", "--tenant", "acme", "--vendor", "iru", "--base-url", "https://x.test")
    token = TokenStore(run.data / "tokens.db").create("acme")[1]
    run.start()
    assert export_metrics("http", run.ports["http"], token, claude_resource("M", "web"), "2.0.3")
    assert (run.data / "run.json").exists() and (run.data / "admin.token").exists()
    assert (run.data / "clickhouse").is_dir()
    loose = []
    for path in [run.data, *run.data.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if stat.S_IMODE(mode) & 0o077:
            loose.append(f"{path.relative_to(run.data.parent)} {stat.S_IMODE(mode):o}")
    assert loose == []
    assert stat.S_IMODE((run.data / "admin.token").stat().st_mode) == 0o600
    assert stat.S_IMODE(run.data.stat().st_mode) == 0o700


def test_another_os_user_can_neither_query_nor_take_the_token(tmp_path: Path) -> None:
    """The report's `nobody` ran `driftline drift --all-tenants` and got every tenant's drift."""
    python = Path("/usr/bin/python3.11")  # the venv's interpreter may live under /root
    if os.geteuid() != 0 or not python.exists() or not Path("/usr/bin/setpriv").exists():
        if os.environ.get("CI"):
            pytest.fail("needs root, setpriv and /usr/bin/python3.11 to act as another user")
        pytest.skip("needs root, setpriv and /usr/bin/python3.11 to act as another user")
    parent = Path(tempfile.mkdtemp(prefix="driftline-other-user-"))
    parent.chmod(0o755)  # reachable by anyone: only the data directory's own mode protects it
    run = Run(parent / "data")
    try:
        token = TokenStore(run.data / "tokens.db").create("acme")[1]
        run.start()
        assert export_metrics("http", run.ports["http"], token, claude_resource("U", None), "2.0.3")
        repo = Path(__file__).resolve().parents[1]
        site = next((repo / ".venv" / "lib").glob("python3.11/site-packages"))
        as_nobody = (
            "import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]\n"
            "from driftline.cli import main\n"
            "sys.exit(main(['drift', '--all-tenants', '--json', '--data', sys.argv[3]]))\n"
        )
        result = subprocess.run(
            ["/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             str(python), "-c", as_nobody, str(repo), str(site), str(run.data)],
            capture_output=True, text=True, timeout=60, cwd=parent,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert "permission denied" in result.stderr and "acme/U" not in result.stdout
        assert result.stdout == ""
    finally:
        if run.process is not None:
            run.stop(signal.SIGKILL)
        shutil.rmtree(parent)
