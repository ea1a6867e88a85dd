"""The Jamf Pro client against the Jamf emulator: least privilege, auth, paging, writes, faults."""

from __future__ import annotations

import json
import logging
import plistlib
import time
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs

import pytest
from pydantic import SecretStr

from actions.jamf import JamfClient, allowlist, client, profile_xml, rsql_quote
from actions.mdm import (
    AuthFailed,
    Credential,
    Forbidden,
    Integration,
    MdmClient,
    MdmError,
    NotAllowed,
    Rejected,
    RetryPolicy,
    Sent,
    Unavailable,
)
from schemas.remediation import ComplianceStatus, Vendor
from tests.emulators.base import Fault
from tests.emulators.jamf import (
    ALL_PRIVILEGES,
    READ_COMPUTERS,
    JamfEmulator,
)

SECRET = "jamf-client-secret-0123456789"
OLD_SECRET = "jamf-old-client-secret-9876543210"
FAST = RetryPolicy(attempts=3, backoff=0.01)
V4 = "/api/v4/computers-inventory"
V3 = "/api/v3/computers-inventory"
TOKEN = "/api/oauth/token"


def credential(client_id: str, secret: str = SECRET) -> Credential:
    return Credential(client_id=client_id, secret=SecretStr(secret), created_at=datetime.now(UTC))


def integration(
    emulator: JamfEmulator,
    *,
    current: Credential | None = None,
    previous: Credential | None = None,
    grace_until: datetime | None = None,
    force_sync: bool = True,
    profile_id: str | None = "7",
) -> Integration:
    return Integration(
        tenant_id="acme",
        vendor=Vendor.JAMF,
        base_url=emulator.url,
        current=current or credential("driftline"),
        previous=previous,
        grace_until=grace_until,
        force_sync=force_sync,
        profile_id=profile_id,
    )


class Sleeps:
    """Records every wait the session asks for, without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
async def jamf() -> AsyncIterator[JamfEmulator]:
    emulator = JamfEmulator()
    emulator.add_client("driftline", SECRET, ALL_PRIVILEGES)
    emulator.add_profile("7", "Claude Code")
    await emulator.start()
    yield emulator
    await emulator.stop()


def make(emulator: JamfEmulator, **kwargs: object) -> JamfClient:
    """A client with fast retries; ``integration=`` overrides the default integration."""
    target = kwargs.pop("integration", None) or integration(emulator)
    assert isinstance(target, Integration)
    kwargs.setdefault("retry", FAST)
    kwargs.setdefault("sleep", Sleeps())
    return client(target, **kwargs)


# --- least privilege ---------------------------------------------------------------------


async def test_force_sync_without_opt_in_is_refused_before_any_request(
    jamf: JamfEmulator,
) -> None:
    device = jamf.add_computer("C02ABC")
    async with make(jamf, integration=integration(jamf, force_sync=False)) as jc:
        with pytest.raises(NotAllowed):
            await jc.force_sync(str(device.management_id))
    assert jamf.log == []  # not even a token request
    assert jamf.blank_pushes == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/JSSResource/computercommands/command/BlankPush"),
        ("POST", "/JSSResource/computercommands/command/BlankPush/id/1"),
        ("POST", "/api/v2/mdm/commands"),
        ("PUT", "/JSSResource/osxconfigurationprofiles/id/8"),  # not the configured profile
        ("DELETE", "/JSSResource/osxconfigurationprofiles/id/7"),
        ("GET", "/api/v1/computers-inventory-detail/1"),
    ],
)
async def test_nothing_outside_the_allowlist_is_sent(
    jamf: JamfEmulator, method: str, path: str
) -> None:
    async with make(jamf) as jc:
        with pytest.raises(NotAllowed):
            await jc.session.request(method, path)
    assert jamf.log == []


def test_allowlist_is_least_privilege(jamf: JamfEmulator) -> None:
    opted_in = {str(r) for r in allowlist(integration(jamf)).routes}
    assert opted_in == {
        "GET /api/v1/jamf-pro-version",
        "GET /api/v3/computers-inventory",
        "GET /api/v4/computers-inventory",
        "GET /JSSResource/osxconfigurationprofiles/id/7",
        "PUT /JSSResource/osxconfigurationprofiles/id/7",
        "POST /api/v2/mdm/blank-push",
        "GET /api/v2/mdm/commands",
    }
    plain = {str(r) for r in allowlist(integration(jamf, force_sync=False, profile_id=None)).routes}
    assert plain == {
        "GET /api/v1/jamf-pro-version",
        "GET /api/v3/computers-inventory",
        "GET /api/v4/computers-inventory",
    }


# --- authentication ----------------------------------------------------------------------


async def test_token_is_reused_and_renewed_before_it_expires(jamf: JamfEmulator) -> None:
    now = [1000.0]
    jamf.clock = lambda: now[0]
    jamf.add_computer("C02ABC")
    async with make(jamf) as jc:
        jc.auth.clock = lambda: now[0]
        await jc.inventory()
        await jc.inventory()
        now[0] += 500  # 599 s tokens: still inside the 90 % margin
        await jc.inventory()
        assert len(jamf.calls("POST", TOKEN)) == 1
        now[0] += 60  # past 539 s: renewed while the old one would still work
        await jc.inventory()
    assert len(jamf.calls("POST", TOKEN)) == 2
    assert all(entry.status < 400 for entry in jamf.log)


async def test_expired_token_is_replaced(jamf: JamfEmulator) -> None:
    now = [1000.0]
    jamf.clock = lambda: now[0]
    jamf.add_client("short", SECRET, ALL_PRIVILEGES, lifetime=1)
    async with make(jamf, integration=integration(jamf, current=credential("short"))) as jc:
        jc.auth.clock = lambda: now[0]
        await jc.inventory()
        now[0] += 5
        await jc.inventory()
    assert len(jamf.calls("POST", TOKEN)) == 2


def expire_at(jamf: JamfEmulator, now: list[float], path: str, nth: int, by: float) -> None:
    """Move the emulator's clock (and the client's, when it shares ``now``) ``by`` seconds as
    the ``nth`` request to ``path`` arrives: time passes in the middle of a pass."""
    seen = [0]

    def tick(request: object) -> bool:
        if getattr(request, "path", "") == path:
            seen[0] += 1
            if seen[0] == nth:
                now[0] += by
        return False  # never a fault: only the clock moves

    jamf.inject(Fault(599), when=tick)


async def test_a_30_s_token_expiring_during_a_paged_pull_is_renewed(jamf: JamfEmulator) -> None:
    """Jamf tokens can live 30 s; a 6-page pull taking 12 s a page crosses two lifetimes, some
    of them in flight. Tokens are renewed ahead of expiry or after the 401, each page is answered
    exactly once, and every computer arrives once."""
    now = [1000.0]
    jamf.clock = lambda: now[0]
    jamf.add_client("short", SECRET, ALL_PRIVILEGES, lifetime=30)
    for n in range(12):
        jamf.add_computer(f"C02PAGE{n:02}")
    page_clock = [0]

    def slow_pages(request: object) -> bool:
        if getattr(request, "path", "") == V4:
            page_clock[0] += 1
            now[0] += 12  # each page takes 12 s: a 30 s token expires every third page
        return False

    jamf.inject(Fault(599), when=slow_pages)
    target = integration(jamf, current=credential("short"))
    async with make(jamf, integration=target, page_size=2) as jc:
        jc.auth.clock = lambda: now[0]
        devices = await jc.inventory()
    assert sorted(d.serial_number or "" for d in devices) == [f"C02PAGE{n:02}" for n in range(12)]
    answered = [parse_qs(e.query)["page"][0] for e in jamf.calls("GET", V4) if e.status == 200]
    assert answered == ["0", "1", "2", "3", "4", "5"]
    refused = [e for e in jamf.calls("GET", V4) if e.status == 401]
    assert page_clock[0] == 6 + len(refused)
    assert len(jamf.calls("POST", TOKEN)) >= 3  # renewed during the pull


async def test_a_token_the_server_expires_mid_pull_is_replaced_and_the_page_retried(
    jamf: JamfEmulator,
) -> None:
    """The server's clock runs ahead (or Jamf shortened the lifetime): page 3 is answered 401.
    The client fetches a new token once and asks for that page again; nothing is lost."""
    now = [1000.0]
    jamf.clock = lambda: now[0]
    jamf.add_client("short", SECRET, ALL_PRIVILEGES, lifetime=30)
    for n in range(10):
        jamf.add_computer(f"C02SKEW{n:02}")
    expire_at(jamf, now, V4, nth=3, by=31)  # the client's clock does not move
    target = integration(jamf, current=credential("short"))
    async with make(jamf, integration=target, page_size=2) as jc:
        devices = await jc.inventory()
    assert len(devices) == 10
    assert [e.status for e in jamf.calls("GET", V4)] == [200, 200, 401, 200, 200, 200]
    assert len(jamf.calls("POST", TOKEN)) == 2


async def test_a_token_expiring_during_a_run_of_sends_is_replaced(jamf: JamfEmulator) -> None:
    """Five blank pushes in a row; the token expires at the third. Each computer is pushed
    exactly once, and the audit-visible answer of every send is a success."""
    now = [1000.0]
    jamf.clock = lambda: now[0]
    jamf.add_client("short", SECRET, ALL_PRIVILEGES, lifetime=30)
    computers = [jamf.add_computer(f"C02SEND{n}") for n in range(5)]
    expire_at(jamf, now, "/api/v2/mdm/blank-push", nth=3, by=31)
    target = integration(jamf, current=credential("short"))
    async with make(jamf, integration=target) as jc:
        sent = [await jc.force_sync(str(c.management_id)) for c in computers]
    assert [s.status for s in sent] == [200] * 5
    assert jamf.blank_pushes == [c.management_id for c in computers]
    pushes = [e.status for e in jamf.calls("POST", "/api/v2/mdm/blank-push")]
    assert pushes == [200, 200, 401, 200, 200, 200]
    assert len(jamf.calls("POST", TOKEN)) == 2


async def test_revoked_token_mid_life_is_refreshed_once(jamf: JamfEmulator) -> None:
    jamf.add_computer("C02ABC")
    async with make(jamf) as jc:
        await jc.inventory()
        jamf.tokens.clear()  # Jamf dropped the token early (e.g. a restart)
        devices = await jc.inventory()
    assert len(devices) == 1
    assert len(jamf.calls("POST", TOKEN)) == 2
    assert [entry.status for entry in jamf.calls("GET", V4)] == [200, 401, 200]


async def test_revoked_client_fails_auth(jamf: JamfEmulator) -> None:
    async with make(jamf) as jc:
        await jc.inventory()
        jamf.revoke_client("driftline")
        with pytest.raises(AuthFailed):
            await jc.inventory()
    assert [entry.status for entry in jamf.calls("POST", TOKEN)] == [200, 401]


async def test_previous_credential_in_grace_is_used_and_reported(jamf: JamfEmulator) -> None:
    jamf.add_client("old", OLD_SECRET, ALL_PRIVILEGES)
    device = jamf.add_computer("C02ABC")
    rotated = integration(
        jamf,
        current=credential("driftline", "not-yet-live-secret"),
        previous=credential("old", OLD_SECRET),
        grace_until=datetime.now(UTC) + timedelta(hours=1),
    )
    async with make(jamf, integration=rotated) as jc:
        sent = await jc.force_sync(str(device.management_id))
        assert jc.session.used_previous
    assert sent == Sent("POST /api/v2/mdm/blank-push", 200, "previous")


async def test_previous_credential_after_grace_is_not_used(jamf: JamfEmulator) -> None:
    jamf.add_client("old", OLD_SECRET, ALL_PRIVILEGES)
    expired = integration(
        jamf,
        current=credential("driftline", "not-yet-live-secret"),
        previous=credential("old", OLD_SECRET),
        grace_until=datetime.now(UTC) - timedelta(seconds=1),
    )
    async with make(jamf, integration=expired) as jc:
        with pytest.raises(AuthFailed):
            await jc.inventory()
    assert [entry.status for entry in jamf.calls("POST", TOKEN)] == [401]


async def test_missing_privilege_is_forbidden(jamf: JamfEmulator) -> None:
    jamf.add_client("reader", SECRET, {READ_COMPUTERS})
    async with make(jamf, integration=integration(jamf, current=credential("reader"))) as jc:
        await jc.inventory()
        with pytest.raises(Forbidden):
            await jc.update_profile("Claude Code", plistlib.dumps({"a": 1}))
        with pytest.raises(Forbidden):
            await jc.force_sync("some-management-id")
    assert jamf.profiles["7"].updates == 0


# --- inventory ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "path"),
    [
        ("11.30.1-t1700000000", V4),
        ("11.30.0-t1700000000", V4),
        ("12.0.0", V4),
        ("11.29.2-t1690000000", V3),
        ("10.49.0", V3),
        ("unreadable", V3),
    ],
)
async def test_inventory_version_follows_the_server(
    jamf: JamfEmulator, version: str, path: str
) -> None:
    jamf.version = version
    jamf.add_computer("C02ABC")
    async with make(jamf) as jc:
        assert len(await jc.inventory()) == 1
        assert len(await jc.devices_by_serial("C02ABC")) == 1
    assert len(jamf.calls("GET", "/api/v1/jamf-pro-version")) == 1
    assert len(jamf.calls("GET", path)) == 2
    assert len(jamf.calls("GET", V3 if path == V4 else V4)) == 0


async def test_v4_is_absent_before_11_30(jamf: JamfEmulator) -> None:
    jamf.version = "11.29.2-t1690000000"
    async with make(jamf) as jc:
        with pytest.raises(Rejected) as raised:
            await jc.session.request("GET", V4)
    assert raised.value.status == 404


async def test_inventory_pages_through_everything(jamf: JamfEmulator) -> None:
    serials = [f"C02{n:05d}" for n in range(250)]
    for serial in serials:
        jamf.add_computer(serial)
    jamf.add_computer("NOMDM", managed=False)  # cannot be blank-pushed: left out
    async with make(jamf, page_size=100) as jc:
        devices = await jc.inventory()
    assert sorted(d.serial_number or "" for d in devices) == serials
    assert {d.vendor for d in devices} == {Vendor.JAMF}
    assert len({d.device_id for d in devices}) == 250
    pages = [parse_qs(entry.query) for entry in jamf.calls("GET", V4)]
    assert [p["page"] for p in pages] == [["0"], ["1"], ["2"]]
    assert all(p["page-size"] == ["100"] and p["sort"] == ["id:asc"] for p in pages)


def test_page_size_is_bounded(jamf: JamfEmulator) -> None:
    with pytest.raises(ValueError, match="page_size"):
        JamfClient(integration(jamf), page_size=2001)


async def test_emulator_rejects_oversized_pages_and_bad_filters(jamf: JamfEmulator) -> None:
    async with make(jamf) as jc:
        for params in (
            [("page-size", "2001")],
            [("filter", "hardware.serialNumber~~x")],
            [("filter", 'general.osVersion=="14.0"')],
            [("section", "GENERAL,SECRETS")],
        ):
            with pytest.raises(Rejected) as raised:
                await jc.session.request("GET", V4, params=params)
            assert raised.value.status == 400
        jamf.add_computer("C02ABC")
        response, _ = await jc.session.request("GET", V4, params={"section": "GENERAL,HARDWARE"})
    (record,) = response.json()["results"]
    assert record["hardware"] == {"serialNumber": "C02ABC"}
    assert record["configurationProfiles"] is None


async def test_serial_lookup_is_exact_and_ignores_case_and_padding(jamf: JamfEmulator) -> None:
    wanted = jamf.add_computer("C02ABC")
    jamf.add_computer("C02ABC1")
    jamf.add_computer("XC02ABC")
    async with make(jamf) as jc:
        for query in ("C02ABC", " c02abc\t", "C02abc"):
            (device,) = await jc.devices_by_serial(query)
            assert device.device_id == wanted.management_id
            assert device.serial_number == "C02ABC"
        assert await jc.devices_by_serial("C02AB") == []
        assert await jc.devices_by_serial("   ") == []
        # Jamf may read * as a wildcard: whatever it answers, only an exact match counts
        assert await jc.devices_by_serial("C02ABC*") == []
    first = parse_qs(jamf.calls("GET", V4)[0].query)
    assert first["section"] == ["GENERAL", "HARDWARE"]
    assert first["page"] == ["0"] and first["page-size"] == ["100"]
    assert first["filter"] == ['hardware.serialNumber=="C02ABC"']


async def test_serial_filter_is_quoted(jamf: JamfEmulator) -> None:
    odd = 'A"B\\C;D,E'
    device = jamf.add_computer(odd)
    jamf.add_computer("A")
    async with make(jamf) as jc:
        assert [d.device_id for d in await jc.devices_by_serial(odd)] == [device.management_id]
    (entry,) = jamf.calls("GET", V4)
    assert parse_qs(entry.query)["filter"] == ['hardware.serialNumber=="A\\"B\\\\C;D,E"']
    assert rsql_quote('x"y\\') == '"x\\"y\\\\"'


async def test_serial_lookup_pages_when_a_serial_repeats(jamf: JamfEmulator) -> None:
    for _ in range(150):  # re-enrolments leave several records with one serial
        jamf.add_computer("C02DUP")
    async with make(jamf) as jc:
        assert len(await jc.devices_by_serial("c02dup")) == 150
    assert len(jamf.calls("GET", V4)) == 2


# --- compliance --------------------------------------------------------------------------


async def test_compliance_missing_vs_installed(jamf: JamfEmulator) -> None:
    installed = jamf.add_computer(
        "C02OK",
        profiles=["com.example.wifi", "com.driftline.acme.claudecode"],
        report_date="2025-03-01T10:15:00.123Z",
    )
    missing = jamf.add_computer("C02MISS", profiles=["com.driftline.acme.claudecode.old"])
    jamf.add_computer("C02NOMDM", managed=False, profiles=[])
    imported_at = datetime(2025, 3, 2, tzinfo=UTC)
    async with make(jamf) as jc:
        records = {r.device_id: r for r in await jc.compliance(imported_at)}
    assert set(records) == {installed.management_id, missing.management_id}
    ok = records[str(installed.management_id)]
    assert ok.status is ComplianceStatus.COMPLIANT
    assert ok.serial_number == "C02OK"
    assert ok.reported_at == datetime(2025, 3, 1, 10, 15, 0, 123000, tzinfo=UTC)
    assert ok.imported_at == imported_at
    gap = records[str(missing.management_id)]
    assert gap.status is ComplianceStatus.MISSING_PROFILE
    assert "com.driftline.acme.claudecode" in gap.reason
    assert gap.reported_at == imported_at  # no report date: the import time stands in
    query = parse_qs(jamf.calls("GET", V4)[0].query)
    assert query["section"] == ["GENERAL", "HARDWARE", "CONFIGURATION_PROFILES"]


# --- writes ------------------------------------------------------------------------------


async def test_force_sync_sends_the_documented_body(jamf: JamfEmulator) -> None:
    device = jamf.add_computer("C02ABC")
    management_id = str(device.management_id)
    async with make(jamf) as jc:
        sent = await jc.force_sync(management_id)
    assert sent == Sent("POST /api/v2/mdm/blank-push", 200, "current")
    assert jamf.blank_pushes == [management_id]
    (entry,) = jamf.calls("POST", "/api/v2/mdm/blank-push")
    assert json.loads(entry.body) == {"clientManagementIds": [management_id]}


@pytest.mark.parametrize("key", ["errorUuids", "failedIds", "errors"])
async def test_force_sync_to_an_unknown_device_is_rejected(jamf: JamfEmulator, key: str) -> None:
    jamf.blank_push_error_key = key
    async with make(jamf) as jc:
        with pytest.raises(Rejected):
            await jc.force_sync("00000000-0000-0000-0000-000000000000")
    assert jamf.blank_pushes == []


async def test_update_profile_stores_exactly_the_mobileconfig(jamf: JamfEmulator) -> None:
    settings = {"env": {"OTEL_RESOURCE_ATTRIBUTES": "team.id=a&b<c>\"d'", "NAME": "Zoë ✓"}}
    mobileconfig = plistlib.dumps({"PayloadContent": [settings]}).replace(b"\n", b"\r\n")
    async with make(jamf) as jc:
        sent = await jc.update_profile("Claude Code & <friends>", mobileconfig)
    assert sent == Sent("PUT /JSSResource/osxconfigurationprofiles/id/7", 201, "current")
    stored = jamf.profiles["7"]
    assert stored.payload == mobileconfig
    assert stored.redeploy == "All"
    assert stored.name == "Claude Code & <friends>"


async def test_update_profile_needs_a_profile_id(jamf: JamfEmulator) -> None:
    for profile_id in (None, "7; DROP", "../8"):
        target = integration(jamf, profile_id=profile_id)
        async with make(jamf, integration=target) as jc:
            with pytest.raises(ValueError, match="profile_id"):
                await jc.update_profile("Claude Code", plistlib.dumps({}))
    assert jamf.log == []


def test_signed_or_binary_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="plist"):
        profile_xml("Claude Code", b"0\x82\x05\xff\xfe signed CMS")
    with pytest.raises(ValueError, match="XML"):
        profile_xml("Claude Code", b"<plist>\x01</plist>")
    with pytest.raises(ValueError, match="blank"):
        profile_xml("  ", plistlib.dumps({}))


async def test_emulator_answers_malformed_profile_xml_with_409(jamf: JamfEmulator) -> None:
    path = "/JSSResource/osxconfigurationprofiles/id/7"
    headers = {"Content-Type": "application/xml"}
    async with make(jamf) as jc:
        for body in (b"<os_x_configuration_profile><general>", profile_xml("x", b"not a plist")):
            with pytest.raises(Rejected) as raised:
                await jc.session.request("PUT", path, content=body, headers=headers)
            assert raised.value.status == 409
        response, _ = await jc.session.request("GET", path)
    assert b"<name>Claude Code</name>" in response.content
    assert jamf.profiles["7"].updates == 0


# --- faults ------------------------------------------------------------------------------


async def test_429_waits_for_retry_after(jamf: JamfEmulator) -> None:
    jamf.add_computer("C02ABC")
    sleeps = Sleeps()
    jamf.inject(Fault(429, {"Retry-After": "1"}), when=lambda r: r.path == V4)
    async with make(jamf, sleep=sleeps) as jc:
        assert len(await jc.inventory()) == 1
    assert sleeps.waits == [1.0]
    assert [entry.status for entry in jamf.calls("GET", V4)] == [429, 200]


async def test_429_retry_after_is_really_waited(jamf: JamfEmulator) -> None:
    jamf.inject(Fault(429, {"Retry-After": "1"}), when=lambda r: r.path == V4)
    async with JamfClient(integration(jamf), retry=FAST) as jc:
        started = time.monotonic()
        await jc.inventory()
        assert time.monotonic() - started >= 0.95


async def test_5xx_storm_gives_up_after_the_policy_attempts(jamf: JamfEmulator) -> None:
    sleeps = Sleeps()
    jamf.inject(Fault(503), times=10, when=lambda r: r.path == V4)
    async with make(jamf, sleep=sleeps) as jc:
        with pytest.raises(Unavailable) as raised:
            await jc.inventory()
    assert raised.value.status == 503
    assert len(jamf.calls("GET", V4)) == FAST.attempts
    assert len(sleeps.waits) == FAST.attempts - 1
    assert all(0 <= wait <= 0.04 for wait in sleeps.waits)


async def test_timeouts_are_retried_then_unavailable(jamf: JamfEmulator) -> None:
    jamf.add_computer("C02ABC")
    slow = Fault(200, delay=0.3)
    jamf.inject(slow, times=FAST.attempts - 1, when=lambda r: r.path == V4)
    async with make(jamf, timeout=0.1) as jc:
        assert len(await jc.inventory()) == 1  # two timeouts, then an answer
        jamf.inject(slow, times=FAST.attempts, when=lambda r: r.path == V4)
        with pytest.raises(Unavailable, match="Timeout"):
            await jc.inventory()


# --- secrets -----------------------------------------------------------------------------


async def test_secrets_never_leak(jamf: JamfEmulator, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    jamf.add_client("old", OLD_SECRET, {READ_COMPUTERS})
    rotated = integration(
        jamf,
        current=credential("driftline", "wrong-current-secret-abcdef"),
        previous=credential("old", OLD_SECRET),
        grace_until=datetime.now(UTC) + timedelta(hours=1),
    )
    errors: list[MdmError] = []
    async with make(jamf, integration=rotated) as jc:
        await jc.inventory()  # previous credential, with a warning logged
        cached = repr(jc.auth)  # while its token is cached
        for call in (
            lambda: jc.update_profile("x", plistlib.dumps({})),  # Forbidden
            lambda: jc.session.request("POST", "/api/v2/mdm/commands"),  # NotAllowed
        ):
            with pytest.raises(MdmError) as raised:
                await call()
            errors.append(raised.value)
        jamf.inject(Fault(500), times=FAST.attempts, when=lambda r: r.path == V4)
        with pytest.raises(Unavailable) as unavailable:
            await jc.inventory()
        errors.append(unavailable.value)
        jamf.revoke_client("old")
        with pytest.raises(AuthFailed) as denied:
            await jc.inventory()
        errors.append(denied.value)
        texts = [cached, repr(jc), str(jc), repr(jc.session), repr(rotated), caplog.text]
    texts += [repr(e) + str(e) + "".join(traceback.format_exception(e)) for e in errors]
    secrets = [SECRET, OLD_SECRET, "wrong-current-secret-abcdef", *jamf.tokens]
    secrets += [str(e.authorization).removeprefix("Bearer ") for e in jamf.log if e.authorization]
    assert {type(e) for e in errors} == {Forbidden, NotAllowed, Unavailable, AuthFailed}
    for text in texts:
        for secret in secrets:
            assert secret not in text


# --- shape -------------------------------------------------------------------------------


async def test_client_is_an_mdm_client(jamf: JamfEmulator) -> None:
    mdm: MdmClient = make(jamf)
    assert mdm.integration.vendor is Vendor.JAMF
    await mdm.aclose()
    with pytest.raises(ValueError, match="not a Jamf"):
        JamfClient(integration(jamf).model_copy(update={"vendor": Vendor.IRU}))
