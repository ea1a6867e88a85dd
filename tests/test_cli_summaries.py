"""Every command that decides to do nothing says so, and summaries count what their rows say."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from actions import operations
from driftline.cli.actions import final_steps, summary
from driftline.cli.policy import push_summary
from schemas.policy import TenantPolicy
from tests.test_actions import World, world

__all__ = ["world"]  # the fixture, shared with test_actions


def summary_of(result: dict[str, object]) -> str:
    steps = final_steps(result["steps"])  # type: ignore[arg-type]
    return summary(steps, dry_run=bool(result["dry_run"]), unresolvable=len(result["unresolvable"]))  # type: ignore[arg-type]


async def test_a_dry_run_summary_counts_the_would_skip_rows(world: World) -> None:
    await world.drift("C02A")
    await world.drift("C02B")
    result = await world.run(max_devices=1)  # over the cap: every row says "would skip"
    assert all(s["detail"].startswith("would skip") for s in result["steps"])
    assert summary_of(result) == "2 planned: would send 0, would skip 2; nothing sent (dry run)"
    result = await world.run()
    assert summary_of(result) == "2 planned: would send 2, would skip 0; nothing sent (dry run)"


async def test_a_live_summary_counts_final_states(world: World) -> None:
    await world.drift("C02A")
    assert summary_of(await world.run(live=True)) == "1 planned: succeeded 1, failed 0, skipped 0"
    again = summary_of(await world.run(live=True))  # already done: skipped
    assert again == "1 planned: succeeded 0, failed 0, skipped 1"


async def test_no_drift_says_there_is_nothing_to_do(world: World) -> None:
    assert summary_of(await world.run()) == "nothing to do: no drifted endpoint to act on"
    await world.drift("C02Z")  # not enrolled in the MDM
    assert summary_of(await world.run()) == (
        "nothing to do: no drifted endpoint to act on; 1 drifted endpoint(s) have no single "
        "MDM device"
    )


async def test_an_unchanged_policy_push_with_force_sync_says_nothing_was_sent(
    world: World,
) -> None:
    world.emulator.add_profile("li-claude")
    world.policies["acme"] = TenantPolicy(tenant="acme", managed_settings={"env": {"A": "1"}})
    args = {"tenant": "acme", "live": True, "force_sync": True}
    first = await operations.run_operation(world.ctx, "policy-push", args)
    assert push_summary(first["entries"], first["force_sync"], True) == [
        "pushed: iru",
        "force-sync: nothing sent, because no device of the updated MDMs is known "
        "(import compliance first: driftline mdm pull)",
    ]
    again = await operations.run_operation(world.ctx, "policy-push", args)
    assert push_summary(again["entries"], again["force_sync"], True) == [
        "unchanged: iru",
        "nothing pushed: the policy's payload is what the MDM already has",
        "force-sync: nothing sent, because no profile was updated by this push",
    ]


def driftline(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *args],
        capture_output=True, text=True, check=False, cwd=data,
    )  # fmt: skip


def test_commands_that_change_nothing_say_so(tmp_path: Path) -> None:
    data = ["--data", str(tmp_path)]
    assert driftline(tmp_path, "tokens", "create", "--tenant", "acme", *data).returncode == 0
    assert "engaged" in driftline(tmp_path, "actions", "stop", *data).stdout
    assert "already engaged" in driftline(tmp_path, "actions", "stop", *data).stdout
    assert "released" in driftline(tmp_path, "actions", "resume", *data).stdout
    assert "was not engaged" in driftline(tmp_path, "actions", "resume", *data).stdout
    pulled = driftline(tmp_path, "mdm", "pull", "--tenant", "acme", *data)
    assert pulled.returncode == 0 and "nothing pulled: tenant acme has no MDM" in pulled.stdout
    assert (
        "no MDM integrations yet"
        in driftline(tmp_path, "mdm", "credentials", "status", *data).stdout
    )
    # before anything was received there is no store: saying "no drift" would be a guess
    nothing = driftline(tmp_path, "drift", "--tenant", "acme", *data)
    assert nothing.returncode != 0 and "nothing received yet" in nothing.stderr
    example = Path(__file__).resolve().parents[1] / "examples" / "compliance.csv"
    imported = driftline(tmp_path, "mdm", "import", str(example), "--vendor", "jamf",
                         "--tenant", "acme", *data)  # fmt: skip
    assert imported.returncode == 0, imported.stderr  # now there is a store, and it says so
    assert (
        "no open drift for tenant acme"
        in driftline(tmp_path, "drift", "--tenant", "acme", *data).stdout
    )
    unknown = driftline(tmp_path, "endpoint", "acme/NOPE", "--tenant", "acme", *data)
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    down = driftline(tmp_path, "kafka", "down", "--kafka-data", str(tmp_path / "no-broker"))
    assert "nothing to stop" in down.stdout
