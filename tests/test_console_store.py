"""The console's queries on the real engine: the known fleet's numbers, filters, tenant scope."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import store
from schemas import AuthEvent, AuthReason
from store import console as q
from tests.support.console_fleet import seed_client


@pytest.fixture
async def seeded(tmp_path: Path) -> AsyncIterator[tuple[store.Client, datetime]]:
    client = store.connect(f"chdb://{tmp_path / 'ch'}")
    store.migrate(client)
    now = await seed_client(client)
    yield client, now
    client.close()


async def test_fleet_numbers(seeded: tuple[store.Client, datetime]) -> None:
    client, now = seeded
    fleet = q.fleet(client, ["acme"], now=now)
    assert (fleet.endpoints, fleet.drifting, fleet.compliant_percent) == (10, 4, 60.0)
    assert {(r["kind"], r["flags"]) for r in fleet.by_kind} == {
        ("outdated_client", 4),
        ("missing_policy", 1),
    }
    assert {(r["team"], r["kind"], r["flags"]) for r in fleet.by_team} == {
        ("data", "outdated_client", 3),
        ("(no team)", "outdated_client", 1),
        ("(no team)", "missing_policy", 1),
    }
    assert {(r["version"], r["endpoints"], r["outdated"]) for r in fleet.by_version} == {
        ("2.0.14", 6, 0),
        ("2.0.3", 4, 4),
    }
    assert fleet.remediation["synced"] == 1 and fleet.remediation["remediated"] == 1
    assert fleet.remediation["mean_s"] == pytest.approx(7200)
    assert fleet.resolve["resolved"] == 1 and fleet.resolve["mean_s"] == pytest.approx(86400)
    # open drift over time: A0 open 3→2 days ago, A6..A9 opened 4..1 days ago, A9's missing
    # policy 1 day ago; now 5 open
    series = dict(fleet.series)
    assert fleet.series[-1] == (now, 5)
    assert len(fleet.series) == 30 and all(n == 0 for _, n in fleet.series[:20])
    assert max(series.values()) == 5


async def test_tenants_never_mix(seeded: tuple[store.Client, datetime]) -> None:
    client, now = seeded
    globex = q.fleet(client, ["globex"], now=now)
    assert (globex.endpoints, globex.drifting) == (3, 1)
    both = q.fleet(client, None, now=now)
    assert (both.endpoints, both.drifting) == (13, 5)
    assert q.endpoint(client, ["acme"], "globex/G0") is None
    assert q.endpoint(client, ["globex"], "globex/G0") is not None
    total, rows = q.endpoints(client, ["acme"], q.EndpointFilter(search="G"))
    assert (total, rows) == (0, [])
    assert [r["tenant_id"] for r in q.policy_changelog(client, ["acme"])] == ["acme"]
    assert {r["token_id"] for r in q.rejected_tokens(client, ["acme"])} == {"0ldt0ken"}
    assert q.known_tenants(client) == ["acme", "globex"]


async def test_endpoint_filters_and_pages(seeded: tuple[store.Client, datetime]) -> None:
    client, _ = seeded
    acme = ["acme"]

    def ids(where: q.EndpointFilter, page: int = 1, size: int = 50) -> tuple[int, list[str]]:
        total, rows = q.endpoints(client, acme, where, page, size)
        return total, [r["endpoint_id"] for r in rows]

    assert ids(q.EndpointFilter())[0] == 10
    assert ids(q.EndpointFilter(status="drifting")) == (4, [f"acme/A{i}" for i in range(6, 10)])
    assert ids(q.EndpointFilter(kind="missing_policy")) == (1, ["acme/A9"])
    assert ids(q.EndpointFilter(team="(no team)")) == (1, ["acme/A9"])
    assert ids(q.EndpointFilter(team="web", status="compliant"))[0] == 5
    assert ids(q.EndpointFilter(version="2.0.3"))[0] == 4
    assert ids(q.EndpointFilter(search="a7")) == (1, ["acme/A7"])
    assert ids(q.EndpointFilter(), page=2, size=4) == (
        10,
        ["acme/A4", "acme/A5", "acme/A6", "acme/A7"],
    )


async def test_endpoint_story(seeded: tuple[store.Client, datetime]) -> None:
    client, _ = seeded
    a0 = q.endpoint(client, ["acme"], "acme/A0")
    assert a0 is not None
    assert [s["app_version"] for s in a0["states"]] == ["2.0.3", "2.0.14"]
    assert {a["state"] for a in a0["actions"]} == {"planned", "sent", "succeeded"}
    a6 = q.endpoint(client, ["acme"], "acme/A6")
    assert a6 is not None
    assert [(d["vendor"], d["status"]) for d in a6["devices"]] == [("jamf", "noncompliant")]
    assert a6["open_kinds"] == ["outdated_client"]


async def test_rotation_progress(seeded: tuple[store.Client, datetime]) -> None:
    client, now = seeded
    total, rows = q.still_on_old_token(client, ["acme"])
    assert total == 1
    assert (rows[0]["endpoint_id"], rows[0]["tokens"], rows[0]["rejections"]) == (
        "acme/A7",
        ["0ldt0ken"],
        3,
    )
    # one coalesced AuthEvent stands for many rejected requests: they are counted, not the event
    coalesced = AuthEvent(
        tenant_id="acme", endpoint_id="acme/A7", identity="A7", token_id="0ldt0ken",
        reason=AuthReason.RETIRED, source="10.1.2.3", observed_at=now - timedelta(minutes=5),
        count=40, first_observed_at=now - timedelta(minutes=9),
    )  # fmt: skip
    async with store.BatchWriter(client) as writer:
        await writer.add(coalesced)
    assert q.still_on_old_token(client, ["acme"])[1][0]["rejections"] == 43
    [by_token] = q.rejected_tokens(client, ["acme"])
    assert (by_token["endpoints"], by_token["rejections"]) == (1, 43)


async def test_gauges_are_per_tenant_and_kind(seeded: tuple[store.Client, datetime]) -> None:
    client, _ = seeded
    g = q.gauges(client)
    assert {(r["tenant_id"], r["kind"], r["n"]) for r in g["open_drift"]} == {
        ("acme", "outdated_client", 4),
        ("acme", "missing_policy", 1),
        ("globex", "outdated_client", 1),
    }
    assert {(r["tenant_id"], r["vendor"]) for r in g["last_import"]} == {("acme", "jamf")}
    assert {(r["tenant_id"], r["reason"], r["n"]) for r in g["rejections"]} == {
        ("acme", "retired", 3),
        ("globex", "revoked", 1),
    }


async def test_rotation_progress_reads_each_endpoints_latest_token_in_scope(
    seeded: tuple[store.Client, datetime], tmp_path: Path
) -> None:
    from driftline.rotation import rotation_progress
    from ingest.tokens import TokenStore
    from tests.support.console_fleet import rotated_registry

    client, now = seeded
    rows = q.latest_tokens(client, ["acme"], ["acme", "globex"])  # scope wins over the ask
    assert len(rows) == 10 and all(r["endpoint_id"].startswith("acme/") for r in rows)
    assert {r["endpoint_id"] for r in rows if r["token_id"] == "ac01d000"} == {"acme/A8"}
    assert q.latest_tokens(client, None, ["globex"])[0]["endpoint_id"].startswith("globex/")
    # the seeded ids are the fixed defaults; a registry that rotated gives them meaning
    tokens = rotated_registry(tmp_path / "tokens.db")
    records = TokenStore(tmp_path / "tokens.db").records("acme")
    renamed = {"ac01d000": tokens["acme"][0], "ac2e3000": tokens["acme"][1]}
    seen = [{**r, "token_id": renamed[r["token_id"]]} for r in rows]
    progress = rotation_progress(records, seen, now.timestamp() + 60)
    assert [r.token_id for r in progress.retiring] == [tokens["acme"][0]]
    assert [(r["endpoint_id"], r["token_id"]) for r in progress.still] == [
        ("acme/A8", tokens["acme"][0])
    ]
    assert progress.moved == 9
