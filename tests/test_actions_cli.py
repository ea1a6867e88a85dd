"""`driftline actions run|log` as an admin uses them: the plan's size by reason, a live run held
for --yes when it is the tenant's first or larger than --confirm-over, and the audit log.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulators.iru import IruEmulator
from tests.support.processes import cli
from tests.support.serve import Served, in_thread


@pytest.fixture
def iru() -> Iterator[tuple[IruEmulator, Served]]:
    emulator = IruEmulator()
    with in_thread(emulator) as served:
        yield emulator, served


def import_failed(data: Path, devices: dict[str, str]) -> None:
    report = data / "report.csv"
    rows = "".join(f"{device},{serial},failed\n" for serial, device in devices.items())
    report.write_text("Device ID,Serial Number,Status\n" + rows)
    imported = cli(data, "mdm", "import", str(report), "--vendor", "iru", "--tenant", "acme")
    assert imported.returncode == 0, imported.stderr


def test_live_runs_are_held_for_yes_and_every_step_is_in_the_log(
    tmp_path: Path, iru: tuple[IruEmulator, Served]
) -> None:
    emulator, served = iru

    def enrol(serial: str) -> str:
        return str(served.call(lambda: emulator.add_device(serial)["device_id"]))

    first = {f"C02H{n:02}": enrol(f"C02H{n:02}") for n in range(3)}
    token = served.call(lambda: emulator.mint_token(emulator.all_privileges))
    connect = cli(
        tmp_path, "mdm", "connect", "--tenant", "acme", "--vendor", "iru",
        "--base-url", emulator.url, "--force-sync", "--allow-http-loopback",
    )  # fmt: skip
    assert connect.returncode == 0, connect.stderr
    cred = ["mdm", "credentials", "set", "--tenant", "acme", "--vendor", "iru"]
    assert cli(tmp_path, *cred, stdin=token).returncode == 0
    import_failed(tmp_path, first)

    dry = cli(tmp_path, "actions", "run", "--tenant", "acme")
    assert dry.returncode == 0, dry.stderr
    assert "plan: 3 devices (MDM: noncompliant 3)" in dry.stdout

    held = cli(tmp_path, "actions", "run", "--tenant", "acme", "--live")
    assert held.returncode == 4
    assert "plan: 3 devices (MDM: noncompliant 3)" in held.stdout
    assert "the tenant's first live run would act on 3 devices" in held.stderr
    assert served.call(lambda: list(emulator.blank_pushes)) == []

    go = cli(tmp_path, "actions", "run", "--tenant", "acme", "--live", "--yes")
    assert go.returncode == 0, go.stderr
    assert sorted(served.call(lambda: list(emulator.blank_pushes))) == sorted(first.values())

    more = {f"C02M{n:02}": enrol(f"C02M{n:02}") for n in range(4)}
    import_failed(tmp_path, more)
    big = cli(tmp_path, "actions", "run", "--tenant", "acme", "--live", "--confirm-over", "3")
    assert big.returncode == 4 and "4 devices to act on, more than 3" in big.stderr
    small = cli(tmp_path, "actions", "run", "--tenant", "acme", "--live", "--confirm-over", "4")
    assert small.returncode == 0, small.stderr
    assert len(served.call(lambda: list(emulator.blank_pushes))) == 7

    log = cli(tmp_path, "actions", "log", "--tenant", "acme", "--device", "c02h01", "--json")
    assert log.returncode == 0, log.stderr
    steps = [(r["dry_run"], r["state"], r["detail"]) for r in json.loads(log.stdout)]
    # the audit keeps one row per action, attempt and state: the later runs' planned and
    # skipped rows (it had already succeeded) come after the send
    assert [s[:2] for s in steps] == [
        (False, "sent"),
        (False, "succeeded"),
        (False, "planned"),
        (False, "skipped"),
    ]
    assert steps[-1][2].startswith("already succeeded at")
    (row,) = [r for r in json.loads(log.stdout) if r["state"] == "succeeded"]
    assert (
        row["device_id"] == first["C02H01"] and row["reason"] == "noncompliant: iru export: failed"
    )
    assert row["request"] == f"POST /api/v1/devices/{first['C02H01']}/action/blankpush"

    table = cli(tmp_path, "actions", "log", "--tenant", "acme", "--since", "1h")
    assert table.returncode == 0
    assert sum(" live  succeeded " in line for line in table.stdout.splitlines()) == 7
    late = cli(tmp_path, "actions", "log", "--tenant", "acme", "--since", "2999-01-01T00:00:00Z")
    assert late.returncode == 0 and "no remediation steps recorded" in late.stdout
    bad = cli(tmp_path, "actions", "log", "--tenant", "acme", "--since", "yesterday")
    assert bad.returncode == 2 and "a duration (24h, 7d) or an ISO time" in bad.stderr
    unknown = cli(tmp_path, "actions", "log", "--tenant", "nobody")
    assert unknown.returncode == 2 and "no MDM integration and no audit" in unknown.stderr


def test_a_live_run_draws_progress_on_a_terminal_and_stays_quiet_in_a_pipe(
    tmp_path: Path, iru: tuple[IruEmulator, Served]
) -> None:
    emulator, served = iru

    def enrol(serial: str) -> str:
        return str(served.call(lambda: emulator.add_device(serial)["device_id"]))

    devices = {f"C02T{n}": enrol(f"C02T{n}") for n in range(3)}
    token = served.call(lambda: emulator.mint_token(emulator.all_privileges))
    connect = ["mdm", "connect", "--tenant", "acme", "--vendor", "iru", "--force-sync"]
    assert (
        cli(tmp_path, *connect, "--base-url", emulator.url, "--allow-http-loopback").returncode == 0
    )
    cred = ["mdm", "credentials", "set", "--tenant", "acme", "--vendor", "iru", "--no-test"]
    assert cli(tmp_path, *cred, stdin=token).returncode == 0
    import_failed(tmp_path, devices)

    piped = cli(tmp_path, "actions", "run", "--tenant", "acme", "--live", "--yes")
    assert piped.returncode == 0 and "force-sync" not in piped.stderr + piped.stdout

    import_failed(tmp_path, {"C02T9": enrol("C02T9")})
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "driftline.cli", "actions", "run", "--tenant", "acme",
             "--live", "--yes", "--data", str(tmp_path)],
            stdout=subprocess.PIPE, stderr=terminal, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the process is done
                break
            if not chunk:
                break
            drawn += chunk
        assert process.wait(timeout=120) == 0
    finally:
        os.close(controller)
    assert b"force-sync" in drawn and b"1/1" in drawn


def test_policy_push_exit_statuses_empty_refused_and_partial(
    tmp_path: Path, iru: tuple[IruEmulator, Served]
) -> None:
    emulator, served = iru
    served.call(lambda: emulator.add_profile("li-claude"))
    served.call(lambda: emulator.add_blueprint("bp-1"))
    assign = "POST /api/v1/blueprints/{blueprint_id}/assign-library-item"
    token = served.call(lambda: emulator.mint_token(emulator.all_privileges - {assign}))
    connect = cli(
        tmp_path, "mdm", "connect", "--tenant", "acme", "--vendor", "iru",
        "--base-url", emulator.url, "--allow-http-loopback",
        "--profile-id", "li-claude", "--blueprint-id", "bp-1",
    )  # fmt: skip
    assert connect.returncode == 0, connect.stderr
    cred = ["mdm", "credentials", "set", "--tenant", "acme", "--vendor", "iru"]
    assert cli(tmp_path, *cred, stdin=token).returncode == 0
    (tmp_path / "empty.yaml").write_text("tenant: acme\n")
    assert cli(tmp_path, "policy", "set", str(tmp_path / "empty.yaml")).returncode == 0
    empty = cli(tmp_path, "policy", "push", "--tenant", "acme", "--live")
    assert empty.returncode == 2 and "--allow-empty" in empty.stderr
    assert served.call(lambda: emulator.profiles["li-claude"]["file"]) == b""

    (tmp_path / "policy.yaml").write_text("tenant: acme\nmanaged_settings:\n  env:\n    A: '1'\n")
    assert cli(tmp_path, "policy", "set", str(tmp_path / "policy.yaml")).returncode == 0
    partial = cli(tmp_path, "policy", "push", "--tenant", "acme", "--live")
    assert partial.returncode == 3, partial.stderr
    assert "+ env.A = '1'" in partial.stdout
    assert "partial" in partial.stdout and "-> 200 succeeded, then Forbidden" in partial.stdout
