"""Remediation against the real store (chDB) and an emulated MDM (Iru): what a security team
checks. Dry-run sends nothing; live acts once per action and audits every step; the cap, the
kill switch, retries after failure, rotation grace; no double-fire across a crash; policy push.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

import store
from actions import operations
from actions.clients import client_for
from actions.integrations import IntegrationStore
from actions.mdm import Integration, MdmClient, RetryPolicy
from actions.profiles import render_mobileconfig
from actions.schedule import Schedule
from actions.service import Lookups
from schemas.policy import TenantPolicy
from schemas.remediation import Vendor
from tests.emulators.base import Fault
from tests.emulators.iru import IruEmulator
from tests.support.drift import outdated_laptop

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
SECRET_MARK = "iru-token-"


@dataclass
class World:
    ctx: operations.Context
    emulator: IruEmulator
    integrations: IntegrationStore
    devices: dict[str, str]  # serial -> device_id
    token: str
    policies: dict[str, TenantPolicy]

    async def drift(self, serial: str, version: str = "2.0.3") -> None:
        """An endpoint with that serial reports an outdated version: snapshot + raised flag."""
        await self.ctx.writer.add_durably(list(outdated_laptop(serial, T0, version)))

    async def run(self, **args: Any) -> dict[str, Any]:
        result: dict[str, Any] = await operations.run_operation(
            self.ctx, "actions-run", {"tenant": "acme", **args}
        )
        return result

    def audit(self) -> list[tuple[str, str, str]]:
        rows = self.ctx.store.query(
            "SELECT device_id, state, detail FROM remediation_audit FINAL "
            "WHERE NOT dry_run ORDER BY at, state"
        ).result_rows
        return [(r[0], r[1], r[2]) for r in rows]


def fast_client(integration: Integration) -> MdmClient:
    return client_for(integration, retry=RetryPolicy(backoff=0.01), timeout=2.0)


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    emulator = IruEmulator()
    await emulator.start()
    devices = {serial: emulator.add_device(serial)["device_id"] for serial in ("C02A", "C02B")}
    emulator.add_device("C02A-OTHER")  # substring neighbour: must never be chosen
    token = emulator.mint_token(emulator.all_privileges)
    integrations = IntegrationStore(tmp_path / "mdm" / "integrations.json")
    integrations.configure(
        Integration(
            tenant_id="acme",
            vendor=Vendor.IRU,
            base_url=emulator.url,
            force_sync=True,
            profile_id="li-claude",
        )
    )
    integrations.set_credential("acme", Vendor.IRU, token, datetime.now(UTC))
    client = store.connect(f"chdb://{tmp_path}/clickhouse")
    store.migrate(client)
    policies: dict[str, TenantPolicy] = {}
    async with store.BatchWriter(client, max_delay=0.01) as writer:
        ctx = operations.Context(
            store=client,
            writer=writer,
            data=tmp_path,
            integrations=integrations,
            policies=policies.get,
            client_for=fast_client,
        )
        yield World(ctx, emulator, integrations, devices, token, policies)
    client.close()
    await emulator.stop()


async def test_dry_run_sends_nothing_and_audits_the_plan(world: World) -> None:
    await world.drift("C02A")
    result = await world.run()
    assert result["dry_run"] and result["counts"]["planned"] == 1
    assert result["counts"]["sent"] == 0
    assert world.emulator.calls("POST") == []  # nothing left the process but the lookup
    (step,) = result["steps"]
    assert step["device_id"] == world.devices["C02A"] and step["dry_run"]
    assert "2.0.3 < minimum 2.0.10" in step["reason"]
    rows = world.ctx.store.query("SELECT state, dry_run FROM remediation_audit").result_rows
    assert rows == [("planned", True)]


async def test_live_acts_once_and_audits_every_step(world: World) -> None:
    await world.drift("C02A")
    result = await world.run(live=True)
    assert result["counts"] == {"planned": 1, "sent": 1, "succeeded": 1, "failed": 0, "skipped": 0}
    assert world.emulator.blank_pushes == [world.devices["C02A"]]
    assert [state for _, state, _ in world.audit()] == ["planned", "sent", "succeeded"]
    request = world.ctx.store.query(
        "SELECT request, response_status FROM remediation_audit WHERE state = 'succeeded'"
    ).result_rows
    assert request == [(f"POST /api/v1/devices/{world.devices['C02A']}/action/blankpush", 200)]

    again = await world.run(live=True)  # the same situation: the same action, already done
    assert again["counts"]["sent"] == 0 and again["counts"]["skipped"] == 1
    assert "already succeeded" in again["steps"][-1]["detail"]
    assert world.emulator.blank_pushes == [world.devices["C02A"]]


async def test_an_unknown_serial_is_reported_never_guessed(world: World) -> None:
    await world.drift("C02Z")  # not enrolled; "C02A-OTHER" etc. contain other serials
    result = await world.run(live=True)
    assert result["counts"]["sent"] == 0
    assert [u["endpoint_id"] for u in result["unresolvable"]] == ["acme/C02Z"]
    assert world.emulator.blank_pushes == []


async def test_the_cap_refuses_the_whole_run(world: World) -> None:
    await world.drift("C02A")
    await world.drift("C02B")
    result = await world.run(live=True, max_devices=1)
    assert result["counts"]["sent"] == 0 and result["counts"]["skipped"] == 2
    assert all("would exceed the cap: 2 devices" in s["detail"] for s in result["steps"][1::2])
    assert world.emulator.blank_pushes == []


async def test_the_kill_switch_stops_live_runs(world: World) -> None:
    await world.drift("C02A")
    world.ctx.kill_switch().write_text("stop")
    result = await world.run(live=True)
    assert result["counts"]["sent"] == 0 and world.emulator.blank_pushes == []
    assert "kill switch" in result["steps"][-1]["detail"]
    world.ctx.kill_switch().unlink()
    assert (await world.run(live=True))["counts"]["succeeded"] == 1


async def test_a_failed_action_is_audited_and_retried_next_run(world: World) -> None:
    await world.drift("C02A")
    world.emulator.inject(Fault(503), times=4, when=lambda r: r.path.endswith("/action/blankpush"))
    first = await world.run(live=True)
    assert first["counts"]["failed"] == 1
    failed = [s for s in first["steps"] if s["state"] == "failed"]
    assert failed[0]["response_status"] == 503 and "Unavailable" in failed[0]["detail"]
    second = await world.run(live=True, cooldown="0s")
    assert second["counts"]["succeeded"] == 1
    assert {s["attempt"] for s in second["steps"]} == {2}


async def test_previous_credential_in_grace_is_used_and_audited(world: World) -> None:
    await world.drift("C02A")
    world.integrations.set_credential(
        "acme", Vendor.IRU, "not-a-valid-token", datetime.now(UTC), grace=timedelta(days=1)
    )
    result = await world.run(live=True)
    assert result["counts"]["succeeded"] == 1
    assert "previous credential (in grace)" in result["steps"][-1]["detail"]


async def test_policy_push_republish_unchanged_and_changed(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = {"env": {"CLAUDE_CODE_ENABLE_TELEMETRY": "1"}, "permissions": {"deny": ["Bash"]}}
    world.policies["acme"] = TenantPolicy(tenant="acme", version=1, managed_settings=settings)
    world.emulator.add_profile("li-claude")

    dry = await operations.run_operation(world.ctx, "policy-push", {"tenant": "acme"})
    assert [e["outcome"] for e in dry["entries"]] == ["dry_run"]
    assert world.emulator.calls("PATCH") == []

    pushed = await operations.run_operation(
        world.ctx, "policy-push", {"tenant": "acme", "live": True}
    )
    (entry,) = pushed["entries"]
    assert entry["outcome"] == "pushed"
    assert world.emulator.profiles["li-claude"]["file"] == render_mobileconfig("acme", settings)
    assert Path(entry["payload_file"]).read_bytes() == render_mobileconfig("acme", settings)

    same = await operations.run_operation(
        world.ctx, "policy-push", {"tenant": "acme", "live": True}
    )
    assert [e["outcome"] for e in same["entries"]] == ["unchanged"]
    assert len(world.emulator.calls("PATCH")) == 1

    changed = {**settings, "permissions": {"deny": ["Bash", "WebFetch"]}}
    world.policies["acme"] = TenantPolicy(tenant="acme", version=2, managed_settings=changed)
    again = await operations.run_operation(
        world.ctx, "policy-push", {"tenant": "acme", "live": True}
    )
    assert [e["outcome"] for e in again["entries"]] == ["pushed"]
    assert world.emulator.profiles["li-claude"]["file"] == render_mobileconfig("acme", changed)
    assert world.token not in caplog.text


async def test_policy_push_without_credential_is_republish_required(world: World) -> None:
    world.integrations.configure(
        Integration(tenant_id="acme", vendor=Vendor.JAMF, base_url="https://acme.jamfcloud.com")
    )
    world.policies["acme"] = TenantPolicy(tenant="acme", managed_settings={"env": {"A": "1"}})
    result = await operations.run_operation(
        world.ctx, "policy-push", {"tenant": "acme", "live": True}
    )
    by_vendor = {e["vendor"]: e for e in result["entries"]}
    assert by_vendor["jamf"]["outcome"] == "republish_required"
    assert "upload" in by_vendor["jamf"]["detail"]
    assert Path(by_vendor["jamf"]["payload_file"]).exists()
    changelog = world.ctx.store.query(
        "SELECT vendor, outcome FROM policy_changelog ORDER BY vendor"
    ).result_rows
    # the Iru profile id names no profile there: a failure, recorded, not a crash
    assert changelog == [("iru", "failed"), ("jamf", "republish_required")]
    assert "Rejected" in by_vendor["iru"]["detail"]


async def test_a_crash_after_sending_never_fires_twice(tmp_path: Path) -> None:
    """`driftline actions run --live` killed -9 while the MDM holds the request; run again."""
    emulator = IruEmulator()
    await emulator.start()
    try:
        device = emulator.add_device("C02CRASH")["device_id"]
        token = emulator.mint_token(emulator.all_privileges)
        seen: list[str] = []

        def count(request: web.Request) -> bool:
            if request.path.endswith("/action/blankpush"):
                seen.append(request.path)
            return False  # never answers: only counts

        emulator.inject(Fault(599), when=count)
        emulator.inject(Fault(200, delay=30), when=lambda r: r.path.endswith("/action/blankpush"))
        cli = [sys.executable, "-m", "driftline.cli"]
        data = ["--data", str(tmp_path)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        connect = ["mdm", "connect", "--tenant", "acme", "--vendor", "iru", "--force-sync"]
        connect.append("--allow-http-loopback")  # the emulator
        # --no-test: this loop serves the emulator, and subprocess.run blocks it
        credentials = ["mdm", "credentials", "set", "--tenant", "acme", "--vendor", "iru"]
        credentials.append("--no-test")
        subprocess.run([*cli, *connect, "--base-url", emulator.url, *data], check=True, env=env)
        subprocess.run(
            [*cli, *credentials, *data],
            input=token.encode(),
            check=True,
            env=env,
        )
        report = tmp_path / "report.csv"
        report.write_text(f"Device ID,Serial Number,Status\n{device},C02CRASH,failed\n")
        subprocess.run(
            [*cli, "mdm", "import", str(report), "--vendor", "iru", "--tenant", "acme", *data],
            check=True,
            env=env,
        )
        run = [*cli, "actions", "run", "--tenant", "acme", "--live", "--yes", *data]
        process = await asyncio.create_subprocess_exec(
            *run, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while not seen and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert seen, "the blank push never reached the MDM"
        process.send_signal(signal.SIGKILL)
        await process.wait()

        again = await asyncio.create_subprocess_exec(
            *run, "--json", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        out, err = await again.communicate()
        assert again.returncode == 0, err.decode()
        result = json.loads(out)
        assert result["counts"]["sent"] == 0
        assert "not sent twice" in result["steps"][-1]["detail"]
        assert len(seen) == 1  # exactly one blank push ever reached the MDM
        assert token not in out.decode() + err.decode()
    finally:
        await emulator.stop()


async def test_policy_push_with_force_sync_goes_through_the_gate_and_the_audit(
    world: World,
) -> None:
    world.emulator.add_profile("li-claude")
    world.policies["acme"] = TenantPolicy(tenant="acme", managed_settings={"env": {"A": "1"}})
    rows = "".join(f"{device},{serial},success\n" for serial, device in world.devices.items())
    await operations.run_operation(
        world.ctx,
        "mdm-import",
        {"tenant": "acme", "vendor": "iru", "csv": "Device ID,Serial Number,Status\n" + rows},
    )
    args = {"tenant": "acme", "live": True, "force_sync": True}
    result = await operations.run_operation(world.ctx, "policy-push", args)
    assert result["force_sync"] == {"succeeded": 2, "failed": 0, "skipped": 0}
    assert sorted(world.emulator.blank_pushes) == sorted(world.devices.values())
    reasons = world.ctx.store.query(
        "SELECT DISTINCT reason FROM remediation_audit WHERE state = 'succeeded'"
    ).result_rows
    assert reasons == [(f"policy v0 pushed ({result['entries'][0]['digest'][:12]})",)]

    again = await operations.run_operation(world.ctx, "policy-push", args)
    assert again["entries"][0]["outcome"] == "unchanged" and again["force_sync"] is None
    assert len(world.emulator.blank_pushes) == 2


async def test_lookups_are_remembered_and_budgeted_per_pass(world: World) -> None:
    """Flagged serials the compliance import never saw are looked up once, within a budget;
    what does not fit waits for the next pass instead of being called unknown."""
    world.ctx.lookups = Lookups(per_pass=1)
    await world.drift("C02A")
    await world.drift("C02B")
    first = await world.run()
    assert len(first["steps"]) == 1 and first["unresolvable"] == []
    second = await world.run()
    assert {s["device_id"] for s in second["steps"]} == set(world.devices.values())
    lookups = len(world.emulator.calls("GET", "/api/v1/devices"))
    third = await world.run()
    assert len(third["steps"]) == 2
    assert len(world.emulator.calls("GET", "/api/v1/devices")) == lookups  # remembered


async def test_an_mdm_down_during_lookups_defers_rather_than_calls_laptops_unknown(
    world: World,
) -> None:
    await world.drift("C02A")
    world.emulator.inject(Fault(503), times=20, when=lambda r: r.path == "/api/v1/devices")
    down = await world.run()
    assert down["steps"] == [] and down["unresolvable"] == []
    world.emulator.faults.clear()
    back = await world.run()
    assert [s["device_id"] for s in back["steps"]] == [world.devices["C02A"]]


async def test_the_remediation_loop_stops_when_cancelled_just_as_a_flag_wakes_it(
    world: World,
) -> None:
    """`driftline run` hung on SIGTERM when a flag woke this loop in the same instant: Python
    3.11's ``asyncio.wait_for`` returns the wake-up and drops the cancellation."""
    wake = asyncio.Event()
    schedule = Schedule(interval=3600, settle=0)
    looping = asyncio.create_task(operations.remediate_forever(world.ctx, schedule, wake))
    await asyncio.sleep(0.05)  # waiting to be woken
    wake.set()
    looping.cancel()
    done, _ = await asyncio.wait({looping}, timeout=5)
    assert looping in done and looping.cancelled()
