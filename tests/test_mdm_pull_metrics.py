"""MDM pull health in /metrics: a pull through the vendor's API (the Iru emulator) sets the
gauge to 1, a pull the MDM refuses sets it to 0 and keeps the last success's time."""

from __future__ import annotations

from prometheus_client import REGISTRY

from actions import operations
from tests.test_actions import World, world  # noqa: F401 -- the fixture

LABELS = {"tenant": "acme", "vendor": "iru"}


def sample(name: str) -> float | None:
    value: float | None = REGISTRY.get_sample_value(name, LABELS)
    return value


async def test_pull_health_follows_the_mdms_answers(world: World) -> None:  # noqa: F811
    pulled = await operations.mdm_pull(world.ctx, {"tenant": "acme"})
    assert pulled["imported"]["iru"] >= 2 and pulled["errors"] == {}
    assert sample("driftline_mdm_pull_ok") == 1
    succeeded_at = sample("driftline_mdm_pull_last_success_timestamp_seconds")
    assert succeeded_at is not None

    world.emulator.revoke_token(world.token)
    failed = await operations.mdm_pull(world.ctx, {"tenant": "acme"})
    assert "iru" in failed["errors"]
    assert sample("driftline_mdm_pull_ok") == 0
    assert sample("driftline_mdm_pull_last_success_timestamp_seconds") == succeeded_at
