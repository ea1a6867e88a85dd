"""The Iru client against an emulator of Iru's documented API: exact serials over substring
search, paging, blank push, profile upload, status mapping, least privilege, throttling,
rotation and secrecy."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from actions import mdm
from actions.iru import LIMITS, IruClient, allowlist, api_url, privileges
from actions.mdm import (
    AuthFailed,
    Credential,
    Forbidden,
    Integration,
    Limits,
    MdmClient,
    MdmError,
    NotAllowed,
    RateLimit,
    Rejected,
    RetryPolicy,
    Throttled,
    Unavailable,
)
from schemas.remediation import ComplianceStatus, Vendor
from tests.emulators.base import Fault
from tests.emulators.iru import BLANKPUSH, IruEmulator

FAST = RetryPolicy(attempts=3, backoff=0.01)
IMPORTED = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def credential(token: str) -> Credential:
    return Credential(secret=SecretStr(token), created_at=datetime.now(UTC))


def integration(emulator: IruEmulator, token: str, **overrides: Any) -> Integration:
    """A fresh tenant per call: rate limiters are shared per (vendor, tenant) in the process."""
    fields: dict[str, Any] = {
        "tenant_id": f"acme-{uuid.uuid4().hex[:8]}",
        "vendor": Vendor.IRU,
        "base_url": emulator.url,
        "current": credential(token),
        "force_sync": True,
        "profile_id": "li-1",
        "blueprint_id": "bp-1",
        **overrides,
    }
    return Integration(**fields)


def recording_sleep() -> tuple[list[float], Callable[[float], Awaitable[None]]]:
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return slept, sleep


def make_client(emulator: IruEmulator, **kwargs: Any) -> IruClient:
    token = emulator.mint_token(emulator.all_privileges)
    kwargs.setdefault("retry", FAST)
    return IruClient(integration(emulator, token), **kwargs)


@pytest.fixture
async def emulator() -> AsyncIterator[IruEmulator]:
    emulator = IruEmulator()
    emulator.add_profile("li-1")
    emulator.add_blueprint("bp-1")
    async with emulator:
        yield emulator


@pytest.fixture
async def client(emulator: IruEmulator) -> AsyncIterator[IruClient]:
    token = emulator.mint_token(emulator.all_privileges)
    client = IruClient(integration(emulator, token), retry=FAST)
    yield client
    await client.aclose()


def test_satisfies_the_protocol(client: IruClient) -> None:
    checked: MdmClient = client
    assert checked.session is client.session


# --- least privilege ----------------------------------------------------------------------


def test_allowlist_is_the_least_privilege_list() -> None:
    base = Integration(tenant_id="t", vendor=Vendor.IRU, base_url="https://t.api.kandji.io")
    read_write = {
        "GET /api/v1/devices",
        "GET /api/v1/devices/{device_id}/library-items",
        "PATCH /api/v1/library/custom-profiles/{library_item_id}",
        "POST /api/v1/library/custom-profiles",
        "POST /api/v1/blueprints/{blueprint_id}/assign-library-item",
    }
    assert privileges(base) == read_write
    opted_in = base.model_copy(update={"force_sync": True})
    assert privileges(opted_in) == read_write | {f"POST {BLANKPUSH}"}
    for method, path in [
        ("DELETE", "/api/v1/devices/x"),
        ("GET", "/api/v1/devices/x/secrets/filevaultkey"),
        ("POST", "/api/v1/devices/x/action/restart"),
        ("DELETE", "/api/v1/library/custom-profiles/li-1"),
        ("GET", "/api/v1/devices/x/library-items/extra"),
    ]:
        with pytest.raises(NotAllowed):
            allowlist(opted_in).check(method, path)


async def test_outside_the_allowlist_nothing_is_sent(
    emulator: IruEmulator, client: IruClient
) -> None:
    device = emulator.add_device("C02ABC")
    for method, path in [
        ("GET", f"/api/v1/devices/{device['device_id']}/secrets/filevaultkey"),
        ("DELETE", f"/api/v1/devices/{device['device_id']}"),
    ]:
        with pytest.raises(NotAllowed):
            await client.session.request(method, path)
    assert emulator.log == []
    assert device["device_id"] in emulator.devices


async def test_force_sync_without_opt_in_is_refused_locally(emulator: IruEmulator) -> None:
    device = emulator.add_device("C02ABC")
    token = emulator.mint_token(emulator.all_privileges)
    client = IruClient(integration(emulator, token, force_sync=False), retry=FAST)
    try:
        with pytest.raises(NotAllowed):
            await client.force_sync(device["device_id"])
    finally:
        await client.aclose()
    assert emulator.log == []
    assert emulator.blank_pushes == []


async def test_a_permission_not_ticked_is_forbidden(emulator: IruEmulator) -> None:
    device = emulator.add_device("C02ABC")
    token = emulator.mint_token(emulator.all_privileges - {f"POST {BLANKPUSH}"})
    client = IruClient(integration(emulator, token), retry=FAST)
    try:
        with pytest.raises(Forbidden):
            await client.force_sync(device["device_id"])
        assert await client.devices_by_serial("C02ABC")  # the ticked ones still work
    finally:
        await client.aclose()
    assert [entry.status for entry in emulator.log] == [403, 200]


async def test_raw_token_without_bearer_is_401(emulator: IruEmulator) -> None:
    token = emulator.mint_token(emulator.all_privileges)
    client = IruClient(integration(emulator, token), retry=FAST)
    try:
        response = await client.session.http.get(
            "/api/v1/devices", headers={"Authorization": token}
        )
    finally:
        await client.aclose()
    assert response.status_code == 401


# --- devices ------------------------------------------------------------------------------


async def test_serial_lookup_keeps_only_the_exact_match(
    emulator: IruEmulator, client: IruClient
) -> None:
    exact = emulator.add_device("C02ABC")
    emulator.add_device("C02ABC1")
    emulator.add_device("XC02ABC")
    emulator.add_device("C02ABC", is_removed=True)
    devices = await client.devices_by_serial("  c02abc ")
    assert [(d.device_id, d.serial_number) for d in devices] == [(exact["device_id"], "C02ABC")]
    assert devices[0].vendor is Vendor.IRU
    assert devices[0].tenant_id == client.integration.tenant_id
    (call,) = emulator.log
    assert call.query == "serial_number=c02abc&limit=300&offset=0"


async def test_blank_serial_lists_nothing(emulator: IruEmulator, client: IruClient) -> None:
    emulator.add_device("C02ABC")
    assert await client.devices_by_serial("  ") == []
    assert emulator.log == []


async def test_serial_lookup_pages_past_300(emulator: IruEmulator, client: IruClient) -> None:
    for n in range(649):
        emulator.add_device(f"C02DUP{n:03}")
    last = emulator.add_device("c02dup")  # the 650th, on the third page
    devices = await client.devices_by_serial("C02DUP")
    assert [d.device_id for d in devices] == [last["device_id"]]
    assert [entry.query.split("&")[-1] for entry in emulator.log] == [
        "offset=0",
        "offset=300",
        "offset=600",
    ]


async def test_inventory_pages_until_a_short_page(emulator: IruEmulator, client: IruClient) -> None:
    for n in range(650):
        emulator.add_device(f"SER{n:04}", is_removed=n % 100 == 0)
    emulator.add_device(None)
    devices = await client.inventory()
    assert len(devices) == 651 - 7
    assert len({d.device_id for d in devices}) == len(devices)
    assert devices[-1].serial_number is None
    assert len(emulator.log) == 3


async def test_inventory_exactly_one_full_page_ends_on_the_empty_page(
    emulator: IruEmulator, client: IruClient
) -> None:
    for n in range(300):
        emulator.add_device(f"SER{n:04}")
    assert len(await client.inventory()) == 300
    assert [entry.query for entry in emulator.log] == ["limit=300&offset=0", "limit=300&offset=300"]


async def test_emulator_refuses_a_limit_over_300(client: IruClient) -> None:
    with pytest.raises(Rejected) as caught:
        await client.session.request("GET", "/api/v1/devices", params={"limit": 301})
    assert caught.value.status == 400


# --- force sync ---------------------------------------------------------------------------


async def test_blankpush_path_and_empty_body(emulator: IruEmulator, client: IruClient) -> None:
    device_id = emulator.add_device("C02ABC")["device_id"]
    sent = await client.force_sync(device_id)
    path = f"/api/v1/devices/{device_id}/action/blankpush"
    assert (sent.request, sent.status, sent.credential) == (f"POST {path}", 200, "current")
    (call,) = emulator.log
    assert (call.method, call.path, call.body) == ("POST", path, b"")
    assert emulator.blank_pushes == [device_id]


async def test_command_already_running_counts_as_sent(
    emulator: IruEmulator, client: IruClient
) -> None:
    device_id = emulator.add_device("C02ABC")["device_id"]
    await client.force_sync(device_id)
    again = await client.force_sync(device_id)
    assert (again.status, again.credential) == (400, "current")
    assert emulator.blank_pushes == [device_id]
    emulator.complete_pushes()
    assert (await client.force_sync(device_id)).status == 200
    assert emulator.blank_pushes == [device_id, device_id]


async def test_other_blankpush_errors_are_rejected(
    emulator: IruEmulator, client: IruClient
) -> None:
    device_id = emulator.add_device("C02ABC")["device_id"]
    emulator.inject(Fault(400, body='{"detail": "Device is not MDM enrolled"}'))
    with pytest.raises(Rejected) as caught:
        await client.force_sync(device_id)
    assert caught.value.status == 400
    with pytest.raises(Rejected) as unknown:
        await client.force_sync("no-such-device")
    assert unknown.value.status == 404
    assert emulator.blank_pushes == []


# --- profile ------------------------------------------------------------------------------


async def test_update_profile_uploads_the_exact_bytes(
    emulator: IruEmulator, client: IruClient
) -> None:
    payload = b'<?xml version="1.0"?>\n<plist version="1.0"><dict>\x00\xff</dict></plist>\r\n'
    sent = await client.update_profile("Claude Code", payload)
    assert (sent.request, sent.status) == ("PATCH /api/v1/library/custom-profiles/li-1", 200)
    profile = emulator.profiles["li-1"]
    assert profile["file"] == payload
    assert profile["name"] == "Claude Code"
    assert profile["filename"] == "Claude Code.mobileconfig"
    assert profile["content_type"] == "application/x-apple-aspen-config"
    assert emulator.blueprints["bp-1"]["library_items"] == ["li-1"]  # (re)assigned with it


async def test_update_of_an_unknown_profile_is_rejected(emulator: IruEmulator) -> None:
    token = emulator.mint_token(emulator.all_privileges)
    client = IruClient(integration(emulator, token, profile_id="li-gone"), retry=FAST)
    try:
        with pytest.raises(Rejected) as caught:
            await client.update_profile("Claude Code", b"<plist/>")
    finally:
        await client.aclose()
    assert caught.value.status == 404


async def test_missing_profile_or_blueprint_id_fails_before_any_request(
    emulator: IruEmulator,
) -> None:
    token = emulator.mint_token(emulator.all_privileges)
    client = IruClient(integration(emulator, token, profile_id=None, blueprint_id=None), retry=FAST)
    try:
        with pytest.raises(ValueError, match="profile_id"):
            await client.update_profile("Claude Code", b"<plist/>")
        with pytest.raises(ValueError, match="profile_id"):
            await client.assign_to_blueprint()
        with pytest.raises(ValueError, match="profile_id"):
            await client.compliance(IMPORTED)
    finally:
        await client.aclose()
    assert emulator.log == []


async def test_create_then_assign_to_blueprint(emulator: IruEmulator, client: IruClient) -> None:
    item_id, created = await client.create_profile("Claude Code", b"<plist/>")
    assert created.status == 201
    assert emulator.profiles[item_id]["file"] == b"<plist/>"
    sent = await client.assign_to_blueprint()
    assert (sent.request, sent.status) == (
        "POST /api/v1/blueprints/bp-1/assign-library-item",
        200,
    )
    assert json.loads(emulator.log[-1].body) == {"library_item_id": "li-1"}
    assert emulator.blueprints["bp-1"]["library_items"] == ["li-1"]


async def test_assignment_node_only_for_assignment_maps(
    emulator: IruEmulator, client: IruClient
) -> None:
    with pytest.raises(Rejected) as caught:
        await client.assign_to_blueprint(assignment_node_id="node-1")
    assert caught.value.status == 400
    emulator.add_blueprint("bp-1", assignment_map=True)
    await client.assign_to_blueprint(assignment_node_id="node-1")
    assert json.loads(emulator.log[-1].body) == {
        "library_item_id": "li-1",
        "assignment_node_id": "node-1",
    }


# --- compliance ---------------------------------------------------------------------------

STATUS_CASES = [
    ("success", ComplianceStatus.COMPLIANT),
    ("PASS", ComplianceStatus.COMPLIANT),
    ("failed", ComplianceStatus.NONCOMPLIANT),
    ("ERROR", ComplianceStatus.NONCOMPLIANT),
    ("INCOMPATIBLE", ComplianceStatus.NONCOMPLIANT),
    ("pending", ComplianceStatus.MISSING_PROFILE),
    ("PENDING", ComplianceStatus.MISSING_PROFILE),
    ("CHANGE_PENDING", ComplianceStatus.MISSING_PROFILE),
    ("AVAILABLE", ComplianceStatus.MISSING_PROFILE),
    ("DOWNLOADING", ComplianceStatus.MISSING_PROFILE),
    ("INSTALLING", ComplianceStatus.MISSING_PROFILE),
    ("CACHED", ComplianceStatus.MISSING_PROFILE),
    ("EXCLUDED", ComplianceStatus.UNKNOWN),
    ("SOMETHING_NEW", ComplianceStatus.UNKNOWN),
]


async def test_compliance_maps_every_status_family(
    emulator: IruEmulator, client: IruClient
) -> None:
    expected: dict[str, ComplianceStatus] = {}
    for status, mapped in STATUS_CASES:
        device_id = emulator.add_device(f"S-{status}")["device_id"]
        emulator.set_item(device_id, "other-item", "failed", name="Something else")
        emulator.set_item(device_id, "li-1", status)
        expected[device_id] = mapped
    bare = emulator.add_device("S-none")["device_id"]
    emulator.set_item(bare, "other-item", "success", name="Something else")
    expected[bare] = ComplianceStatus.MISSING_PROFILE
    emulator.add_device("S-removed", is_removed=True)

    records = await client.compliance(IMPORTED)

    assert {r.device_id: r.status for r in records} == expected
    by_id = {r.device_id: r for r in records}
    assert by_id[bare].reported_at == IMPORTED
    some = next(r for r in records if r.serial_number == "S-failed")
    assert some.reported_at == datetime(2026, 1, 5, 9, 30, tzinfo=UTC)
    assert some.imported_at == IMPORTED
    assert "failed" in some.reason
    assert all(r.vendor is Vendor.IRU for r in records)
    assert len(emulator.calls("GET", "/api/v1/devices/")) == len(expected)


async def test_compliance_is_bounded(emulator: IruEmulator, client: IruClient) -> None:
    ids = [emulator.add_device(f"S{n}")["device_id"] for n in range(10)]
    subset = await client.compliance(IMPORTED, [ids[3], ids[7], ids[3]])
    assert [r.device_id for r in subset] == [ids[3], ids[7]]
    assert all(r.serial_number is None for r in subset)
    assert len(emulator.log) == 2  # no inventory listing when the devices are given
    turns = [
        await client.compliance(IMPORTED + timedelta(minutes=15 * n), max_devices=4)
        for n in range(3)
    ]
    assert sorted(len(turn) for turn in turns) == [2, 4, 4]  # 10 devices, 4 at a time, in turn
    assert sorted(r.device_id for turn in turns for r in turn) == sorted(ids)
    assert len(emulator.log) == 2 + 3 * (1 + 4) - 2


async def test_compliance_skips_a_device_removed_meanwhile(
    emulator: IruEmulator, client: IruClient
) -> None:
    kept = emulator.add_device("S1")["device_id"]
    records = await client.compliance(IMPORTED, [kept, "gone"])
    assert [r.device_id for r in records] == [kept]


async def test_compliance_failure_is_the_mdm_error_itself(emulator: IruEmulator) -> None:
    ids = [emulator.add_device(f"S{n}")["device_id"] for n in range(6)]
    emulator.inject(Fault(503), times=100, when=lambda r: r.path.endswith("/library-items"))
    client = make_client(emulator, sleep=recording_sleep()[1])
    try:
        with pytest.raises(Unavailable):
            await client.compliance(IMPORTED, ids)
    finally:
        await client.aclose()


# --- throttling and failures --------------------------------------------------------------


async def test_429_with_retry_after_is_honoured(emulator: IruEmulator) -> None:
    slept, sleep = recording_sleep()
    client = make_client(emulator, sleep=sleep)
    emulator.inject(Fault(429, headers={"Retry-After": "7"}))
    try:
        assert await client.inventory() == []
    finally:
        await client.aclose()
    assert slept == [7.0]
    assert [entry.status for entry in emulator.log] == [429, 200]


async def test_429_without_retry_after_backs_off(emulator: IruEmulator) -> None:
    slept, sleep = recording_sleep()
    client = make_client(emulator, sleep=sleep)
    emulator.inject(Fault(429), times=2)
    try:
        assert await client.inventory() == []
    finally:
        await client.aclose()
    assert len(slept) == 2
    assert 0 <= slept[0] <= 0.01 and 0 <= slept[1] <= 0.02


async def test_the_tenant_budget_exhausted_is_throttled(emulator: IruEmulator) -> None:
    emulator.hourly_limit = 2
    slept, sleep = recording_sleep()
    client = make_client(emulator, sleep=sleep)
    try:
        await client.inventory()
        assert client.remaining_hour == 1
        await client.inventory()
        assert client.remaining_hour == 0
        with pytest.raises(Throttled) as caught:
            await client.inventory()
    finally:
        await client.aclose()
    assert caught.value.retry_after is None
    assert [entry.status for entry in emulator.log] == [200, 200, 429, 429, 429]
    assert len(slept) == FAST.attempts - 1


async def test_the_budget_is_shared_by_every_token(emulator: IruEmulator) -> None:
    emulator.hourly_limit, emulator.retry_after = 1, "3600"
    first = make_client(emulator)
    second = make_client(emulator)
    try:
        await first.inventory()
        with pytest.raises(Throttled) as caught:  # Retry-After beyond max_retry_after
            await second.inventory()
    finally:
        await first.aclose()
        await second.aclose()
    assert caught.value.retry_after == 3600.0
    assert second.remaining_hour == 0


async def test_5xx_storm_is_unavailable_after_exactly_attempts(emulator: IruEmulator) -> None:
    slept, sleep = recording_sleep()
    client = make_client(emulator, sleep=sleep)
    emulator.inject(Fault(503), times=10)
    try:
        with pytest.raises(Unavailable) as caught:
            await client.inventory()
    finally:
        await client.aclose()
    assert caught.value.status == 503
    assert len(emulator.log) == FAST.attempts
    assert len(slept) == FAST.attempts - 1


async def test_timeouts_are_retried_then_unavailable(emulator: IruEmulator) -> None:
    seen: list[str] = []

    def counted(request: Any) -> bool:
        seen.append(request.path)
        return True

    client = make_client(emulator, timeout=0.05)
    try:
        emulator.inject(Fault(200, delay=0.3), when=counted)
        assert await client.inventory() == []  # one timeout, then an answer
        assert len(seen) == 1
        emulator.inject(Fault(200, delay=0.3), times=FAST.attempts, when=counted)
        with pytest.raises(Unavailable):
            await client.inventory()
    finally:
        await client.aclose()
    assert len(seen) == 1 + FAST.attempts


async def test_our_own_limiter_spaces_requests_instead_of_refusing(
    emulator: IruEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert LIMITS.rate == (10_000, 3600.0)
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    small = Limits(concurrency=4, rate=(2, 60.0))
    token = emulator.mint_token(emulator.all_privileges)
    tenant = integration(emulator, token)
    limiter = RateLimit(2, 60.0, clock=lambda: now[0], sleep=sleep)
    monkeypatch.setitem(mdm._shared_limits, (Vendor.IRU, tenant.tenant_id, "any"), limiter)
    client = IruClient(tenant, retry=FAST, limits=small)
    try:
        for _ in range(5):
            await client.inventory()
    finally:
        await client.aclose()
    assert waits == [60.0, 60.0]
    assert [entry.status for entry in emulator.log] == [200] * 5


async def test_the_hourly_limiter_is_per_tenant(emulator: IruEmulator) -> None:
    token = emulator.mint_token(emulator.all_privileges)
    shared = integration(emulator, token)
    a, b = IruClient(shared), IruClient(shared)
    other = IruClient(integration(emulator, token))
    try:
        assert a.session._rate is b.session._rate
        assert a.session._rate is not other.session._rate
    finally:
        for c in (a, b, other):
            await c.aclose()


# --- credentials --------------------------------------------------------------------------


async def test_rotation_uses_the_previous_token_within_grace(emulator: IruEmulator) -> None:
    old = emulator.mint_token(emulator.all_privileges)
    new = emulator.mint_token(emulator.all_privileges)
    device_id = emulator.add_device("C02ABC")["device_id"]
    emulator.revoke_token(new)
    within = integration(
        emulator,
        new,
        previous=credential(old),
        grace_until=datetime.now(UTC) + timedelta(hours=1),
    )
    client = IruClient(within, retry=FAST)
    try:
        sent = await client.force_sync(device_id)
        assert (sent.status, sent.credential) == (200, "previous")
        assert client.session.used_previous
        again = await client.force_sync(device_id)  # already running, answered to the old token
        assert (again.status, again.credential) == (400, "previous")
    finally:
        await client.aclose()

    expired = within.model_copy(update={"grace_until": datetime.now(UTC) - timedelta(seconds=1)})
    client = IruClient(expired, retry=FAST)
    try:
        with pytest.raises(AuthFailed):
            await client.force_sync(device_id)
    finally:
        await client.aclose()


# --- base URL -----------------------------------------------------------------------------


def test_api_url_per_region() -> None:
    assert api_url("acme", "us") == "https://acme.api.kandji.io"
    assert api_url(" Acme ", "eu") == "https://acme.api.eu.kandji.io"
    for bad in ["", "acme.evil.com", "acme/x", "-acme"]:
        with pytest.raises(ValueError):
            api_url(bad, "us")


@pytest.mark.parametrize(
    "url",
    [
        "http://acme.api.kandji.io",
        "http://10.0.0.5:8080",
        "ftp://acme.api.kandji.io",
        "https://acme.clients.us-1.kandji.io/api/v1/",
        "https://user:pw@acme.api.kandji.io",
    ],
)
def test_base_url_must_be_an_https_host(url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        IruClient(Integration(tenant_id="t", vendor=Vendor.IRU, base_url=url))


@pytest.mark.parametrize(
    "url",
    [
        "https://acme.api.kandji.io",
        "https://acme.api.eu.kandji.io/",
        "http://localhost:8080",
        "https://proxy.corp/iru",  # behind a reverse proxy
    ],
)
async def test_base_url_accepted(url: str) -> None:
    client = IruClient(Integration(tenant_id="t", vendor=Vendor.IRU, base_url=url))
    await client.aclose()


def test_other_vendors_are_refused() -> None:
    with pytest.raises(ValueError, match="not an Iru"):
        IruClient(Integration(tenant_id="t", vendor=Vendor.JAMF, base_url="https://x.example"))


# --- secrecy ------------------------------------------------------------------------------


async def test_the_token_never_leaks(
    emulator: IruEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    weak = emulator.mint_token({"GET /api/v1/devices"})
    revoked = emulator.mint_token(emulator.all_privileges)
    emulator.revoke_token(revoked)
    device_id = emulator.add_device("C02ABC")["device_id"]
    errors: list[MdmError] = []
    texts: list[str] = []
    calls: list[tuple[str, Callable[[IruClient], Awaitable[object]]]] = [
        (weak, lambda c: c.force_sync(device_id)),
        (weak, lambda c: c.update_profile("x", b"<plist/>")),
        (revoked, lambda c: c.inventory()),
        (weak, lambda c: c.session.request("DELETE", f"/api/v1/devices/{device_id}")),
    ]
    for token, call in calls:
        client = IruClient(integration(emulator, token), retry=FAST)
        texts += [repr(client), str(client), repr(client.session), repr(client.integration)]
        texts += [str(client.integration), client.integration.model_dump_json()]
        try:
            with pytest.raises(MdmError) as caught:
                await call(client)
        finally:
            await client.aclose()
        errors.append(caught.value)
    assert [type(e) for e in errors] == [Forbidden, Forbidden, AuthFailed, NotAllowed]
    texts += [str(e) for e in errors] + [repr(e) for e in errors] + [caplog.text]
    texts += [e.request for e in errors]
    for text in texts:
        assert weak not in text
        assert revoked not in text
