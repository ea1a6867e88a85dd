"""The Intune client against the Graph/Entra emulator: least privilege, the ignored serial
filter, paging, the compliance join, throttling, retries, rotation and secret hygiene."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs
from uuid import uuid4

import httpx
import pytest
from aiohttp import web
from pydantic import SecretStr

from actions.intune import LIMITS, IntuneClient, allowlist
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
    Throttled,
    Unavailable,
)
from schemas.remediation import ComplianceStatus, Vendor
from tests.emulators.base import Fault
from tests.emulators.intune import (
    READ_DEVICES,
    SCOPE,
    SYNC_DEVICES,
    WRITE_CONFIG,
    IntuneEmulator,
)

CLIENT_ID = "11111111-2222-3333-4444-555555555555"
SECRET = "cs~never-logged-secret-value"
ROLES = {READ_DEVICES, SYNC_DEVICES, WRITE_CONFIG}
DEVICES = "/v1.0/deviceManagement/managedDevices"
PROFILE = "/v1.0/deviceManagement/deviceConfigurations/cfg-1"


class FakeTime:
    """One clock for the emulator's windows and token expiry, advanced by the client's sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


@pytest.fixture
async def graph() -> AsyncIterator[IntuneEmulator]:
    emulator = IntuneEmulator()
    emulator.add_app(CLIENT_ID, SECRET, ROLES)
    await emulator.start()
    yield emulator
    await emulator.stop()


def credential(secret: str = SECRET, age: timedelta = timedelta(0)) -> Credential:
    return Credential(
        client_id=CLIENT_ID, secret=SecretStr(secret), created_at=datetime.now(UTC) - age
    )


def integration(graph: IntuneEmulator, **update: Any) -> Integration:
    base = Integration(
        # a tenant per test: actions.mdm keeps rate limiters per (vendor, tenant) in the process
        tenant_id=f"acme-{uuid4().hex[:8]}",
        vendor=Vendor.INTUNE,
        base_url=graph.url,
        token_url=f"{graph.url}/{graph.entra_tenant}/oauth2/v2.0/token",
        current=credential(),
        force_sync=True,
        profile_id="cfg-1",
        profile_identifier="com.anthropic.claudecode",  # adopting the customer's own profile
    )
    return base.model_copy(update=update)


MakeClient = Callable[..., IntuneClient]


@pytest.fixture
async def make(graph: IntuneEmulator) -> AsyncIterator[MakeClient]:
    clients: list[IntuneClient] = []

    def make(
        *,
        attempts: int = 4,
        max_retry_after: float = 120.0,
        timeout: float = 5.0,
        time: FakeTime | None = None,
        **update: Any,
    ) -> IntuneClient:
        retry = RetryPolicy(attempts=attempts, backoff=0.01, max_retry_after=max_retry_after)
        client = IntuneClient(
            integration(graph, **update),
            retry=retry,
            timeout=timeout,
            sleep=(time or FakeTime()).sleep,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def on_graph(request: web.Request) -> bool:
    """Faults for Graph calls only: the token endpoint keeps answering."""
    return request.path.startswith("/v1.0/")


def token_requests(graph: IntuneEmulator) -> list[dict[str, list[str]]]:
    calls = graph.calls("POST", f"/{graph.entra_tenant}/oauth2/v2.0/token")
    return [parse_qs(call.body.decode()) for call in calls]


def api_calls(graph: IntuneEmulator, method: str | None = None) -> list[str]:
    return [f"{c.method} {c.path}" for c in graph.calls(method, "/v1.0/")]


# --- configuration and least privilege ------------------------------------------------------


def test_allowlist_is_least_privilege(graph: IntuneEmulator) -> None:
    routes = {str(r) for r in allowlist(integration(graph)).routes}
    assert routes == {
        f"GET {DEVICES}",
        f"GET {PROFILE}",
        f"PATCH {PROFILE}",
        f"GET {PROFILE}/deviceStatuses",
        f"POST {DEVICES}/{{id}}/syncDevice",
    }
    assert {str(r) for r in allowlist(integration(graph, force_sync=False)).routes} == routes - {
        f"POST {DEVICES}/{{id}}/syncDevice"
    }
    assert {str(r) for r in allowlist(integration(graph, profile_id=None)).routes} == {
        f"GET {DEVICES}",
        f"POST {DEVICES}/{{id}}/syncDevice",
    }
    assert LIMITS.write_rate == (100, 20.0)
    assert LIMITS.rate == (1000, 20.0)


def test_token_url_and_vendor_required(graph: IntuneEmulator) -> None:
    with pytest.raises(ValueError, match="token_url"):
        IntuneClient(integration(graph, token_url=None))
    with pytest.raises(ValueError, match="Intune"):
        IntuneClient(integration(graph, vendor=Vendor.JAMF))
    with pytest.raises(ValueError, match="profile_id"):
        IntuneClient(integration(graph, profile_id="../x"))


async def test_refused_before_any_request(graph: IntuneEmulator, make: MakeClient) -> None:
    device = graph.add_device("C02AAA")
    no_sync = make(force_sync=False)
    with pytest.raises(NotAllowed):
        await no_sync.force_sync(device)
    client = make()
    for method, path in [
        ("POST", f"{DEVICES}/{device}/wipe"),
        ("POST", f"{DEVICES}/{device}/retire"),
        ("DELETE", f"{DEVICES}/{device}"),
        ("POST", f"/beta{DEVICES[5:]}/{device}/syncDevice"),
        ("PATCH", "/v1.0/deviceManagement/deviceConfigurations/cfg-2"),
        ("PATCH", "/v1.0/deviceManagement/deviceConfigurations/.."),  # -> PATCH /deviceManagement
        ("GET", "/v1.0/deviceManagement/deviceConfigurations"),
    ]:
        with pytest.raises(NotAllowed):
            await client.session.request(method, path)
    with pytest.raises(ValueError):
        await client.force_sync("..")
    with pytest.raises(ValueError):
        await client.force_sync(f"{device}/wipe")
    assert graph.log == []  # not even a token request


# --- tokens -------------------------------------------------------------------------------


async def test_token_scope_reuse_and_renewal(graph: IntuneEmulator, make: MakeClient) -> None:
    graph.add_device("C02AAA")
    client = make()
    await client.inventory()
    await client.inventory()
    (form,) = token_requests(graph)
    assert form["scope"] == [SCOPE]
    assert form["grant_type"] == ["client_credentials"]
    assert form["client_id"] == [CLIENT_ID]
    assert len({c.authorization for c in graph.calls("GET", DEVICES)}) == 1

    # the client's cache runs out (it trusts expires_in, 60-90 min in Entra)
    lifetime = max(t.expires_at for t in graph.tokens.values()) - graph.clock()
    real = client.auth.clock
    client.auth.clock = lambda: real() + lifetime
    await client.inventory()
    assert len(token_requests(graph)) == 2

    # the server says the token expired before the client thought: one refresh, then success
    client.auth.clock = real
    graph.tokens.clear()
    assert len(await client.inventory()) == 1
    assert len(token_requests(graph)) == 3
    assert [c.status for c in graph.calls("GET", DEVICES)][-2:] == [401, 200]


async def test_token_endpoint_is_strict(graph: IntuneEmulator) -> None:
    url = f"{graph.url}/{graph.entra_tenant}/oauth2/v2.0/token"
    form = {"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": SECRET}
    async with httpx.AsyncClient() as http:
        wrong_scope = await http.post(url, data={**form, "scope": "https://graph.microsoft.com"})
        bad_secret = await http.post(url, data={**form, "client_secret": "x", "scope": SCOPE})
        good = await http.post(url, data={**form, "scope": SCOPE})
    assert wrong_scope.status_code == 400
    assert wrong_scope.json()["error"]["code"] == "invalid_scope"
    assert bad_secret.status_code == 401
    assert good.json()["token_type"] == "Bearer"
    assert 3600 <= good.json()["expires_in"] <= 5400


# --- lookup and paging --------------------------------------------------------------------


async def test_serial_checked_in_code_when_filter_ignored(
    graph: IntuneEmulator, make: MakeClient
) -> None:
    for serial in ["C02AAA", "C02ABC1", "XC02ABC", "C02XYZ", "C02ZZZ", "", "C02QQQ"]:
        graph.add_device(serial)
    target = graph.add_device(" c02abc ")
    client = make()
    devices = await client.devices_by_serial("C02ABC ")
    assert [(d.device_id, d.serial_number) for d in devices] == [(target, "c02abc")]
    gets = graph.calls("GET", DEVICES)
    assert len(gets) == 3  # 8 devices, pages of 3: every page was read and re-checked
    first = parse_qs(gets[0].query)
    assert first["$filter"] == ["serialNumber eq 'C02ABC'"]
    assert first["$select"] == [
        "id,deviceName,serialNumber,complianceState,lastSyncDateTime,operatingSystem"
    ]
    assert all("$skiptoken" in parse_qs(g.query) for g in gets[1:])
    assert await client.devices_by_serial("C02ABC2") == []
    assert await client.devices_by_serial("  ") == []


async def test_serial_filter_honoured_and_quotes_escaped(
    graph: IntuneEmulator, make: MakeClient
) -> None:
    graph.honours_serial_filter = True
    quoted = graph.add_device("AB'12")
    plain = graph.add_device("C02ABC")
    for n in range(5):
        graph.add_device(f"C02{n:03}")
    client = make()
    assert [d.device_id for d in await client.devices_by_serial("c02abc")] == [plain]
    assert [d.device_id for d in await client.devices_by_serial("AB'12")] == [quoted]
    assert await client.devices_by_serial("x' or serialNumber ne 'y") == []
    filters = [parse_qs(g.query)["$filter"][0] for g in graph.calls("GET", DEVICES)]
    assert filters == [
        "serialNumber eq 'c02abc'",
        "serialNumber eq 'AB''12'",
        "serialNumber eq 'x'' or serialNumber ne ''y'",
    ]


async def test_inventory_pages_through(graph: IntuneEmulator, make: MakeClient) -> None:
    ids = [graph.add_device(f"C02{n:03}") for n in range(7)] + [graph.add_device("")]
    client: MdmClient = make()  # mypy checks the Protocol is met
    devices = await client.inventory()
    assert [d.device_id for d in devices] == ids
    assert devices[-1].serial_number is None
    assert len(graph.calls("GET", DEVICES)) == 3


async def test_next_link_to_another_host_refused(graph: IntuneEmulator, make: MakeClient) -> None:
    for n in range(5):
        graph.add_device(f"C02{n:03}")
    graph.next_link_origin = "https://graph.evil.example"
    client = make()
    with pytest.raises(NotAllowed):
        await client.inventory()
    assert len(graph.calls("GET", DEVICES)) == 1
    with pytest.raises(NotAllowed):  # same host, path outside the allowlist
        await client.session.request(
            "GET", DEVICES, absolute_url=f"{graph.url}/beta/deviceManagement/managedDevices"
        )
    assert len(graph.calls("GET")) == 1


# --- writes -------------------------------------------------------------------------------


async def test_force_sync(graph: IntuneEmulator, make: MakeClient) -> None:
    device = graph.add_device("C02AAA")
    sent = await make().force_sync(device)
    assert (sent.request, sent.status, sent.credential) == (
        f"POST {DEVICES}/{device}/syncDevice",
        204,
        "current",
    )
    assert graph.synced == [device]
    assert graph.calls("POST", DEVICES)[0].body == b""
    with pytest.raises(Rejected) as unknown:
        await make().force_sync("00000000-0000-0000-0000-000000000000")
    assert unknown.value.status == 404


async def test_update_profile_stores_exact_bytes(graph: IntuneEmulator, make: MakeClient) -> None:
    profile = b'<?xml version="1.0"?>\n<plist>\x00\xff caf\xc3\xa9</plist>\n'
    client = make()
    sent = await client.update_profile("Claude Code", profile)
    assert (sent.request, sent.status) == (f"PATCH {PROFILE}", 200)
    assert graph.configurations["cfg-1"] == profile
    await client.update_profile("Claude Code", profile)
    first, second = (json.loads(c.body) for c in graph.calls("PATCH"))
    assert first == second
    assert first == {
        "@odata.type": "#microsoft.graph.macOSCustomConfiguration",
        "payloadName": "Claude Code",
        "payloadFileName": "com.anthropic.claudecode.mobileconfig",  # the adopted profile
        "payload": base64.b64encode(profile).decode(),
    }


async def test_update_profile_needs_profile_id(graph: IntuneEmulator, make: MakeClient) -> None:
    with pytest.raises(ValueError, match="profile_id"):
        await make(profile_id=None).update_profile("Claude Code", b"x")
    assert graph.log == []


# --- compliance ---------------------------------------------------------------------------


async def test_compliance_mapping_and_join(graph: IntuneEmulator, make: MakeClient) -> None:
    ok = graph.add_device("S1", upn="ana@x", profile_status="compliant")
    grace = graph.add_device("S2", compliance_state="inGracePeriod", profile_status="remediated")
    bad = graph.add_device("S3", upn="bo@x", compliance_state="noncompliant")
    missing = graph.add_device(
        "S4", profile_status="notAssigned", last_reported="2025-02-02T10:00:00Z"
    )
    failed = graph.add_device("S5", compliance_state="conflict", profile_status="error")
    manager = graph.add_device("S6", compliance_state="configManager")
    # the same display name, told apart by the user
    cy = graph.add_device("S7", name="MacBook Pro", upn="cy@x", profile_status="nonCompliant")
    di = graph.add_device("S8", name="MacBook Pro", upn="di@x", profile_status="compliant")
    # the same display name and no user: the row cannot be attributed
    twin_a = graph.add_device("S9", name="Shared Mac", profile_status="nonCompliant")
    twin_b = graph.add_device("S10", name="Shared Mac", compliance_state="noncompliant")
    graph.add_status("cfg-1", "Gone Mac", "nonCompliant", upn=None, reported="2025-01-01T00:00:00Z")
    graph.devices[0]["lastSyncDateTime"] = "0001-01-01T00:00:00Z"  # Graph's "never"

    imported = datetime(2025, 3, 1, tzinfo=UTC)
    client = make()
    records = {r.device_id: r for r in await client.compliance(imported)}
    status = {device: r.status for device, r in records.items()}
    assert status == {
        ok: ComplianceStatus.COMPLIANT,
        grace: ComplianceStatus.COMPLIANT,
        bad: ComplianceStatus.NONCOMPLIANT,
        missing: ComplianceStatus.MISSING_PROFILE,
        failed: ComplianceStatus.NONCOMPLIANT,
        manager: ComplianceStatus.UNKNOWN,
        cy: ComplianceStatus.NONCOMPLIANT,
        di: ComplianceStatus.COMPLIANT,
        twin_a: ComplianceStatus.UNKNOWN,  # not guessed from the row
        twin_b: ComplianceStatus.NONCOMPLIANT,  # its own complianceState is worse
    }
    assert records[bad].reason == "complianceState=noncompliant"
    assert records[cy].reason == "profile status=nonCompliant"
    assert "2 devices" in records[twin_a].reason
    assert records[failed].reason == "complianceState=conflict; profile status=error"
    assert records[missing].reported_at == datetime(2025, 2, 2, 10, tzinfo=UTC)
    assert records[bad].reported_at == datetime(2025, 1, 1, 8, tzinfo=UTC)
    assert records[ok].reported_at == datetime(2025, 1, 1, 9, tzinfo=UTC)  # from the row
    assert records[bad].serial_number == "S3"
    assert all(r.imported_at == imported and r.vendor is Vendor.INTUNE for r in records.values())
    assert len(graph.calls("GET", f"{PROFILE}/deviceStatuses")) == 3  # 8 rows, pages of 3


async def test_compliance_without_profile(graph: IntuneEmulator, make: MakeClient) -> None:
    device = graph.add_device("S1", compliance_state="error", last_sync="0001-01-01T00:00:00Z")
    imported = datetime(2025, 3, 1, tzinfo=UTC)
    (record,) = await make(profile_id=None).compliance(imported)
    assert (record.device_id, record.status) == (device, ComplianceStatus.NONCOMPLIANT)
    assert record.reported_at == imported
    assert api_calls(graph) == [f"GET {DEVICES}"]


# --- refusals, throttling, outages --------------------------------------------------------


async def test_missing_role_is_forbidden(graph: IntuneEmulator, make: MakeClient) -> None:
    device = graph.add_device("C02AAA")
    graph.add_app(CLIENT_ID, SECRET, {READ_DEVICES})
    client = make()
    assert len(await client.inventory()) == 1
    with pytest.raises(Forbidden):
        await client.force_sync(device)
    with pytest.raises(Forbidden):
        await client.update_profile("Claude Code", b"x")
    assert graph.synced == [] and graph.configurations == {}


async def test_write_throttle_waits_retry_after(graph: IntuneEmulator, make: MakeClient) -> None:
    time = FakeTime()
    graph.clock = time.clock
    graph.write_limits["configuration"] = 2
    client = make(time=time)
    for n in range(3):
        await client.update_profile("Claude Code", f"v{n}".encode())
    assert time.slept == [20.0]
    assert [c.status for c in graph.calls("PATCH")] == [200, 200, 429, 200]
    assert graph.configurations["cfg-1"] == b"v2"

    time.now += 20  # the window is empty again
    impatient = make(time=time, max_retry_after=5.0)
    await impatient.update_profile("Claude Code", b"v3")
    await impatient.update_profile("Claude Code", b"v4")
    with pytest.raises(Throttled) as throttled:
        await impatient.update_profile("Claude Code", b"v5")
    assert throttled.value.retry_after == 20.0
    assert graph.configurations["cfg-1"] == b"v4"


async def test_server_errors_retried_then_unavailable(
    graph: IntuneEmulator, make: MakeClient
) -> None:
    graph.add_device("C02AAA")
    graph.inject(Fault(503), times=2, when=on_graph)
    assert len(await make(attempts=3).inventory()) == 1
    graph.log.clear()
    graph.inject(Fault(502), times=10, when=on_graph)
    with pytest.raises(Unavailable) as outage:
        await make(attempts=3).inventory()
    assert outage.value.status == 502
    assert [c.status for c in graph.calls("GET", DEVICES)] == [502, 502, 502]


async def test_timeouts_retried_then_unavailable(graph: IntuneEmulator, make: MakeClient) -> None:
    graph.add_device("C02AAA")
    graph.inject(Fault(200, delay=0.3), times=1, when=on_graph)
    assert len(await make(attempts=2, timeout=0.1).inventory()) == 1
    graph.inject(Fault(200, delay=0.3), times=2, when=on_graph)
    with pytest.raises(Unavailable, match="Timeout"):
        await make(attempts=2, timeout=0.1).inventory()


# --- credentials and secrets --------------------------------------------------------------


async def test_rotation_grace(graph: IntuneEmulator, make: MakeClient) -> None:
    device = graph.add_device("C02AAA")
    graph.add_secret(CLIENT_ID, "cs~the-old-secret")
    graph.remove_secret(CLIENT_ID, SECRET)  # the new secret is not (or no longer) accepted
    old = credential("cs~the-old-secret", age=timedelta(days=80))
    in_grace = make(previous=old, grace_until=datetime.now(UTC) + timedelta(hours=1))
    sent = await in_grace.force_sync(device)
    assert (sent.status, sent.credential) == (204, "previous")
    assert in_grace.session.used_previous

    expired = make(previous=old, grace_until=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(AuthFailed):
        await expired.force_sync(device)
    assert graph.synced == [device]


async def test_secrets_never_leak(
    graph: IntuneEmulator, make: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    device = graph.add_device("C02AAA")
    old_secret = "cs~the-old-secret"
    graph.add_secret(CLIENT_ID, old_secret)
    graph.remove_secret(CLIENT_ID, SECRET)
    old = credential(old_secret, age=timedelta(days=80))
    client = make(previous=old, grace_until=datetime.now(UTC) + timedelta(hours=1))
    await client.force_sync(device)
    await client.update_profile("Claude Code", b"<plist/>")
    errors: list[MdmError] = []
    graph.remove_secret(CLIENT_ID, old_secret)
    graph.tokens.clear()
    for call in (client.inventory(), make().force_sync(device)):
        try:
            await call
        except MdmError as exc:
            errors.append(exc)
    assert [type(e) for e in errors] == [AuthFailed, AuthFailed]

    secrets = [SECRET, old_secret, *(c.authorization or "" for c in graph.log)]
    secrets = [s.removeprefix("Bearer ") for s in secrets if s]
    assert len(secrets) > 2  # access tokens were issued and used
    texts = [
        repr(client),
        str(client),
        repr(client.session),
        repr(client.integration),
        str(client.integration),
        caplog.text,
        *(f"{e!r} {e} {e.request}" for e in errors),
    ]
    for text in texts:
        for secret in secrets:
            assert secret not in text
