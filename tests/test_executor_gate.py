"""The executor's pure gate: every safety rule, in order, without I/O."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from actions.executor import Decision, ExecutorOptions, History, Past, gate, needs_confirmation
from actions.mdm import Credential, Integration
from schemas.remediation import (
    ActionKind,
    AuditState,
    Plan,
    PlannedAction,
    Reason,
    ReasonSource,
    Vendor,
)

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
CREDENTIAL = Credential(client_id="c", secret=SecretStr("s3cret"), created_at=NOW)


def action(
    device: str = "d1", *, tenant: str = "acme", vendor: Vendor = Vendor.JAMF
) -> PlannedAction:
    return PlannedAction(
        action_id=f"{tenant}-{vendor}-{device}",
        tenant_id=tenant,
        vendor=vendor,
        device_id=device,
        serial_number=f"SN-{device}",
        endpoint_id=f"{tenant}/SN-{device}",
        kind=ActionKind.FORCE_SYNC,
        reasons=(Reason(source=ReasonSource.TELEMETRY, detail="outdated", flag_id="f1"),),
    )


def integration(
    tenant: str = "acme",
    vendor: Vendor = Vendor.JAMF,
    *,
    credential: Credential | None = CREDENTIAL,
    force_sync: bool = True,
) -> Integration:
    return Integration(
        tenant_id=tenant,
        vendor=vendor,
        base_url="https://acme.example",
        current=credential,
        force_sync=force_sync,
    )


def run(
    *actions: PlannedAction,
    history: History | None = None,
    integrations: list[Integration] | None = None,
    killed: bool = False,
    **options: object,
) -> list[Decision]:
    found = integrations if integrations is not None else [integration()]
    return gate(
        Plan(actions=actions, unresolvable=()),
        history or History(),
        {(i.tenant_id, i.vendor): i for i in found},
        ExecutorOptions(live=True, **options),  # type: ignore[arg-type]
        NOW,
        killed,
    )


def test_a_fresh_action_is_sent_as_attempt_one() -> None:
    (decision,) = run(action())
    assert decision.send and decision.attempt == 1 and decision.why == ""


def test_kill_switch_stops_everything() -> None:
    decisions = run(action("d1"), action("d2"), killed=True)
    assert [d.send for d in decisions] == [False, False]
    assert all(d.why == "kill switch engaged" for d in decisions)


def test_no_integration_no_credential_no_force_sync_grant() -> None:
    assert "no jamf integration" in run(action(), integrations=[])[0].why
    assert "push-only" in run(action(), integrations=[integration(credential=None)])[0].why
    assert "not granted" in run(action(), integrations=[integration(force_sync=False)])[0].why
    other_tenant = run(action(), integrations=[integration(tenant="globex")])
    assert not other_tenant[0].send


def test_a_succeeded_action_is_never_sent_again() -> None:
    past = Past(1, frozenset({AuditState.SENT, AuditState.SUCCEEDED}), NOW - timedelta(days=3))
    (decision,) = run(action(), history=History(actions={action().action_id: past}))
    assert not decision.send and "already succeeded" in decision.why


def test_sent_without_outcome_is_not_sent_twice() -> None:
    """The crash case: `sent` was recorded, then the process died before the answer."""
    past = Past(1, frozenset({AuditState.SENT}), NOW - timedelta(days=3))
    (decision,) = run(action(), history=History(actions={action().action_id: past}))
    assert not decision.send and "not sent twice" in decision.why


def test_a_failed_action_is_retried_with_the_next_attempt_number_until_the_limit() -> None:
    failed = Past(1, frozenset({AuditState.SENT, AuditState.FAILED}), NOW - timedelta(days=1))
    (decision,) = run(action(), history=History(actions={action().action_id: failed}))
    assert decision.send and decision.attempt == 2
    exhausted = Past(3, frozenset({AuditState.SENT, AuditState.FAILED}), NOW)
    (decision,) = run(
        action(), history=History(actions={action().action_id: exhausted}), max_attempts=3
    )
    assert not decision.send and "gave up after 3" in decision.why


def test_device_cooldown() -> None:
    recent = {("acme", Vendor.JAMF, "d1"): NOW - timedelta(minutes=10)}
    (decision,) = run(action(), history=History(last_sync=recent), cooldown=timedelta(hours=1))
    assert not decision.send and "cooldown until 2026-11-27 12:50:00Z" in decision.why
    old = {("acme", Vendor.JAMF, "d1"): NOW - timedelta(hours=2)}
    (decision,) = run(action(), history=History(last_sync=old), cooldown=timedelta(hours=1))
    assert decision.send
    other_device = {("acme", Vendor.JAMF, "d2"): NOW}
    assert run(action(), history=History(last_sync=other_device))[0].send


def test_the_cap_refuses_the_whole_run_and_says_so() -> None:
    actions = [action(f"d{i}") for i in range(4)]
    decisions = run(*actions, max_devices=3)
    assert not any(d.send for d in decisions)
    assert all("would exceed the cap: 4 devices" in d.why for d in decisions)
    assert all(d.send for d in run(*actions, max_devices=4))


def test_the_cap_counts_only_devices_that_would_be_acted_on() -> None:
    recent = {("acme", Vendor.JAMF, "d0"): NOW}
    decisions = run(
        *[action(f"d{i}") for i in range(4)], history=History(last_sync=recent), max_devices=3
    )
    assert [d.send for d in decisions] == [False, True, True, True]
    assert "cooldown" in decisions[0].why


@given(
    st.lists(st.integers(0, 20), unique=True, max_size=12),
    st.integers(1, 15),
    st.booleans(),
)
def test_never_more_than_the_cap_and_nothing_when_killed(
    devices: list[int], cap: int, killed: bool
) -> None:
    decisions = run(*[action(f"d{i}") for i in devices], max_devices=cap, killed=killed)
    sending = [d for d in decisions if d.send]
    assert len(sending) <= cap
    assert not (killed and sending)
    assert len(decisions) == len(devices)
    assert all(d.send or d.why for d in decisions)


# --- holding a command-line live run for --yes ---------------------------------------------


@given(
    st.lists(st.booleans(), max_size=30),
    st.integers(min_value=0, max_value=40),
    st.booleans(),
)
def test_a_live_run_is_held_exactly_when_first_or_over_the_threshold(
    sends: list[bool], threshold: int, first_live: bool
) -> None:
    decisions = [
        Decision(action(f"d{n}"), 1, send, "" if send else "cooldown")
        for n, send in enumerate(sends)
    ]
    held = needs_confirmation(decisions, threshold=threshold, first_live=first_live)
    sending = sum(sends)
    if sending == 0:
        assert held is None  # nothing to send: nothing to confirm
    elif first_live:
        assert held == f"the tenant's first live run would act on {sending} devices"
    elif sending > threshold:
        assert held is not None and held.startswith(f"{sending} devices to act on")
    else:
        assert held is None
