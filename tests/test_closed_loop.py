"""The whole loop through `driftline run`, live: an outdated laptop's telemetry → flag → the
in-process actions stage force-syncs it through the (emulated) MDM → the laptop's next telemetry
is current → flag resolved → time-to-remediate in `driftline drift --remediation`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ingest.tokens import TokenStore
from tests.emulators.iru import IruEmulator
from tests.support.embedded import Run, until
from tests.support.otel import claude_resource, export_metrics
from tests.support.serve import Served, in_thread

POLICY = """
tenant: acme
tools:
  claude-code:
    minimum_version: "2.0.10"
required_attributes: [team.id]
"""


@pytest.fixture
def iru() -> Iterator[tuple[IruEmulator, Served]]:
    emulator = IruEmulator()
    with in_thread(emulator) as served:
        yield emulator, served


def test_outdated_laptop_is_force_synced_and_its_fix_is_timed(
    tmp_path: Path, iru: tuple[IruEmulator, Served]
) -> None:
    emulator, served = iru
    device = served.call(lambda: emulator.add_device("C02LOOP")["device_id"])
    served.call(lambda: emulator.add_device("C02LOOP9"))  # a substring neighbour, left alone
    mdm_token = served.call(lambda: emulator.mint_token(emulator.all_privileges))

    run = Run(tmp_path)
    (tmp_path / "policy.yaml").write_text(POLICY)
    run.cli("policy", "set", str(tmp_path / "policy.yaml"))
    run.cli(
        "mdm", "connect", "--tenant", "acme", "--vendor", "iru", "--base-url", emulator.url,
        "--force-sync", "--allow-http-loopback",
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "driftline.cli", "mdm", "credentials", "set", "--tenant", "acme",
         "--vendor", "iru", "--data", str(tmp_path)],
        input=mdm_token, text=True, check=True, capture_output=True,
    )  # fmt: skip
    token = TokenStore(tmp_path / "tokens.db").create("acme")[1]
    run.start(DRIFTLINE_ACTIONS_LIVE="1", DRIFTLINE_ACTIONS_INTERVAL="30")
    try:
        grpc = run.ports["grpc"]
        assert export_metrics("grpc", grpc, token, claude_resource("C02LOOP", "web"), "2.0.3")
        assert run.open_flags() == {("acme/C02LOOP", "outdated_client")}
        # the new flag wakes the actions stage: no waiting for the 30 s interval
        until(lambda: served.call(lambda: list(emulator.blank_pushes)) == [device], timeout=20)

        pending = json.loads(run.cli("drift", "--remediation", "--tenant", "acme", "--json"))
        assert [(r["device_id"], r["status"]) for r in pending] == [(device, "pending")]

        # the laptop checked in, picked up the update, and reports the new version
        assert export_metrics("grpc", grpc, token, claude_resource("C02LOOP", "web"), "2.0.12")
        assert run.open_flags() == set()
        done = json.loads(run.cli("drift", "--remediation", "--tenant", "acme", "--json"))
        assert [(r["device_id"], r["status"]) for r in done] == [(device, "remediated")]
        assert done[0]["time_to_remediate_s"] >= 0
        assert done[0]["endpoint_id"] == "acme/C02LOOP"
        assert served.call(lambda: list(emulator.blank_pushes)) == [device]  # exactly once
    finally:
        output = run.stop(signal.SIGTERM)
    assert "Traceback" not in output
    assert mdm_token not in output  # the MDM credential never reaches the logs
