from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from packaging.version import InvalidVersion, Version

from processors import state as state_module
from processors.detectors import (
    apply,
    event_time,
    flag_id,
    format_duration,
    missing_policy,
    outdated_client,
    reevaluate,
    stale_token,
)
from processors.state import EndpointState, intern_keys, present_attributes
from schemas.messages import (
    AuthEvent,
    AuthReason,
    DriftFlag,
    EndpointSnapshot,
    FlagKind,
    FlagState,
    Signal,
)
from schemas.policy import StaleTokenPolicy, TenantPolicy, ToolPolicy

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
ENDPOINT = "acme/C02X"
OUTDATED = FlagKind.OUTDATED_CLIENT
MISSING = FlagKind.MISSING_POLICY
STALE = FlagKind.STALE_TOKEN
Event = EndpointSnapshot | AuthEvent


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def snap(
    t: float = 0,
    version: str | None = "2.0.10",
    *,
    service: str = "claude-code",
    team: str | None = "eng",
    attributes: dict[str, str] | None = None,
    endpoint: str = ENDPOINT,
    tenant: str = "acme",
) -> EndpointSnapshot:
    resource = {"service.name": service, "host.name": "mac"}
    if team is not None:
        resource["team.id"] = team
    resource.update(attributes or {})
    return EndpointSnapshot(
        tenant_id=tenant,
        endpoint_id=endpoint,
        serial_number=None,
        service_name=service,
        app_version=version,
        team_id=team or None,
        resource_attributes=resource,
        signal=Signal.METRICS,
        observed_at=at(t),
        received_at=at(t),
    )


def reject(
    t: float,
    reason: AuthReason = AuthReason.RETIRED,
    *,
    endpoint: str | None = ENDPOINT,
    tenant: str | None = "acme",
    count: int = 1,
    first: float | None = None,
) -> AuthEvent:
    return AuthEvent(
        tenant_id=tenant,
        endpoint_id=endpoint,
        identity="C02X",
        token_id="tok1",
        reason=reason,
        source="10.0.0.1",
        observed_at=at(t),
        count=count,
        first_observed_at=at(t if first is None else first),
    )


def policy(
    minimum: str | None = "2.0.10",
    *,
    required: Sequence[str] = ("team.id",),
    threshold: int = 3,
    window: float = 600,
    rotated: float | None = -3600,
    version: int = 1,
    service: str = "claude-code",
) -> TenantPolicy:
    return TenantPolicy(
        tenant="acme",
        version=version,
        tools={} if minimum is None else {service: ToolPolicy(minimum_version=minimum)},
        required_attributes=tuple(required),
        stale_token=StaleTokenPolicy(threshold=threshold, window=timedelta(seconds=window)),
        token_rotated_at=None if rotated is None else at(rotated),
    )


POLICY = policy()


def run(
    events: Iterable[Event], rules: TenantPolicy = POLICY, start: EndpointState | None = None
) -> tuple[EndpointState | None, list[DriftFlag]]:
    current = start
    flags: list[DriftFlag] = []
    for event in events:
        current, new = apply(current, event, rules)
        flags.extend(new)
    return current, flags


def run_state(events: Iterable[Event], rules: TenantPolicy = POLICY) -> EndpointState:
    current, _ = run(events, rules)
    assert current is not None
    return current


def transitions(flags: Iterable[DriftFlag]) -> list[tuple[FlagKind, FlagState]]:
    return [(flag.kind, flag.state) for flag in flags]


def open_kinds(current: EndpointState | None) -> set[FlagKind]:
    return set() if current is None else {flag.kind for flag in current.open_flags}


# ------------------------------------------------------------------------- outdated_client


@pytest.mark.parametrize(
    ("version", "outdated"),
    [
        ("2.0.9", True),
        ("2.0.10", False),  # equal is not outdated
        ("2.0.11", False),
        ("2.1", False),
        ("2", True),
        ("2.0.10rc1", True),  # pre-releases come before their release
        ("2.0.10a1", True),
        ("2.0.10.dev0", True),
        ("2.0.10.post1", False),
        ("2.0.10+local.1", False),
        ("v2.0.10", False),
        ("10.0.0", False),  # numeric, not lexicographic
    ],
)
def test_outdated_compares_as_versions(version: str, outdated: bool) -> None:
    _, flags = run([snap(0, version)])
    assert transitions(flags) == ([(OUTDATED, FlagState.RAISED)] if outdated else [])


def test_raised_flag_fields() -> None:
    _, flags = run([snap(5, "2.0.3")])
    assert flags == [
        DriftFlag(
            flag_id=flag_id("acme", ENDPOINT, OUTDATED, at(5)),
            tenant_id="acme",
            endpoint_id=ENDPOINT,
            kind=OUTDATED,
            state=FlagState.RAISED,
            detail="2.0.3 < minimum 2.0.10 for claude-code",
            first_seen=at(5),
            last_seen=at(5),
            policy_version=1,
        )
    ]


def test_unparseable_version_is_flagged_never_raised_as_exception() -> None:
    _, flags = run([snap(0, "banana")])
    assert transitions(flags) == [(OUTDATED, FlagState.RAISED)]
    assert flags[0].detail == "app_version 'banana' does not parse; minimum 2.0.10 for claude-code"


def test_no_version_reported_with_a_minimum_is_flagged() -> None:
    _, flags = run([snap(0, None)])
    assert [flag.detail for flag in flags] == [
        "no version reported; minimum 2.0.10 for claude-code"
    ]


@pytest.mark.parametrize("version", ["2.0.3", "banana", None])
def test_no_minimum_for_the_service_means_no_flag(version: str | None) -> None:
    assert run([snap(0, version)], policy(None))[1] == []
    assert run([snap(0, version)], policy("9.9", service="other-tool"))[1] == []


def test_upgrade_resolves_with_the_same_flag_id() -> None:
    _, flags = run([snap(0, "2.0.3"), snap(60, "2.0.12")])
    raised, resolved = flags
    assert resolved.state is FlagState.RESOLVED
    assert resolved.flag_id == raised.flag_id
    assert (resolved.first_seen, resolved.last_seen) == (at(0), at(60))
    assert resolved.detail == "2.0.12 >= minimum 2.0.10 for claude-code"


def test_still_outdated_emits_nothing_but_tracks_the_detail() -> None:
    current, flags = run([snap(0, "2.0.3"), snap(60, "2.0.5"), snap(120, "banana")])
    assert transitions(flags) == [(OUTDATED, FlagState.RAISED)]
    assert current is not None
    opened = current.open_flag(OUTDATED)
    assert opened is not None
    assert opened.first_seen == at(0)
    assert opened.detail == "app_version 'banana' does not parse; minimum 2.0.10 for claude-code"


def test_a_second_tool_on_the_laptop_does_not_flap_the_first_ones_flag() -> None:
    """Two OTel tools export from one laptop: each is judged on its own latest snapshot."""
    events = [snap(t, "2.0.3") if i % 2 == 0 else snap(t, "1.0", service="other-tool")
              for i, t in enumerate(range(0, 600, 30))]  # fmt: skip
    state, flags = run(events)
    assert transitions(flags) == [(OUTDATED, FlagState.RAISED)]  # raised once, never flapping
    assert state is not None and state.service_name == "other-tool"
    assert [o.service_name for o in state.others] == ["claude-code"]
    (opened,) = state.open_flags
    assert opened.detail == "2.0.3 < minimum 2.0.10 for claude-code"

    # the outdated tool is updated: resolved, although the other tool keeps exporting
    _, later = run([*events, snap(601, "2.0.12"), snap(602, "1.0", service="other-tool")])
    assert transitions(later) == [(OUTDATED, FlagState.RAISED), (OUTDATED, FlagState.RESOLVED)]
    assert later[1].detail == (
        "2.0.12 >= minimum 2.0.10 for claude-code; no minimum version for other-tool"
    )


def test_a_tool_not_seen_for_a_week_stops_counting() -> None:
    week = 7 * 24 * 3600
    _, flags = run([snap(0, "2.0.3"), snap(60, "1.0", service="other-tool")])
    assert transitions(flags) == [(OUTDATED, FlagState.RAISED)]
    _, flags = run(
        [
            snap(0, "2.0.3"),
            snap(60, "1.0", service="other-tool"),
            snap(week + 1, service="other-tool"),
        ]
    )
    assert transitions(flags) == [(OUTDATED, FlagState.RAISED), (OUTDATED, FlagState.RESOLVED)]
    assert flags[1].detail == "no minimum version for other-tool"


def test_each_tool_needs_the_required_attributes() -> None:
    _, flags = run([snap(0), snap(30, service="other-tool", team=None)])
    assert transitions(flags) == [(MISSING, FlagState.RAISED)]
    assert flags[0].detail == "other-tool: missing required attributes: team.id"
    _, flags = run(
        [snap(0), snap(30, service="other-tool", team=None), snap(60, service="other-tool")]
    )
    assert transitions(flags) == [(MISSING, FlagState.RAISED), (MISSING, FlagState.RESOLVED)]


def test_outdated_rule_directly() -> None:
    rules = policy("2.0.10")
    assert outdated_client("claude-code", "2.0.3", rules).drifted
    assert not outdated_client("claude-code", "2.0.10", rules).drifted
    assert not outdated_client("codex", None, rules).drifted
    hand_built = TenantPolicy.model_construct(
        tenant="acme", tools={"x": ToolPolicy.model_construct(minimum_version="nope")}
    )
    assert outdated_client("x", "1.0", hand_built) == (False, "minimum 'nope' for x does not parse")


# -------------------------------------------------------------------------- missing_policy


def test_team_id_in_resource_is_enough() -> None:
    assert run([snap(0)])[1] == []


def test_team_id_from_the_record_counts() -> None:
    event = snap(0, team=None).model_copy(update={"team_id": "eng"})
    assert "team.id" not in event.resource_attributes
    assert run([event])[1] == []


@pytest.mark.parametrize("team", [None, "", "   "])
def test_absent_or_blank_team_is_missing(team: str | None) -> None:
    event = snap(0, team=team).model_copy(update={"team_id": team})
    _, flags = run([event])
    assert transitions(flags) == [(MISSING, FlagState.RAISED)]
    assert flags[0].detail == "missing required attributes: team.id"


def test_multiple_missing_are_listed_sorted() -> None:
    rules = policy(required=("team.id", "cost.center", "a.b", "host.name"))
    _, flags = run([snap(0, team=None, attributes={"cost.center": ""})], rules)
    assert [flag.detail for flag in flags] == [
        "missing required attributes: a.b, cost.center, team.id"
    ]


def test_partial_fix_keeps_the_flag_and_full_fix_resolves() -> None:
    rules = policy(required=("team.id", "cost.center"))
    current, flags = run(
        [snap(0, team=None), snap(60, team="eng"), snap(120, attributes={"cost.center": "cc"})],
        rules,
    )
    assert transitions(flags) == [(MISSING, FlagState.RAISED), (MISSING, FlagState.RESOLVED)]
    assert flags[1].detail == "all required attributes present"
    assert flags[1].last_seen == at(120)
    assert open_kinds(current) == set()


def test_no_required_attributes_means_no_flag() -> None:
    assert run([snap(0, team=None)], policy(required=()))[1] == []


def test_both_rules_can_fire_on_one_snapshot_in_kind_order() -> None:
    current, flags = run([snap(0, "1.0", team=None)])
    assert transitions(flags) == [(OUTDATED, FlagState.RAISED), (MISSING, FlagState.RAISED)]
    assert current is not None
    assert [flag.kind for flag in current.open_flags] == [OUTDATED, MISSING]


def test_missing_rule_directly() -> None:
    rules = policy(required=("b", "a"))
    assert missing_policy(frozenset({"a", "b"}), rules) == (
        False,
        "all required attributes present",
    )
    assert missing_policy(set(), rules) == (True, "missing required attributes: a, b")


# ----------------------------------------------------------------------------- stale_token


def test_threshold_rejections_within_window_raise_once() -> None:
    current, flags = run([reject(0), reject(60), reject(120), reject(180)])
    assert transitions(flags) == [(STALE, FlagState.RAISED)]
    assert flags[0].first_seen == at(120)
    assert flags[0].detail.startswith(
        "3 requests rejected with a retired or revoked token within 10m"
    )
    assert current is not None
    assert len(current.rejections) == 3  # never more than the threshold


def test_below_threshold_does_not_raise() -> None:
    assert run([reject(0), reject(60)])[1] == []


def test_revoked_counts_like_retired() -> None:
    events = [reject(0, AuthReason.REVOKED), reject(1), reject(2, AuthReason.REVOKED)]
    assert transitions(run(events)[1]) == [(STALE, FlagState.RAISED)]


@pytest.mark.parametrize("reason", [AuthReason.MISSING, AuthReason.MALFORMED, AuthReason.UNKNOWN])
def test_other_reasons_are_ignored(reason: AuthReason) -> None:
    assert run([reject(t, reason) for t in range(5)]) == (None, [])


def test_window_is_inclusive_and_slides() -> None:
    exactly = [reject(0), reject(300), reject(600)]
    assert transitions(run(exactly)[1]) == [(STALE, FlagState.RAISED)]
    too_wide = [reject(0), reject(300), reject(601)]
    assert run(too_wide)[1] == []
    sliding = [*too_wide, reject(700)]  # 300, 601, 700 fit
    _, flags = run(sliding)
    assert [flag.first_seen for flag in flags] == [at(700)]


def test_no_rotation_never_raises() -> None:
    assert run([reject(t) for t in range(10)], policy(rotated=None))[1] == []


def test_rejections_before_the_rotation_do_not_count() -> None:
    rules = policy(rotated=100)
    assert run([reject(98), reject(99), reject(100)], rules)[1] == []
    _, flags = run([reject(98), reject(99), reject(100), reject(101), reject(102)], rules)
    assert [flag.first_seen for flag in flags] == [at(102)]
    # at the rotation instant counts
    assert len(run([reject(100), reject(101), reject(102)], rules)[1]) == 1


def test_a_coalesced_event_counts_every_request_it_stands_for() -> None:
    # the receiver sent the first rejection at once and coalesced the next three into one
    current, flags = run([reject(0), reject(1.5, count=3, first=0.5)])
    assert transitions(flags) == [(STALE, FlagState.RAISED)]
    assert flags[0].first_seen == at(1.5)
    assert current is not None
    assert current.rejections == (at(0.5), at(1.5), at(1.5))
    # one event alone can carry the threshold
    assert transitions(run([reject(2, count=3, first=0)])[1]) == [(STALE, FlagState.RAISED)]
    assert run([reject(2, count=2, first=0)])[1] == []


def test_a_coalesced_event_replayed_counts_once() -> None:
    event = reject(1, count=2, first=0)
    assert run([event, event, event])[1] == []


def test_a_coalesced_run_wider_than_the_window_does_not_raise_alone() -> None:
    assert run([reject(700, count=3, first=0)])[1] == []  # 0, 700, 700
    assert run([reject(700, count=3, first=0), reject(701)])[1] != []  # 700, 700, 701
    assert run([reject(700), reject(1400, count=2, first=701)])[1] == []  # 700, 701, 1400


def test_duplicate_rejection_at_one_instant_counts_once() -> None:
    assert run([reject(0), reject(0), reject(0), reject(1)])[1] == []


def test_authenticated_request_after_the_last_rejection_resolves() -> None:
    current, flags = run([reject(0), reject(1), reject(2), snap(3)])
    assert transitions(flags) == [(STALE, FlagState.RAISED), (STALE, FlagState.RESOLVED)]
    raised, resolved = flags
    assert resolved.flag_id == raised.flag_id
    assert (resolved.first_seen, resolved.last_seen) == (at(2), at(3))
    assert "after the last rejection" in resolved.detail
    assert current is not None
    assert current.rejections == ()


def test_request_at_the_same_instant_as_the_last_rejection_does_not_resolve() -> None:
    current, flags = run([reject(0), reject(1), reject(2), snap(2)])
    assert transitions(flags) == [(STALE, FlagState.RAISED)]
    assert current is not None
    assert current.rejections == (at(2),)
    _, later = run([snap(3)], start=current)
    assert transitions(later) == [(STALE, FlagState.RESOLVED)]


def test_older_request_arriving_late_does_not_resolve() -> None:
    current, flags = run([reject(0), reject(1), reject(5), snap(4)])
    assert transitions(flags) == [(STALE, FlagState.RAISED)]
    assert open_kinds(current) == {STALE}


def test_more_rejections_while_stale_emit_nothing() -> None:
    current, flags = run([reject(t) for t in range(0, 3000, 60)])
    assert transitions(flags) == [(STALE, FlagState.RAISED)]
    assert current is not None
    opened = current.open_flag(STALE)
    assert opened is not None
    assert opened.detail.endswith(f"last at {at(2940).isoformat()}")


def test_stale_stays_open_when_rejections_thin_out() -> None:
    # raised once; a lapse in the rejection rate is not an authenticated request
    _, flags = run([reject(0), reject(1), reject(2), reject(5000), reject(10000)])
    assert transitions(flags) == [(STALE, FlagState.RAISED)]


def test_an_authenticated_request_starts_the_count_afresh() -> None:
    assert run([reject(0), reject(1), snap(2), reject(3)])[1] == []
    assert len(run([reject(0), reject(1), snap(2), reject(3), reject(4), reject(5)])[1]) == 1


def test_auth_event_creates_state_without_snapshot_rules() -> None:
    current, flags = run([reject(0)], policy("9.0", required=("team.id", "x")))
    assert flags == []
    assert current is not None
    assert not current.has_snapshot
    assert (current.tenant_id, current.endpoint_id, current.rejections) == (
        "acme",
        ENDPOINT,
        (at(0),),
    )


@pytest.mark.parametrize(("tenant", "endpoint"), [(None, ENDPOINT), ("acme", None), (None, None)])
def test_auth_event_without_tenant_or_endpoint_is_ignored(
    tenant: str | None, endpoint: str | None
) -> None:
    event = reject(10, tenant=tenant, endpoint=endpoint)
    assert apply(None, event, POLICY) == (None, [])
    known = run_state([snap(0)])
    unchanged, flags = apply(known, event, POLICY)
    assert unchanged is known
    assert flags == []


def test_stale_rule_directly() -> None:
    rules = policy(threshold=2, window=60, rotated=0)
    assert not stale_token([at(-1), at(0)], rules).drifted
    assert stale_token([at(0), at(60)], rules).drifted
    assert not stale_token([at(0), at(61)], rules).drifted
    assert stale_token([], policy(rotated=None)) == (False, "no token rotation recorded")


# ------------------------------------------------------------------------------ reevaluate


def test_raising_the_minimum_raises_at_policy_time() -> None:
    known = run_state([snap(0, "2.0.10")])
    current, flags = reevaluate(known, policy("2.0.12", version=2), at(500))
    assert transitions(flags) == [(OUTDATED, FlagState.RAISED)]
    assert (flags[0].first_seen, flags[0].last_seen, flags[0].policy_version) == (
        at(500),
        at(500),
        2,
    )
    assert flags[0].flag_id == flag_id("acme", ENDPOINT, OUTDATED, at(500))
    assert open_kinds(current) == {OUTDATED}


@pytest.mark.parametrize("rules", [policy("2.0.3", version=2), policy(None, version=2)])
def test_lowering_or_dropping_the_minimum_resolves(rules: TenantPolicy) -> None:
    known = run_state([snap(0, "2.0.5")])
    current, flags = reevaluate(known, rules, at(500))
    assert transitions(flags) == [(OUTDATED, FlagState.RESOLVED)]
    assert (flags[0].first_seen, flags[0].last_seen) == (at(0), at(500))
    assert open_kinds(current) == set()


def test_required_attributes_changes_both_ways() -> None:
    known = run_state([snap(0)])
    stricter, raised = reevaluate(known, policy(required=("team.id", "cost.center")), at(10))
    assert [flag.detail for flag in raised] == ["missing required attributes: cost.center"]
    relaxed, resolved = reevaluate(stricter, policy(required=("team.id",)), at(20))
    assert transitions(resolved) == [(MISSING, FlagState.RESOLVED)]
    assert resolved[0].flag_id == raised[0].flag_id
    assert open_kinds(relaxed) == set()


def test_reevaluate_under_the_same_policy_is_a_no_op() -> None:
    known = run_state([snap(0, "1.0", team=None), reject(1), reject(2), reject(3)])
    assert open_kinds(known) == {OUTDATED, MISSING, STALE}
    again, flags = reevaluate(known, POLICY, at(100))
    assert flags == []
    assert again is known


def test_still_outdated_under_a_new_minimum_updates_the_detail_only() -> None:
    known = run_state([snap(0, "2.0.3")])
    current, flags = reevaluate(known, policy("2.0.12"), at(10))
    assert flags == []
    opened = current.open_flag(OUTDATED)
    assert opened is not None
    assert opened.detail == "2.0.3 < minimum 2.0.12 for claude-code"


def test_reevaluate_without_snapshot_checks_only_the_token() -> None:
    known = run_state([reject(0), reject(1), reject(2)], policy(rotated=None))
    assert open_kinds(known) == set()
    _, flags = reevaluate(known, policy("9.0", rotated=-10), at(50))
    assert transitions(flags) == [(STALE, FlagState.RAISED)]
    assert flags[0].first_seen == at(50)  # the rotation became known now


def test_policy_change_never_resolves_a_stale_token() -> None:
    known = run_state([reject(0), reject(1), reject(2)])
    for rules in (policy(rotated=None), policy(rotated=1000), policy(threshold=10)):
        current, flags = reevaluate(known, rules, at(2000))
        assert flags == []
        assert open_kinds(current) == {STALE}


def test_lower_threshold_trims_rejections() -> None:
    known = run_state([reject(0), reject(1)], policy(threshold=5))
    current, flags = reevaluate(known, policy(threshold=1), at(10))
    assert current.rejections == (at(1),)
    assert transitions(flags) == [(STALE, FlagState.RAISED)]


def test_resolution_before_first_seen_is_clamped() -> None:
    known = run_state([snap(100, "2.0.3")])
    _, flags = reevaluate(known, policy("1.0"), at(50))
    assert (flags[0].first_seen, flags[0].last_seen) == (at(100), at(100))


def test_apply_converges_to_a_new_policy_without_reevaluate() -> None:
    known = run_state([snap(0, "2.0.5")])
    _, flags = apply(known, snap(10, "2.0.5"), policy("2.0.3"))
    assert transitions(flags) == [(OUTDATED, FlagState.RESOLVED)]


# ------------------------------------------------------------------- ordering and identity


def test_older_event_is_ignored() -> None:
    known = run_state([snap(100, "2.0.12")])
    for event in (snap(50, "1.0", team=None), reject(50)):
        current, flags = apply(known, event, POLICY)
        assert current is known
        assert flags == []


def test_same_snapshot_again_changes_nothing() -> None:
    known = run_state([snap(0, "2.0.3")])
    current, flags = apply(known, snap(0, "2.0.3"), POLICY)
    assert flags == []
    assert current == known


def test_snapshots_at_one_instant_converge_whatever_their_order() -> None:
    low, high = snap(0, "2.0.3"), snap(0, "2.0.12", team=None)
    forward = run_state([low, high])
    backward = run_state([high, low])
    assert forward == backward  # which one wins is arbitrary but fixed: content order


def test_snapshot_at_the_instant_of_a_rejection_after_an_older_snapshot_applies() -> None:
    current = run_state([snap(0, "9.9"), reject(5), snap(5, "1.0")])
    assert current.app_version == "1.0"


def test_wrong_state_or_policy_is_a_programming_error() -> None:
    known = run_state([snap(0)])
    with pytest.raises(ValueError, match="acme/other"):
        apply(known, snap(1, endpoint="acme/other"), POLICY)
    with pytest.raises(ValueError, match="policy of tenant 'acme'"):
        apply(None, snap(1, tenant="globex", endpoint="globex/C02X"), POLICY)
    with pytest.raises(ValueError, match="policy of tenant"):
        reevaluate(known, TenantPolicy.default("globex"), at(1))


def test_flag_id_is_deterministic_per_instant() -> None:
    first = flag_id("acme", ENDPOINT, OUTDATED, at(0))
    assert len(first) == 32
    assert int(first, 16) >= 0
    plus_two = timezone(timedelta(hours=2))
    assert flag_id("acme", ENDPOINT, OUTDATED, at(0).astimezone(plus_two)) == first
    others = {
        flag_id("acme", ENDPOINT, MISSING, at(0)),
        flag_id("acme", "acme/other", OUTDATED, at(0)),
        flag_id("globex", ENDPOINT, OUTDATED, at(0)),
        flag_id("acme", ENDPOINT, OUTDATED, at(0.000001)),
    }
    assert first not in others
    assert len(others) == 4


def test_event_time_uses_the_receiver_clock() -> None:
    event = snap(10).model_copy(update={"observed_at": at(-999)})
    assert event_time(event) == at(10)
    assert event_time(reject(7)) == at(7)
    assert event_time(reject(7)).tzinfo is UTC


@pytest.mark.parametrize(
    ("seconds", "text"), [(600, "10m"), (90, "90s"), (3600, "1h"), (86400, "1d"), (1.5, "1.5s")]
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


# ------------------------------------------------------------------------------- interning


def test_equal_key_sets_and_versions_are_shared() -> None:
    first = run_state([snap(0, "2.0.1" + "2", endpoint="acme/a")])
    second = run_state([snap(0, "".join(["2.0.", "12"]), endpoint="acme/b")])
    assert first.attributes is second.attributes
    assert first.app_version is second.app_version
    assert first.attributes == {"service.name", "host.name", "team.id"}


def test_blank_values_are_not_present() -> None:
    keys = present_attributes({"a": "x", "b": "", "c": " "}, team_id=" ")
    assert keys == {"a"}
    assert present_attributes({}, "eng") == {"team.id"}


def test_key_set_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(state_module, "MAX_INTERNED_KEY_SETS", state_module.interned_key_sets())
    before = state_module.interned_key_sets()
    keys = intern_keys(["never-seen-before-1", "never-seen-before-2"])
    assert keys == {"never-seen-before-1", "never-seen-before-2"}
    assert state_module.interned_key_sets() == before
    assert intern_keys([]) is state_module.EMPTY_KEYS


# ------------------------------------------------------------------------------ properties

ENDPOINTS = ["acme/a", "acme/b", "acme/c"]
VERSIONS = ["2.0.3", "2.0.10", "2.0.12", "2.0.10rc1", "banana", None]
MINIMUMS = [None, "2.0.10", "2.0.12"]


@st.composite
def snapshots(draw: st.DrawFn, endpoint: str, times: st.SearchStrategy[float]) -> EndpointSnapshot:
    event = snap(
        draw(times),
        draw(st.sampled_from(VERSIONS)),
        service=draw(st.sampled_from(["claude-code", "other-tool"])),
        team=draw(st.sampled_from([None, "", " ", "eng"])),
        attributes=draw(
            st.dictionaries(st.sampled_from(["cost.center", "owner"]), st.sampled_from(["", "x"]))
        ),
        endpoint=endpoint,
    )
    # the record may carry team.id when the resource does not
    return event.model_copy(update={"team_id": draw(st.sampled_from([None, "eng"]))})


@st.composite
def rejections(draw: st.DrawFn, endpoint: str, times: st.SearchStrategy[float]) -> AuthEvent:
    return reject(
        draw(times),
        draw(st.sampled_from(list(AuthReason))),
        endpoint=draw(st.sampled_from([endpoint, endpoint, endpoint, None])),
        tenant=draw(st.sampled_from(["acme", "acme", "acme", None])),
    )


# Minutes on a coarse grid: many ties, out-of-order arrivals, and windows that both fit and don't.
coarse_times = st.integers(min_value=0, max_value=10).map(lambda minute: minute * 60.0)


def events_of(
    endpoint: str, times: st.SearchStrategy[float] = coarse_times
) -> st.SearchStrategy[Event]:
    return st.one_of(snapshots(endpoint, times), rejections(endpoint, times))


policies = st.builds(
    policy,
    st.sampled_from(MINIMUMS),
    required=st.sampled_from([(), ("team.id",), ("team.id", "cost.center"), ("owner",)]),
    threshold=st.integers(min_value=1, max_value=4),
    window=st.sampled_from([60.0, 180.0, 600.0]),
    rotated=st.sampled_from([None, -60.0, 120.0, 300.0]),
    version=st.integers(min_value=0, max_value=5),
)
any_endpoint_events = st.one_of([events_of(endpoint) for endpoint in ENDPOINTS])
mixed_events = st.lists(any_endpoint_events, max_size=30)


@dataclass
class Fleet:
    """A stand-in for the runner: one state per endpoint, every flag emitted, in order."""

    states: dict[str, EndpointState]
    flags: list[DriftFlag]

    @classmethod
    def empty(cls) -> Fleet:
        return cls({}, [])

    def feed(self, events: Iterable[Event], rules: TenantPolicy) -> list[DriftFlag]:
        emitted: list[DriftFlag] = []
        for event in events:
            key = event.endpoint_id
            if key is None:
                assert apply(None, event, rules) == (None, [])
                continue
            new, flags = apply(self.states.get(key), event, rules)
            if new is not None:
                self.states[key] = new
            emitted.extend(flags)
        self.flags.extend(emitted)
        return emitted

    def change_policy(self, rules: TenantPolicy, now: datetime) -> list[DriftFlag]:
        emitted: list[DriftFlag] = []
        for key, known in list(self.states.items()):
            self.states[key], flags = reevaluate(known, rules, now)
            emitted.extend(flags)
        self.flags.extend(emitted)
        return emitted


FAST = settings(max_examples=150, deadline=None)


@FAST
@given(mixed_events, policies)
def test_replaying_a_stream_yields_no_new_flags(events: list[Event], rules: TenantPolicy) -> None:
    fleet = Fleet.empty()
    fleet.feed(events, rules)
    states = dict(fleet.states)
    assert fleet.feed(events, rules) == []
    assert fleet.states == states


@FAST
@given(st.data(), policies)
def test_interleaving_endpoints_does_not_change_the_flags(
    data: st.DataObject, rules: TenantPolicy
) -> None:
    streams = {
        endpoint: data.draw(st.lists(events_of(endpoint), max_size=10)) for endpoint in ENDPOINTS
    }
    one_by_one = Fleet.empty()
    for stream in streams.values():
        one_by_one.feed(stream, rules)
    tags = [endpoint for endpoint, stream in streams.items() for _ in stream]
    order = data.draw(st.permutations(tags))
    cursors = dict.fromkeys(streams, 0)
    interleaved: list[Event] = []
    for endpoint in order:
        interleaved.append(streams[endpoint][cursors[endpoint]])
        cursors[endpoint] += 1
    mixed = Fleet.empty()
    mixed.feed(interleaved, rules)
    assert Counter(mixed.flags) == Counter(one_by_one.flags)
    assert mixed.states == one_by_one.states


Step = tuple[str, list[Event] | TenantPolicy]
steps = st.lists(
    st.one_of(
        st.tuples(st.just("events"), st.lists(any_endpoint_events, max_size=10)),
        st.tuples(st.just("policy"), policies),
    ),
    max_size=8,
)


@FAST
@given(steps, policies, st.integers(min_value=0, max_value=1800))
def test_flags_alternate_raised_resolved_and_match_the_state(
    plan: list[Step], first: TenantPolicy, policy_time: int
) -> None:
    fleet = Fleet.empty()
    rules = first
    for _, payload in plan:
        if isinstance(payload, TenantPolicy):
            rules = payload
            fleet.change_policy(rules, at(policy_time))
        else:
            fleet.feed(payload, rules)
    by_id: dict[str, list[DriftFlag]] = defaultdict(list)
    open_ids: dict[tuple[str, FlagKind], str] = {}
    for flag in fleet.flags:
        by_id[flag.flag_id].append(flag)
        key = (flag.endpoint_id, flag.kind)
        if flag.state is FlagState.RAISED:
            assert key not in open_ids, "raised twice without a resolve"
            open_ids[key] = flag.flag_id
        else:
            assert open_ids.pop(key) == flag.flag_id, "resolved without a prior raise"
        assert flag.first_seen <= flag.last_seen
    for history in by_id.values():
        states = [flag.state for flag in history]
        assert states == [FlagState.RAISED, FlagState.RESOLVED] * (len(states) // 2) + [
            FlagState.RAISED
        ] * (len(states) % 2)
    # folding the flag stream gives exactly the open flags the state remembers
    remembered = {
        (endpoint, opened.kind): opened.flag_id
        for endpoint, known in fleet.states.items()
        for opened in known.open_flags
    }
    assert remembered == open_ids


def expected_open(last: EndpointSnapshot, rules: TenantPolicy) -> set[FlagKind]:
    """The rules restated independently, straight from the snapshot."""
    expected: set[FlagKind] = set()
    tool = rules.tools.get(last.service_name)
    if tool is not None and tool.minimum_version is not None:
        try:
            outdated = last.app_version is None or Version(last.app_version) < Version(
                tool.minimum_version
            )
        except InvalidVersion:
            outdated = True
        if outdated:
            expected.add(OUTDATED)
    present = {key for key, value in last.resource_attributes.items() if value.strip()}
    if last.team_id and last.team_id.strip():
        present.add("team.id")
    if set(rules.required_attributes) - present:
        expected.add(MISSING)
    return expected


def retimed(event: Event, seconds: float) -> Event:
    if isinstance(event, EndpointSnapshot):
        return event.model_copy(update={"received_at": at(seconds), "observed_at": at(seconds)})
    return event.model_copy(update={"observed_at": at(seconds)})


# Strictly increasing times, so no event is dropped and each tool's last snapshot is the one
# that counts (25 events a minute apart: none is old enough to stop counting).
increasing_events = st.lists(events_of(ENDPOINT, st.just(0.0)), min_size=1, max_size=25).map(
    lambda events: [retimed(event, 60.0 * index) for index, event in enumerate(events)]
)


@FAST
@given(increasing_events, policies, st.lists(policies, max_size=2))
def test_open_flags_equal_a_recomputation_from_each_tools_last_snapshot(
    events: list[Event], rules: TenantPolicy, later: list[TenantPolicy]
) -> None:
    fleet = Fleet.empty()
    fleet.feed(events, rules)
    for index, changed in enumerate(later):
        rules = changed
        fleet.change_policy(rules, at(1000 + index))
    last_of_each: dict[str, EndpointSnapshot] = {}
    for event in events:
        if isinstance(event, EndpointSnapshot):
            last_of_each[event.service_name] = event
    known = fleet.states.get(ENDPOINT)
    snapshot_kinds = open_kinds(known) - {STALE}
    expected = set().union(*(expected_open(last, rules) for last in last_of_each.values()))
    assert snapshot_kinds == expected
