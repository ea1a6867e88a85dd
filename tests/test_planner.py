"""The remediation planner: every rule in DESIGN.md's "Remediation rules", plus properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actions.planner import (
    NO_SERIAL,
    NOT_ENROLLED,
    action_id,
    normalize_serial,
    plan,
    summarize,
)
from schemas.messages import DriftFlag, FlagKind, FlagState, Message
from schemas.remediation import (
    ActionKind,
    ComplianceRecord,
    ComplianceStatus,
    Device,
    Plan,
    PlannedAction,
    Reason,
    ReasonSource,
    Unresolvable,
    Vendor,
)
from store import TABLE_COLUMNS

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def flag(
    endpoint: str = "acme/e1",
    *,
    tenant: str = "acme",
    kind: FlagKind = FlagKind.OUTDATED_CLIENT,
    state: FlagState = FlagState.RAISED,
    detail: str = "2.0.3 < 2.1.0",
    flag_id: str | None = None,
) -> DriftFlag:
    return DriftFlag(
        flag_id=flag_id or f"{tenant}|{endpoint}|{kind}",
        tenant_id=tenant,
        endpoint_id=endpoint,
        kind=kind,
        state=state,
        detail=detail,
        first_seen=T0,
        last_seen=T0,
        policy_version=1,
    )


def device(
    serial: str | None = "C02X",
    *,
    tenant: str = "acme",
    vendor: Vendor = Vendor.JAMF,
    device_id: str = "d1",
    last_contact: datetime | None = None,
) -> Device:
    return Device(
        tenant_id=tenant,
        vendor=vendor,
        device_id=device_id,
        serial_number=serial,
        last_contact=last_contact,
    )


def record(
    status: ComplianceStatus = ComplianceStatus.NONCOMPLIANT,
    *,
    tenant: str = "acme",
    vendor: Vendor = Vendor.JAMF,
    device_id: str = "d1",
    serial: str | None = "C02X",
    reason: str = "FileVault off",
    minutes: int = 0,
    imported_minutes: int = 0,
    last_contact: datetime | None = None,
) -> ComplianceRecord:
    return ComplianceRecord(
        tenant_id=tenant,
        vendor=vendor,
        device_id=device_id,
        serial_number=serial,
        status=status,
        reason=reason,
        reported_at=T0 + timedelta(minutes=minutes),
        imported_at=T0 + timedelta(minutes=minutes + imported_minutes),
        last_contact=last_contact,
    )


def keys(result: Plan) -> list[tuple[str, Vendor, str]]:
    return [(a.tenant_id, a.vendor, a.device_id) for a in result.actions]


# --- telemetry flags → devices ----------------------------------------------------------------


def test_flag_maps_to_device_by_serial() -> None:
    result = plan([flag()], {"acme/e1": "C02X"}, [], [device()])
    assert result.unresolvable == ()
    (action,) = result.actions
    assert (action.tenant_id, action.vendor, action.device_id) == ("acme", Vendor.JAMF, "d1")
    assert action.kind is ActionKind.FORCE_SYNC
    assert action.serial_number == "C02X"
    assert action.endpoint_id == "acme/e1"
    assert action.reasons == (
        Reason(
            source=ReasonSource.TELEMETRY,
            detail="outdated_client: 2.0.3 < 2.1.0",
            flag_id="acme|acme/e1|outdated_client",
        ),
    )


@pytest.mark.parametrize(
    ("telemetry", "inventory"),
    [("c02x", "C02X"), ("  C02X\t", "C02X"), ("C02X", " c02x "), ("\nc02X ", "C02x")],
)
def test_serial_match_ignores_case_and_surrounding_whitespace(
    telemetry: str, inventory: str
) -> None:
    result = plan([flag()], {"acme/e1": telemetry}, [], [device(inventory)])
    assert keys(result) == [("acme", Vendor.JAMF, "d1")]
    assert result.unresolvable == ()


def test_serial_match_is_otherwise_exact() -> None:
    result = plan([flag()], {"acme/e1": "C02X1"}, [], [device("C02X"), device("C0 2X")])
    assert result.actions == ()
    assert [u.why for u in result.unresolvable] == [NOT_ENROLLED]


def test_another_tenants_inventory_is_never_used() -> None:
    result = plan([flag()], {"acme/e1": "C02X"}, [], [device(tenant="globex")])
    assert result.actions == ()
    assert result.unresolvable == (
        Unresolvable(
            tenant_id="acme", endpoint_id="acme/e1", serial_number="C02X", why=NOT_ENROLLED
        ),
    )


def test_same_serial_in_two_tenants_resolves_within_each() -> None:
    flags = [flag("acme/e1"), flag("globex/e1", tenant="globex")]
    serials = {"acme/e1": "C02X", "globex/e1": "C02X"}
    inventory = [device(device_id="a"), device(tenant="globex", device_id="g")]
    result = plan(flags, serials, [], inventory)
    assert keys(result) == [("acme", Vendor.JAMF, "a"), ("globex", Vendor.JAMF, "g")]
    assert [a.endpoint_id for a in result.actions] == ["acme/e1", "globex/e1"]


def test_unknown_serial_is_unresolvable() -> None:
    result = plan([flag()], {"acme/e1": "NOPE"}, [], [device()])
    assert result.actions == ()
    assert result.unresolvable == (
        Unresolvable(
            tenant_id="acme", endpoint_id="acme/e1", serial_number="NOPE", why=NOT_ENROLLED
        ),
    )


@pytest.mark.parametrize("serials", [{}, {"acme/e1": None}, {"acme/e1": ""}, {"acme/e1": " \t"}])
def test_missing_serial_is_unresolvable(serials: dict[str, str | None]) -> None:
    result = plan([flag()], serials, [], [device(), device(" ", device_id="blank")])
    assert result.actions == ()
    assert result.unresolvable == (
        Unresolvable(tenant_id="acme", endpoint_id="acme/e1", serial_number=None, why=NO_SERIAL),
    )


def test_a_mac_in_two_mdms_is_acted_on_where_it_last_checked_in() -> None:
    inventory = [
        device(last_contact=T0 - timedelta(days=3)),
        device("c02x", vendor=Vendor.INTUNE, device_id="i1", last_contact=T0),
    ]
    result = plan([flag()], {"acme/e1": "C02X"}, [], inventory)
    assert result.unresolvable == ()
    (action,) = result.actions
    assert (action.vendor, action.device_id, action.endpoint_id) == (
        Vendor.INTUNE,
        "i1",
        "acme/e1",
    )
    assert "acting through intune, where it last checked in" in action.route
    assert "jamf (last check-in 2026-11-24 12:00:00Z)" in action.route


def test_two_mdms_without_check_in_times_are_reported_not_guessed() -> None:
    inventory = [device(), device("c02x", vendor=Vendor.INTUNE, device_id="i1")]
    result = plan([flag()], {"acme/e1": "C02X"}, [], inventory)
    assert result.actions == ()
    (why,) = [u.why for u in result.unresolvable]
    assert why.startswith("enrolled in intune (no check-in reported), jamf")
    assert why.endswith("no MDM reports a check-in to choose by")


def test_one_known_check_in_beats_none_and_a_tie_is_reported() -> None:
    known = [device(), device("C02X", vendor=Vendor.IRU, device_id="k1", last_contact=T0)]
    (action,) = plan([flag()], {"acme/e1": "C02X"}, [], known).actions
    assert action.vendor is Vendor.IRU
    tie = [
        device(last_contact=T0),
        device("C02X", vendor=Vendor.IRU, device_id="k1", last_contact=T0),
    ]
    result = plan([flag()], {"acme/e1": "C02X"}, [], tie)
    assert result.actions == ()
    assert "equal last check-ins" in result.unresolvable[0].why


def test_compliance_findings_from_both_mdms_become_one_action() -> None:
    records = [
        record(ComplianceStatus.MISSING_PROFILE, reason="profile missing", last_contact=T0),
        record(
            vendor=Vendor.INTUNE,
            device_id="i1",
            reason="complianceState=noncompliant",
            last_contact=T0 - timedelta(hours=5),
        ),
    ]
    inventory = [device("C02X", vendor=Vendor.INTUNE, device_id="i1")]
    result = plan([flag()], {"acme/e1": "c02x"}, records, inventory)
    (action,) = result.actions
    assert (action.vendor, action.device_id) == (Vendor.JAMF, "d1")
    details = sorted(r.detail for r in action.reasons)
    assert details == [
        "intune i1: noncompliant: complianceState=noncompliant",
        "missing_profile: profile missing",
        "outdated_client: 2.0.3 < 2.1.0",
    ]
    assert "acting through jamf" in action.route


def test_serial_on_two_devices_of_one_vendor_is_ambiguous() -> None:
    inventory = [device(device_id="d1"), device(device_id="d2"), device(device_id="d3")]
    result = plan([flag()], {"acme/e1": "C02X"}, [], inventory)
    assert [u.why for u in result.unresolvable] == ["serial matches 3 devices"]


def test_duplicate_inventory_rows_of_one_device_are_not_ambiguous() -> None:
    result = plan([flag()], {"acme/e1": "C02X"}, [], [device(), device(), device(" c02x")])
    assert keys(result) == [("acme", Vendor.JAMF, "d1")]
    assert result.actions[0].serial_number == "C02X"


def test_one_unresolvable_per_endpoint_however_many_flags() -> None:
    flags = [flag(), flag(kind=FlagKind.MISSING_POLICY), flag(kind=FlagKind.STALE_TOKEN)]
    result = plan(flags, {}, [], [])
    assert len(result.unresolvable) == 1


def test_resolved_flags_are_ignored() -> None:
    resolved = flag(state=FlagState.RESOLVED)
    assert plan([resolved], {"acme/e1": "C02X"}, [], [device()]) == Plan(
        actions=(), unresolvable=()
    )
    assert plan([resolved], {}, [], []) == Plan(actions=(), unresolvable=())


def test_redelivered_flag_is_one_reason() -> None:
    result = plan([flag(), flag()], {"acme/e1": "C02X"}, [], [device()])
    assert len(result.actions[0].reasons) == 1


# --- MDM compliance records -------------------------------------------------------------------


@pytest.mark.parametrize(
    "status", [ComplianceStatus.NONCOMPLIANT, ComplianceStatus.MISSING_PROFILE]
)
def test_noncompliant_and_missing_profile_need_a_sync(status: ComplianceStatus) -> None:
    result = plan([], {}, [record(status, reason="no PPPC profile")], [])
    (action,) = result.actions
    assert action.endpoint_id is None
    assert action.serial_number == "C02X"
    assert action.reasons == (
        Reason(source=ReasonSource.MDM, detail=f"{status}: no PPPC profile", flag_id=None),
    )


@pytest.mark.parametrize("status", [ComplianceStatus.COMPLIANT, ComplianceStatus.UNKNOWN])
def test_compliant_and_unknown_need_nothing(status: ComplianceStatus) -> None:
    assert plan([], {}, [record(status)], [device()]).actions == ()


def test_mdm_reason_without_text_is_just_the_status() -> None:
    result = plan([], {}, [record(reason="")], [])
    assert result.actions[0].reasons[0].detail == "noncompliant"


def test_later_compliant_record_clears() -> None:
    history = [record(minutes=0), record(ComplianceStatus.COMPLIANT, minutes=5)]
    assert plan([], {}, history, []).actions == ()
    assert plan([], {}, history[::-1], []).actions == ()


def test_latest_record_wins_over_earlier_compliant() -> None:
    history = [
        record(ComplianceStatus.COMPLIANT, minutes=0),
        record(ComplianceStatus.MISSING_PROFILE, minutes=5, reason="latest"),
        record(ComplianceStatus.NONCOMPLIANT, minutes=3, reason="older"),
    ]
    (action,) = plan([], {}, history, []).actions
    assert action.reasons[0].detail == "missing_profile: latest"


def test_reimported_report_newest_import_wins() -> None:
    history = [
        record(ComplianceStatus.NONCOMPLIANT, minutes=5, imported_minutes=1),
        record(ComplianceStatus.COMPLIANT, minutes=5, imported_minutes=2),
    ]
    assert plan([], {}, history, []).actions == ()


def test_latest_is_per_vendor_device_and_tenant() -> None:
    history = [
        record(minutes=0),
        record(ComplianceStatus.COMPLIANT, vendor=Vendor.INTUNE, minutes=5),
        record(ComplianceStatus.COMPLIANT, tenant="globex", minutes=5),
        record(ComplianceStatus.COMPLIANT, device_id="d2", minutes=5),
    ]
    assert keys(plan([], {}, history, [])) == [("acme", Vendor.JAMF, "d1")]


def test_action_serial_prefers_inventory_then_record() -> None:
    records = [record(serial=" c02x "), record(device_id="d2", serial=None)]
    inventory = [device("C02X-INV")]
    result = plan([], {}, records, inventory)
    assert [a.serial_number for a in result.actions] == ["C02X-INV", None]
    assert plan([], {}, records, []).actions[0].serial_number == "c02x"


# --- union and merge --------------------------------------------------------------------------


def test_union_of_telemetry_and_mdm_devices() -> None:
    inventory = [device(), device("OTHER", vendor=Vendor.IRU, device_id="k1")]
    records = [record(vendor=Vendor.INTUNE, device_id="i1", serial="ZZZ")]
    result = plan([flag()], {"acme/e1": "C02X"}, records, inventory)
    assert keys(result) == [
        ("acme", Vendor.INTUNE, "i1"),
        ("acme", Vendor.JAMF, "d1"),
    ]


def test_reasons_for_one_device_merge_into_one_action() -> None:
    flags = [flag(), flag(kind=FlagKind.MISSING_POLICY, detail="team.id absent")]
    flags.append(flag("acme/host-a", kind=FlagKind.STALE_TOKEN, detail="3 rejections"))
    serials = {"acme/e1": "C02X", "acme/host-a": "c02x"}
    result = plan(flags, serials, [record(ComplianceStatus.MISSING_PROFILE)], [device()])
    (action,) = result.actions
    assert action.endpoint_id == "acme/e1"  # the smallest of the endpoints that led here
    assert [(r.source, r.flag_id) for r in action.reasons] == [
        (ReasonSource.MDM, None),
        (ReasonSource.TELEMETRY, "acme|acme/e1|missing_policy"),
        (ReasonSource.TELEMETRY, "acme|acme/e1|outdated_client"),
        (ReasonSource.TELEMETRY, "acme|acme/host-a|stale_token"),
    ]
    assert action.reasons[0].detail == "missing_profile: FileVault off"


def test_flag_on_compliant_device_still_syncs() -> None:
    records = [record(ComplianceStatus.COMPLIANT)]
    result = plan([flag()], {"acme/e1": "C02X"}, records, [device()])
    assert [r.source for r in result.actions[0].reasons] == [ReasonSource.TELEMETRY]


def test_actions_sorted_by_tenant_vendor_device() -> None:
    records = [
        record(tenant="b", vendor=Vendor.IRU, device_id="1"),
        record(tenant="a", vendor=Vendor.JAMF, device_id="2"),
        record(tenant="a", vendor=Vendor.JAMF, device_id="10"),
        record(tenant="a", vendor=Vendor.INTUNE, device_id="9"),
    ]
    assert keys(plan([], {}, records, [])) == [
        ("a", Vendor.INTUNE, "9"),
        ("a", Vendor.JAMF, "10"),
        ("a", Vendor.JAMF, "2"),
        ("b", Vendor.IRU, "1"),
    ]


def test_empty_input_is_an_empty_plan() -> None:
    assert plan([], {}, [], []) == Plan(actions=(), unresolvable=())


def test_normalize_serial() -> None:
    assert normalize_serial(" C02x\n") == "c02x"
    assert normalize_serial("  ") is None
    assert normalize_serial(None) is None


# --- action_id --------------------------------------------------------------------------------


def test_action_id_is_deterministic_and_order_free() -> None:
    a = action_id("acme", Vendor.JAMF, "d1", ActionKind.FORCE_SYNC, ["flag:x", "mdm:y"])
    b = action_id("acme", Vendor.JAMF, "d1", ActionKind.FORCE_SYNC, ["mdm:y", "flag:x", "flag:x"])
    assert a == b
    assert len(a) == 32
    int(a, 16)


@pytest.mark.parametrize(
    "other",
    [
        ("globex", Vendor.JAMF, "d1", ActionKind.FORCE_SYNC, ["flag:x"]),
        ("acme", Vendor.IRU, "d1", ActionKind.FORCE_SYNC, ["flag:x"]),
        ("acme", Vendor.JAMF, "d2", ActionKind.FORCE_SYNC, ["flag:x"]),
        ("acme", Vendor.JAMF, "d1", ActionKind.POLICY_PUSH, ["flag:x"]),
        ("acme", Vendor.JAMF, "d1", ActionKind.FORCE_SYNC, ["flag:y"]),
        ("acme", Vendor.JAMF, "d1", ActionKind.FORCE_SYNC, ["flag:x", "mdm:noncompliant"]),
    ],
)
def test_action_id_changes_with_every_part(
    other: tuple[str, Vendor, str, ActionKind, list[str]],
) -> None:
    assert action_id(*other) != action_id(
        "acme", Vendor.JAMF, "d1", ActionKind.FORCE_SYNC, ["flag:x"]
    )


def test_action_id_stable_across_plans_and_rewording() -> None:
    first = plan([flag()], {"acme/e1": "C02X"}, [record(reason="a")], [device()])
    again = plan(
        [flag(detail="2.0.4 < 2.1.0")], {"acme/e1": "c02x"}, [record(reason="b")], [device()]
    )
    assert first.actions[0].action_id == again.actions[0].action_id
    more = plan([flag()], {"acme/e1": "C02X"}, [], [device()])
    assert more.actions[0].action_id != first.actions[0].action_id


# --- JSON round trip --------------------------------------------------------------------------

REASON = Reason(source=ReasonSource.TELEMETRY, detail="outdated_client: x", flag_id="f1")
ACTION = PlannedAction(
    action_id="a" * 32,
    tenant_id="acme",
    vendor=Vendor.INTUNE,
    device_id="d1",
    serial_number=None,
    endpoint_id="acme/e1",
    kind=ActionKind.FORCE_SYNC,
    reasons=(REASON, Reason(source=ReasonSource.MDM, detail="noncompliant", flag_id=None)),
)
UNRESOLVABLE = Unresolvable(tenant_id="acme", endpoint_id="acme/e1", serial_number=None, why="x")
MODELS: list[Message] = [
    record(),
    record(serial=None),
    device(),
    device(None),
    REASON,
    ACTION,
    UNRESOLVABLE,
    Plan(actions=(ACTION,), unresolvable=(UNRESOLVABLE,)),
]


@pytest.mark.parametrize("model", MODELS, ids=lambda m: type(m).__name__)
def test_json_round_trip(model: Message) -> None:
    assert type(model).from_json(model.to_json()) == model


def test_models_are_strict_and_frozen() -> None:
    data = device().model_dump() | {"extra": 1}
    with pytest.raises(pydantic.ValidationError):
        Device.model_validate(data)
    with pytest.raises(pydantic.ValidationError):
        Device.model_validate(device().model_dump() | {"vendor": "kandji"})
    with pytest.raises(pydantic.ValidationError):
        device().device_id = "other"


def test_compliance_record_fields_match_the_store_columns() -> None:
    assert tuple(ComplianceRecord.model_fields) == TABLE_COLUMNS["compliance_records"]


def test_naive_timestamps_read_as_utc() -> None:
    raw = record().model_dump(mode="json") | {"reported_at": "2026-11-27T12:00:00"}
    assert ComplianceRecord.model_validate(raw).reported_at == T0


# --- properties -------------------------------------------------------------------------------

TENANTS = st.sampled_from(["t1", "t2"])
VENDORS = st.sampled_from(list(Vendor))
DEVICE_IDS = st.sampled_from(["d1", "d2", "d3"])
SERIALS = st.sampled_from([None, " ", "AAA", " aaa ", "BBB", "bbb\t", "CCC"])
ENDPOINTS = st.sampled_from(["e1", "e2", "e3"])

flags_st = st.lists(
    st.builds(
        lambda t, e, k, s, d: flag(f"{t}/{e}", tenant=t, kind=k, state=s, detail=d),
        TENANTS,
        ENDPOINTS,
        st.sampled_from(list(FlagKind)),
        st.sampled_from(list(FlagState)),
        st.sampled_from(["x", "y"]),
    ),
    max_size=12,
)
CONTACTS = st.sampled_from([None, T0, T0 - timedelta(hours=1), T0 - timedelta(days=2)])
inventory_st = st.lists(
    st.builds(
        lambda t, v, i, s, c: device(s, tenant=t, vendor=v, device_id=i, last_contact=c),
        TENANTS,
        VENDORS,
        DEVICE_IDS,
        SERIALS,
        CONTACTS,
    ),
    max_size=10,
)
serials_st = st.fixed_dictionaries(  # an endpoint missing from the map: see the unit tests
    {f"{t}/{e}": SERIALS for t in ("t1", "t2") for e in ("e1", "e2", "e3")}
)
records_st = st.lists(
    st.tuples(TENANTS, VENDORS, DEVICE_IDS, st.sampled_from(list(ComplianceStatus)), SERIALS),
    max_size=12,
).map(
    # distinct reported_at, so the latest record per device is unambiguous to the test too
    lambda rows: [
        record(st_, tenant=t, vendor=v, device_id=i, serial=s, minutes=n)
        for n, (t, v, i, st_, s) in enumerate(rows)
    ]
)


@settings(max_examples=200, deadline=None)
@given(flags_st, serials_st, records_st, inventory_st, st.data())
def test_plan_is_independent_of_input_order(
    flags: list[DriftFlag],
    serials: dict[str, str | None],
    records: list[ComplianceRecord],
    inventory: list[Device],
    data: st.DataObject,
) -> None:
    expected = plan(flags, serials, records, inventory)
    shuffled = plan(
        data.draw(st.permutations(flags)),
        dict(data.draw(st.permutations(list(serials.items())))),
        data.draw(st.permutations(records)),
        data.draw(st.permutations(inventory)),
    )
    assert shuffled == expected
    assert shuffled.to_json() == expected.to_json()


@settings(max_examples=200, deadline=None)
@given(flags_st, serials_st, records_st, inventory_st)
def test_every_open_flag_is_acted_on_or_reported_exactly_once(
    flags: list[DriftFlag],
    serials: dict[str, str | None],
    records: list[ComplianceRecord],
    inventory: list[Device],
) -> None:
    result = plan(flags, serials, records, inventory)
    unresolved = {(u.tenant_id, u.endpoint_id) for u in result.unresolvable}
    assert len(unresolved) == len(result.unresolvable)
    for f in {f.flag_id: f for f in flags if f.state is FlagState.RAISED}.values():
        in_actions = sum(1 for a in result.actions for r in a.reasons if r.flag_id == f.flag_id)
        in_unresolved = (f.tenant_id, f.endpoint_id) in unresolved
        assert in_actions + in_unresolved == 1
        if in_actions:
            (owner,) = [a for a in result.actions if any(r.flag_id == f.flag_id for r in a.reasons)]
            assert owner.tenant_id == f.tenant_id
    open_ids = {f.flag_id for f in flags if f.state is FlagState.RAISED}
    assert {r.flag_id for a in result.actions for r in a.reasons} - {None} <= open_ids


@settings(max_examples=200, deadline=None)
@given(flags_st, serials_st, records_st, inventory_st)
def test_every_noncompliant_latest_record_is_in_exactly_one_action(
    flags: list[DriftFlag],
    serials: dict[str, str | None],
    records: list[ComplianceRecord],
    inventory: list[Device],
) -> None:
    result = plan(flags, serials, records, inventory)
    latest: dict[tuple[str, Vendor, str], ComplianceRecord] = {}
    for r in records:  # generated in reported_at order
        latest[(r.tenant_id, r.vendor, r.device_id)] = r
    mdm_keys = [
        (a.tenant_id, a.vendor, a.device_id)
        for a in result.actions
        for r in a.reasons
        if r.source is ReasonSource.MDM
    ]
    needing = {
        key
        for key, r in latest.items()
        if r.status in (ComplianceStatus.NONCOMPLIANT, ComplianceStatus.MISSING_PROFILE)
    }
    # each finding is in exactly one action: its own device's, or (named "<vendor>: …") the same
    # Mac's in the MDM it last checked in with, and that action says why
    assert len(mdm_keys) == len(needing)
    vendors = tuple(f"{v.value} " for v in Vendor)
    for a in result.actions:
        mdm = [r for r in a.reasons if r.source is ReasonSource.MDM]
        own = [r for r in mdm if not r.detail.startswith(vendors)]
        moved = [r for r in mdm if r.detail.startswith(vendors)]
        assert len(own) <= 1
        if own:
            assert (a.tenant_id, a.vendor, a.device_id) in needing
        for finding in moved:
            assert not finding.detail.startswith(f"{a.vendor.value} ")
            assert f"acting through {a.vendor.value}" in a.route
    assert len(set(keys(result))) == len(result.actions)
    assert len({a.action_id for a in result.actions}) == len(result.actions)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(list(Vendor)), min_size=2, max_size=3, unique=True),
    st.permutations(range(3)),
    st.sampled_from(["C02MIG", " c02mig ", "C02mig"]),
)
def test_a_serial_in_several_mdms_with_check_ins_is_never_unresolvable(
    vendors: list[Vendor], order: list[int], shown: str
) -> None:
    """One record per MDM, distinct check-ins: exactly one action, in the latest MDM, with
    every finding of the others; whatever the input order and serial spelling."""
    inventory = [
        device(shown, vendor=v, device_id=f"{v.value}-1", last_contact=T0 + timedelta(hours=h))
        for v, h in zip(vendors, order, strict=False)
    ]
    latest = max(inventory, key=lambda d: d.last_contact or T0)
    records = [
        record(ComplianceStatus.MISSING_PROFILE, vendor=d.vendor, device_id=d.device_id)
        for d in inventory
    ]
    result = plan([flag()], {"acme/e1": "C02MIG"}, records, inventory)
    assert result.unresolvable == ()
    (only,) = result.actions
    assert (only.vendor, only.device_id) == (latest.vendor, latest.device_id)
    assert only.endpoint_id == "acme/e1"
    assert len([r for r in only.reasons if r.source is ReasonSource.MDM]) == len(inventory)
    assert f"acting through {latest.vendor.value}, where it last checked in" in only.route


def test_the_plan_is_summarized_by_reason() -> None:
    inventory = [device("C02A", device_id="a"), device("C02B", device_id="b")]
    records = [
        record(ComplianceStatus.MISSING_PROFILE, device_id="a", serial="C02A", reason="gone"),
        record(ComplianceStatus.NONCOMPLIANT, device_id="c", serial="C02C"),
    ]
    result = plan([flag()], {"acme/e1": "C02A"}, records, inventory)
    assert summarize(result.actions) == {
        "MDM: missing_profile": 1,
        "MDM: noncompliant": 1,
        "drift: outdated_client": 1,
    }
