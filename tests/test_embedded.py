"""`driftline run` end to end: real SDK exporters → receiver → detectors → chDB, and restarts."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ingest.tokens import TokenStore
from tests.support.embedded import Run, until
from tests.support.otel import claude_resource, export_logs, export_metrics

POLICY = """
tenant: acme
tools:
  claude-code:
    minimum_version: "2.0.10"
required_attributes: [team.id]
stale_token: {threshold: 3, window: 10m}
"""


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    running = Run(tmp_path)
    (tmp_path / "policy.yaml").write_text(POLICY)
    yield running
    if running.process is not None:
        running.stop(signal.SIGKILL)


def test_fleet_drift_is_flagged_and_resolved(run: Run) -> None:
    token = TokenStore(run.data / "tokens.db").create("acme")[1]
    run.cli("policy", "set", str(run.data / "policy.yaml"))
    run.start()
    grpc, http = run.ports["grpc"], run.ports["http"]
    assert export_metrics("grpc", grpc, token, claude_resource("OLD", "web"), app_version="2.0.3")
    assert export_logs("http", http, token, claude_resource("NOTEAM", None), app_version="2.0.14")
    assert export_metrics("http", http, token, claude_resource("OK", "web"), app_version="2.0.14")
    # acknowledged means stored: no waiting needed before asking
    assert run.open_flags() == {("acme/OLD", "outdated_client"), ("acme/NOTEAM", "missing_policy")}
    [old] = [row for row in run.drift() if row["endpoint_id"] == "acme/OLD"]
    assert old["detail"] == "2.0.3 < minimum 2.0.10 for claude-code"
    assert old["team_id"] == "web" and old["app_version"] == "2.0.3"
    assert run.cli("drift", "--tenant", "acme", "--kind", "missing_policy").count("acme/") == 1
    other = run.attempt("drift", "--tenant", "other")  # tenants are isolated, and an unknown
    assert other.returncode == 1 and "unknown tenant 'other'" in other.stderr  # one says so
    assert "acme/OLD" not in other.stdout

    # a rotated token still used after its grace: three 401s → stale_token
    run.cli("tokens", "rotate", "--tenant", "acme", "--grace", "0s")
    assert json.loads(run.cli("policy", "show", "--tenant", "acme"))["token_rotated_at"]
    new_token = run.cli("tokens", "create", "--tenant", "acme").strip().splitlines()[-1]
    for _ in range(3):  # back to back: the receiver coalesces them, and counts every one
        assert not export_metrics("grpc", grpc, token, claude_resource("OK", "web"))
    until(lambda: ("acme/OK", "stale_token") in run.open_flags())

    # fixing the endpoints resolves their flags
    assert export_metrics("grpc", grpc, new_token, claude_resource("OLD", "web"), "2.0.12")
    assert export_metrics("http", http, new_token, claude_resource("NOTEAM", "data"), "2.0.14")
    assert export_metrics("http", http, new_token, claude_resource("OK", "web"), "2.0.14")
    assert run.open_flags() == set()
    history = json.loads(run.cli("endpoint", "acme/OLD", "--tenant", "acme", "--json"))
    assert [(f["kind"], f["state"]) for f in history["flags"]] == [
        ("outdated_client", "raised"),
        ("outdated_client", "resolved"),
    ]
    assert [s["app_version"] for s in history["states"]] == ["2.0.3", "2.0.12"]
    assert "Traceback" not in run.stop()


@pytest.mark.parametrize("interval", [None, "0"])
def test_a_burst_of_stale_token_retries_is_flagged_within_two_seconds(
    run: Run, interval: str | None
) -> None:
    """4 rejections within 2 s, threshold 3: flagged about 2 s after the third at most (the
    default AuthEvent interval is 1 s; 0 publishes every rejection and must not crash)."""
    token = TokenStore(run.data / "tokens.db").create("acme")[1]
    run.cli("policy", "set", str(run.data / "policy.yaml"))
    run.start(**({"DRIFTLINE_AUTH_EVENT_INTERVAL": interval} if interval else {}))
    run.cli("tokens", "rotate", "--tenant", "acme", "--grace", "0s")
    time.sleep(1.2)  # receivers pick registry changes up within a second
    url = f"http://127.0.0.1:{run.ports['http']}/v1/metrics"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps(
        {
            "resourceMetrics": [
                {
                    "resource": {
                        "attributes": [
                            {"key": "device.serial_number", "value": {"stringValue": "BURST"}}
                        ]
                    }
                }
            ]
        }
    )
    third = 0.0
    with httpx.Client() as client:
        for n in range(4):
            assert client.post(url, content=body, headers=headers).status_code == 401
            if n == 2:
                third = time.monotonic()
            time.sleep(0.5)
    # when the poll that first saw the flag began: a CLI run's own start-up is not the pipeline's
    while True:
        began = time.monotonic()
        if ("acme/BURST", "stale_token") in run.open_flags():
            break
        assert began - third < 10, "no stale_token flag within 10 s of the third rejection"
    assert began - third < 2.5
    history = json.loads(run.cli("endpoint", "acme/BURST", "--tenant", "acme", "--json"))
    assert sum(row["count"] for row in history["rejections"]) == 4
    assert "Traceback" not in run.stop()


def test_policy_change_reevaluates_known_endpoints_without_telemetry(run: Run) -> None:
    token = TokenStore(run.data / "tokens.db").create("acme")[1]
    run.start()
    assert export_metrics("grpc", run.ports["grpc"], token, claude_resource("A", "web"), "2.0.3")
    assert run.open_flags() == set()  # no minimum yet
    run.cli("policy", "set", str(run.data / "policy.yaml"))
    until(lambda: run.open_flags() == {("acme/A", "outdated_client")})
    (run.data / "policy.yaml").write_text(POLICY.replace("2.0.10", "2.0.1"))
    run.cli("policy", "set", str(run.data / "policy.yaml"))
    until(lambda: run.open_flags() == set())


def test_a_restart_loses_nothing_acknowledged(run: Run) -> None:
    token = TokenStore(run.data / "tokens.db").create("acme")[1]
    run.cli("policy", "set", str(run.data / "policy.yaml"))
    run.start()
    port = run.ports["http"]
    for i in range(10):
        assert export_metrics("http", port, token, claude_resource(f"E{i}", "web"), "2.0.3")
    run.stop(signal.SIGKILL)  # no clean shutdown: only what was acknowledged counts
    run.start()
    assert len(run.open_flags()) == 10
    # state was recovered: an upgrade resolves, a repeat of old telemetry raises nothing new
    assert export_metrics("http", port, token, claude_resource("E0", "web"), "2.0.14")
    assert export_metrics("http", port, token, claude_resource("E1", "web"), "2.0.3")
    assert {e for e, _ in run.open_flags()} == {f"acme/E{i}" for i in range(1, 10)}
    history = json.loads(run.cli("endpoint", "acme/E1", "--tenant", "acme", "--json"))
    assert [f["state"] for f in history["flags"]] == ["raised"]
    assert httpx.get(f"http://127.0.0.1:{run.ports['admin']}/readyz").status_code == 200


def test_two_tools_on_one_laptop_do_not_flap_across_a_restart(run: Run) -> None:
    """Claude Code (outdated) and another OTel tool export from one laptop, alternately."""
    token = TokenStore(run.data / "tokens.db").create("acme")[1]
    run.cli("policy", "set", str(run.data / "policy.yaml"))
    run.start()
    port = run.ports["http"]
    claude = claude_resource("DUO", "web")
    other = claude_resource("DUO", "web", extra={"service.name": "other-tool"})
    for _ in range(2):
        assert export_metrics("http", port, token, claude, "2.0.3")
        assert export_metrics("http", port, token, other, "1.0")
    run.stop(signal.SIGKILL)
    run.start()  # the state of both tools is recovered from the store
    assert export_metrics("http", port, token, other, "1.0")
    assert export_metrics("http", port, token, claude, "2.0.3")
    assert run.open_flags() == {("acme/DUO", "outdated_client")}
    history = json.loads(run.cli("endpoint", "acme/DUO", "--tenant", "acme", "--json"))
    assert [(f["kind"], f["state"]) for f in history["flags"]] == [("outdated_client", "raised")]
    assert export_metrics("http", port, token, claude, "2.0.12")  # the outdated tool is updated
    assert run.open_flags() == set()
