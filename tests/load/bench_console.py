"""How fast the console's pages are for a 100,000-endpoint tenant (`make bench-console`).

Seeds one tenant of N endpoints (each with two states, the versions and teams of
tests/load/fleet.py, an outdated_client flag on every endpoint below 2.0.10, a resolved flag on
a tenth of them, a retired-token rejection on a hundredth) plus a small second tenant, into an
embedded store, then times each page's queries (the median of 5 runs): what a page costs on
top of rendering, which is small next to them.

    python -m tests.load.bench_console [--endpoints 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import store
from schemas import AuthEvent, AuthReason, DriftFlag, EndpointSnapshot, FlagKind, FlagState, Signal
from store import console as q
from tests.load.fleet import fleet

TENANT = "big"


async def seed(client: store.Client, size: int) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    async with store.BatchWriter(client, max_rows=20_000, max_pending_rows=200_000) as writer:
        for i, laptop in enumerate(fleet(size)):
            endpoint = f"{TENANT}/{laptop.serial}"
            for age, version in (
                (timedelta(days=3), "2.0.8"),
                (timedelta(hours=1), laptop.version),
            ):
                await writer.add(
                    EndpointSnapshot(
                        tenant_id=TENANT, endpoint_id=endpoint, serial_number=laptop.serial,
                        service_name="claude-code", app_version=version, team_id=laptop.team,
                        resource_attributes={"service.name": "claude-code"},
                        signal=Signal.METRICS, observed_at=now - age, received_at=now - age,
                    )
                )  # fmt: skip
            opened = now - timedelta(days=i % 20, hours=1)
            if laptop.version == "2.0.8":  # the only one below 2.0.10
                await writer.add(_flag(endpoint, FlagState.RAISED, opened, opened))
            elif i % 10 == 0:
                await writer.add(_flag(endpoint, FlagState.RAISED, opened, opened))
                resolved = opened + timedelta(minutes=30)
                await writer.add(_flag(endpoint, FlagState.RESOLVED, opened, resolved))
            if i % 100 == 0:
                await writer.add(
                    AuthEvent(
                        tenant_id=TENANT, endpoint_id=endpoint, identity=laptop.serial,
                        token_id="0ldt0ken", reason=AuthReason.RETIRED, source="10.0.0.1",
                        observed_at=now - timedelta(minutes=5),
                    )
                )  # fmt: skip


def _flag(endpoint: str, state: FlagState, opened: datetime, at: datetime) -> DriftFlag:
    return DriftFlag(
        flag_id=f"{endpoint}-outdated", tenant_id=TENANT, endpoint_id=endpoint,
        kind=FlagKind.OUTDATED_CLIENT, state=state, detail="", first_seen=opened, last_seen=at,
        policy_version=1,
    )  # fmt: skip


def timed(work: Callable[[], Any], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=100_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        client = store.connect(f"chdb://{Path(tmp) / 'ch'}")
        store.migrate(client)
        started = time.perf_counter()
        asyncio.run(seed(client, args.endpoints))
        print(f"seeded {args.endpoints:,} endpoints in {time.perf_counter() - started:.0f} s")
        scope = [TENANT]
        fleet_page = q.fleet(client, scope)
        print(
            f"fleet: {fleet_page.endpoints:,} endpoints, {fleet_page.drifting:,} drifting, "
            f"{fleet_page.compliant_percent}% compliant"
        )
        cases: dict[str, Callable[[], Any]] = {
            "Fleet (all its queries)": lambda: q.fleet(client, scope),
            "Endpoints, page 1": lambda: q.endpoints(client, scope, q.EndpointFilter(), 1),
            "Endpoints, page 1,000": lambda: q.endpoints(client, scope, q.EndpointFilter(), 1000),
            "Endpoints, drifting + team": lambda: q.endpoints(
                client, scope, q.EndpointFilter(status="drifting", team="web")
            ),
            "Endpoints, search a serial": lambda: q.endpoints(
                client, scope, q.EndpointFilter(search="C0200004242")
            ),
            "Endpoints, filter choices": lambda: q.filter_choices(client, scope),
            "Endpoint": lambda: q.endpoint(client, scope, f"{TENANT}/C0200004242"),
            "Remediation": lambda: (
                q.remediation_log(client, scope),
                q.remediation_summary(client, scope),
                q.audit_counts(client, scope),
                q.recent_syncs(client, scope),
            ),
            "Tokens": lambda: (
                q.still_on_old_token(client, scope),
                q.rejected_tokens(client, scope),
            ),
            "Policies (changelog)": lambda: q.policy_changelog(client, scope),
            "/metrics gauges (all tenants)": lambda: q.gauges(client),
        }
        print("| page | median of 5 |\n|---|---|")
        for name, work in cases.items():
            print(f"| {name} | {timed(work):,.0f} ms |")
        client.close()


if __name__ == "__main__":
    main()
