"""The load test's fleet and ground truth: pure, so checked here case by case, without I/O."""

from __future__ import annotations

import dataclasses
from collections import Counter
from datetime import UTC, datetime

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from loadtest import fleet as fm
from loadtest.fleet import CLAUDE, OTHER_TOOL, Laptop, Role, Send, Tool
from loadtest.otlp import encode, template
from loadtest.report import score
from loadtest.sender import Stats
from loadtest.truth import Cause, _outdated, expected, ground_truth
from schemas import FlagKind

TENANTS = ("acme", "beta", "gamma")


@pytest.fixture(scope="module")
def sc() -> fm.Scenario:
    return fm.scenario(300, 250, 40, TENANTS)


@pytest.fixture(scope="module")
def laptops(sc: fm.Scenario) -> list[Laptop]:
    return fm.fleet(300, sc, seed=7)


def _states(truth: object, laptop: Laptop, kind: FlagKind) -> list[str]:
    return [t.state for t in truth.transitions.get((laptop.endpoint_id, kind), [])]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("version", "minimum", "outdated"),
    [
        ("2.0.9", "2.0.10", True),  # numeric, not string, ordering: "2.0.9" > "2.0.10" as text
        ("2.0.10", "2.0.10", False),
        ("2.0.10rc1", "2.0.10", True),  # a pre-release is below its release
        ("2.0.10-rc.1", "2.0.10", True),  # normalised by PEP 440 to 2.0.10rc1
        ("2.0.10+local", "2.0.10", False),  # a local version sorts after its public one
        ("2.0.9+local", "2.0.10", True),
        ("2.1.0rc2", "2.1.0", True),
        ("2.0.x-dev", "2.0.10", True),  # does not parse: flagged as such
        ("latest", "2.0.10", True),
        ("0.9.1", None, False),  # no minimum for the tool
    ],
)
def test_version_rules(version: str, minimum: str | None, outdated: bool) -> None:
    assert _outdated(version, minimum) is outdated


def test_fleet_is_deterministic_and_has_every_hard_case(
    sc: fm.Scenario, laptops: list[Laptop]
) -> None:
    again = fm.fleet(300, sc, seed=7)
    assert again == laptops
    assert fm.fleet(300, sc, seed=8) != laptops
    roles = Counter(laptop.role for laptop in laptops)
    assert set(roles) == set(Role)
    assert all(laptop.tenant == "acme" for laptop in laptops if laptop.role in fm.ROTATION_ROLES)
    teams = Counter(laptop.tools[0].team for laptop in laptops)
    assert teams[None] > 0 and teams[""] > 0
    assert any(len(laptop.tools) == 2 for laptop in laptops)
    versions = {laptop.tools[0].version for laptop in laptops}
    assert {"2.0.9", "2.0.10"} <= versions
    serials = Counter(laptop.serial for laptop in laptops)
    shared = [serial for serial, count in serials.items() if count > 1]
    assert shared, "the same serial in two tenants"
    for serial in shared:
        tenants = [laptop.tenant for laptop in laptops if laptop.serial == serial]
        assert len(tenants) == len(set(tenants))
    assert len({laptop.endpoint_id for laptop in laptops}) == len(laptops)


def test_sends_keep_clear_of_each_laptops_own_events(
    sc: fm.Scenario, laptops: list[Laptop]
) -> None:
    for laptop in laptops:
        planned = fm.sends(laptop, sc)
        assert [s.at for s in planned] == sorted(s.at for s in planned)
        for send in planned:
            for moment in (laptop.switch_at, laptop.fix_at):
                assert moment is None or abs(send.at - moment) >= sc.margin
            if laptop.tenant not in sc.rotated:
                assert send.accepted and not send.new_token
            elif not send.new_token:
                # the old token: certainly before the grace ends, or certainly after
                assert abs(send.at - sc.grace_ends) >= sc.margin
                assert send.accepted is (send.at < sc.grace_ends)
            else:
                assert send.at >= sc.rotate_at + sc.margin and send.accepted
            if laptop.stop_at is not None:
                assert send.at < laptop.stop_at
            if laptop.fix_at is not None:  # no fixed state reaches the pipeline with the policy
                assert not -sc.margin <= send.at - sc.policy_at < sc.policy_guard


def test_stale_token_truth_by_role(sc: fm.Scenario, laptops: list[Laptop]) -> None:
    truth = ground_truth(laptops, sc)
    rule = sc.policies["acme"].stale_token
    for laptop in laptops:
        states = _states(truth, laptop, FlagKind.STALE_TOKEN)
        rejected = [s for s in fm.sends(laptop, sc) if not s.accepted]
        match laptop.role:
            case Role.STALE:
                assert states == ["raised"]
            case Role.STALE_FIXED | Role.STALE_BURST:
                assert states == ["raised", "resolved"]
            case Role.LATE:
                assert states == [] and len(rejected) == rule.threshold - 1
            case _:
                assert states == [] and not rejected
        if laptop.role is Role.STALE_BURST:
            burst = [sc.real(s.at) for s in rejected]
            assert len(burst) == 4 and burst[-1] - burst[0] < 0.2  # within a fraction of a second
        if states:
            raise_ = truth.transitions[(laptop.endpoint_id, FlagKind.STALE_TOKEN)][0]
            assert raise_.cause is Cause.SEND and raise_.seq == rejected[rule.threshold - 1].seq


def _one(
    sc: fm.Scenario, tools: tuple[Tool, ...], tenant: str = "acme", **changes: object
) -> Laptop:
    base = Laptop(0, tenant, "C02TEST00001", Role.REGULAR, tools, 1.0, None, None, None, None)
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def _send(at: float, seq: int, tool: int = 0, variant: int = 0, accepted: bool = True) -> Send:
    return Send(at, 0, seq, tool, "metrics", False, variant, accepted)


def test_one_tools_exports_never_resolve_anothers_flag(sc: fm.Scenario) -> None:
    laptop = _one(sc, (Tool(CLAUDE, "2.1.0", "web"), Tool(OTHER_TOOL, "0.9.1", "web")), "beta")
    plan = [_send(10, 0), _send(20, 1, tool=1), _send(30, 2), _send(40, 3)]
    result = expected(laptop, sc, plan)
    outdated = result[(laptop.endpoint_id, FlagKind.OUTDATED_CLIENT)]
    assert [(t.state, t.seq) for t in outdated] == [
        ("raised", 1)
    ]  # claude's 2 and 3 resolve nothing
    assert (laptop.endpoint_id, FlagKind.MISSING_POLICY) not in result


def test_policy_change_reevaluates_a_silent_endpoint(sc: fm.Scenario) -> None:
    # acme's change raises claude-code's minimum to 2.1.0; the laptop fell silent before it
    laptop = _one(sc, (Tool(CLAUDE, "2.0.12", "web"),), stop_at=sc.quiet_at)
    result = expected(laptop, sc, [_send(10, 0)])
    (transition,) = result[(laptop.endpoint_id, FlagKind.OUTDATED_CLIENT)]
    assert transition.state == "raised" and transition.cause is Cause.POLICY
    assert transition.at == sc.policy_at
    # beta's change lowers the minimum to 2.0.9: its 2.0.9 laptop resolves without a word
    beta = _one(sc, (Tool(CLAUDE, "2.0.9", "web"),), "beta")
    states = expected(beta, sc, [_send(10, 0)])[(beta.endpoint_id, FlagKind.OUTDATED_CLIENT)]
    assert [(t.state, t.cause) for t in states] == [
        ("raised", Cause.SEND),
        ("resolved", Cause.POLICY),
    ]


def test_missing_and_empty_team_and_their_fix(sc: fm.Scenario) -> None:
    for team in (None, "", "   "):
        laptop = _one(
            sc,
            (Tool(CLAUDE, "2.1.0", team, fixed_version="2.1.0", fixed_team="web"),),
            "beta",
            fix_at=100.0,
        )
        plan = [_send(10, 0), _send(150, 1, variant=1)]
        states = expected(laptop, sc, plan)[(laptop.endpoint_id, FlagKind.MISSING_POLICY)]
        assert [(t.state, t.seq) for t in states] == [("raised", 0), ("resolved", 1)]


def test_rejections_spread_beyond_the_window_are_not_stale(sc: fm.Scenario) -> None:
    laptop = _one(sc, (Tool(CLAUDE, "2.1.0", "web"),))
    window = sc.policies["acme"].stale_token.window.total_seconds() * sc.compression
    start = sc.grace_ends + sc.margin
    spread = [_send(start + k * 0.6 * window, k + 1, accepted=False) for k in range(4)]
    assert expected(laptop, sc, [_send(10, 0), *spread]) == {}
    close = [_send(start + k, k + 1, accepted=False) for k in range(3)]
    states = expected(laptop, sc, [_send(10, 0), *close])[
        (laptop.endpoint_id, FlagKind.STALE_TOKEN)
    ]
    assert [(t.state, t.seq) for t in states] == [("raised", 3)]


def test_templates_are_claude_code_shaped_and_carry_the_send_time(
    sc: fm.Scenario, laptops: list[Laptop]
) -> None:
    laptop = next(laptop for laptop in laptops if laptop.tools[0].team)
    now = 1_765_000_000_123_456_789
    metrics = ExportMetricsServiceRequest.FromString(
        template(encode(laptop, 0, "metrics", 0)).body(now)
    )
    (rm,) = metrics.resource_metrics
    resource = {kv.key: kv.value.string_value for kv in rm.resource.attributes}
    assert resource["service.name"] == CLAUDE
    assert resource["service.version"] == laptop.tools[0].version
    assert resource["device.serial_number"] == laptop.serial
    assert resource["team.id"] == laptop.tools[0].team
    names = {metric.name for metric in rm.scope_metrics[0].metrics}
    assert {
        "claude_code.session.count",
        "claude_code.token.usage",
        "claude_code.cost.usage",
    } <= names
    for metric in rm.scope_metrics[0].metrics:
        (point,) = metric.sum.data_points
        assert point.time_unix_nano == now
        attributes = {kv.key: kv.value.string_value for kv in point.attributes}
        assert attributes["app.version"] == laptop.tools[0].version
    logs = ExportLogsServiceRequest.FromString(template(encode(laptop, 0, "logs", 0)).body(now))
    records = logs.resource_logs[0].scope_logs[0].log_records
    assert {r.body.string_value for r in records} >= {
        "claude_code.user_prompt",
        "claude_code.tool_result",
        "claude_code.api_request",
    }
    assert all(r.time_unix_nano == now and r.observed_time_unix_nano == now for r in records)


def test_score_against_the_truth(sc: fm.Scenario, laptops: list[Laptop]) -> None:
    truth = ground_truth(laptops, sc)
    at = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
    for (endpoint, kind), transitions in truth.transitions.items():
        for n, transition in enumerate(transitions):
            episode = f"{endpoint}|{kind}|{n // 2}"
            rows.append(
                {
                    "endpoint_id": endpoint,
                    "kind": kind.value,
                    "state": transition.state,
                    "flag_id": episode,
                    "first_seen": at.replace(second=n // 2),
                    "last_seen": at,
                    "recorded_at": at,
                }
            )
    perfect = score(truth, rows, Stats(), laptops)["accuracy"]
    assert all(row["precision"] == 1.0 and row["recall"] == 1.0 for row in perfect.values())
    stale = next(r for r in rows if r["kind"] == "stale_token" and r["state"] == "resolved")
    innocent = next(laptop for laptop in laptops if not any(
        k[0] == laptop.endpoint_id for k in truth.transitions))  # fmt: skip
    wrong = [r for r in rows if r is not stale] + [
        {**stale, "endpoint_id": innocent.endpoint_id, "flag_id": "x", "state": "raised"}
    ]
    accuracy = score(truth, wrong, Stats(), laptops)["accuracy"]["stale_token"]
    assert accuracy["fn"] == 1 and accuracy["fp"] == 1
    assert accuracy["recall"] < 1.0 and accuracy["precision"] < 1.0
    assert "expected raised → resolved, got raised" in accuracy["misses"][0]


def test_rotation_storm_rotates_every_tenant_with_many_laggards() -> None:
    storm = fm.scenario(600, 250, 40, TENANTS, storm=True)
    assert storm.rotated == TENANTS
    laptops = fm.fleet(600, storm)
    laggards = [laptop for laptop in laptops if laptop.role in fm.ROTATION_ROLES]
    assert {laptop.tenant for laptop in laggards} == set(TENANTS)
    assert len(laggards) > 0.7 * len(laptops)
    truth = ground_truth(laptops, storm)
    stale = truth.positives(FlagKind.STALE_TOKEN)
    assert stale == {laptop.endpoint_id for laptop in laggards if laptop.role is not Role.LATE}
