"""Remediation in a real estate, against the emulators and the real store (chDB): a tenant with
several MDMs (a Mac in Jamf and Intune during a migration), compliance-driven actions that show
up in the closed loop, safe policy pushes (empty refused, changes shown, partial reported), base
URLs behind a reverse proxy, and one vendor's failure never stopping another's pull.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

import store
from actions import operations
from actions.clients import client_for
from actions.integrations import IntegrationStore
from actions.intune import IntuneClient
from actions.mdm import Credential, Integration, MdmClient, RetryPolicy
from schemas.policy import TenantPolicy
from schemas.remediation import Vendor
from store import queries
from tests.emulators.intune import READ_DEVICES, SYNC_DEVICES, WRITE_CONFIG, IntuneEmulator
from tests.emulators.iru import IruEmulator
from tests.emulators.jamf import ALL_PRIVILEGES, JamfEmulator
from tests.support.drift import outdated_laptop

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
JAMF_SECRET = "jamf-secret-0123456789abcdef"
GRAPH_SECRET = "graph-secret-0123456789abcdef"


def fast_client(integration: Integration) -> MdmClient:
    return client_for(integration, retry=RetryPolicy(backoff=0.01), timeout=5.0)


@dataclass
class Estate:
    ctx: operations.Context
    jamf: JamfEmulator
    graph: IntuneEmulator
    iru: IruEmulator
    integrations: IntegrationStore
    policies: dict[str, TenantPolicy]

    async def op(self, name: str, **args: Any) -> Any:
        return await operations.run_operation(self.ctx, name, {"tenant": "acme", **args})

    def connect_iru(self, *, blueprint: bool = False) -> str:
        token = self.iru.mint_token(self.iru.all_privileges)
        self.integrations.configure(
            Integration(
                tenant_id="acme",
                vendor=Vendor.IRU,
                base_url=self.iru.url,
                force_sync=True,
                profile_id="li-claude",
                blueprint_id="bp-1" if blueprint else None,
            )
        )
        self.integrations.set_credential("acme", Vendor.IRU, token, datetime.now(UTC))
        return token


@pytest.fixture
async def estate(tmp_path: Path) -> AsyncIterator[Estate]:
    jamf, graph, iru = JamfEmulator(), IntuneEmulator(page_size=2), IruEmulator()
    for emulator in (jamf, graph, iru):
        await emulator.start()
    jamf.add_client("driftline", JAMF_SECRET, ALL_PRIVILEGES)
    jamf.add_profile("7", "Claude Code")
    graph.add_app("driftline", GRAPH_SECRET, {READ_DEVICES, SYNC_DEVICES, WRITE_CONFIG})
    integrations = IntegrationStore(tmp_path / "mdm" / "integrations.json")
    now = datetime.now(UTC)
    integrations.configure(
        Integration(
            tenant_id="acme",
            vendor=Vendor.JAMF,
            base_url=jamf.url,
            force_sync=True,
            profile_id="7",
        )
    )
    integrations.set_credential("acme", Vendor.JAMF, JAMF_SECRET, now, client_id="driftline")
    integrations.configure(
        Integration(
            tenant_id="acme",
            vendor=Vendor.INTUNE,
            base_url=graph.url,
            token_url=f"{graph.url}/{graph.entra_tenant}/oauth2/v2.0/token",
            force_sync=True,
            profile_id="cfg-1",
        )
    )
    integrations.set_credential("acme", Vendor.INTUNE, GRAPH_SECRET, now, client_id="driftline")
    client = store.connect(f"chdb://{tmp_path}/clickhouse")
    store.migrate(client)
    policies: dict[str, TenantPolicy] = {}
    async with store.BatchWriter(client, max_delay=0.01) as writer:
        ctx = operations.Context(
            store=client,
            writer=writer,
            data=tmp_path,
            integrations=integrations,
            policies=policies.get,
            client_for=fast_client,
        )
        yield Estate(ctx, jamf, graph, iru, integrations, policies)
    client.close()
    for emulator in (jamf, graph, iru):
        await emulator.stop()


# --- several MDMs per tenant -----------------------------------------------------------------


async def test_a_mac_in_jamf_and_intune_is_synced_once_where_it_last_checked_in(
    estate: Estate,
) -> None:
    """The migration case: C02MIG sits in Jamf (last check-in 3 days ago) and in Intune (an
    hour ago). Its drift sends exactly one force-sync, to Intune, and the plan says why."""
    jamf_mac = estate.jamf.add_computer(
        "C02MIG",
        profiles=["com.driftline.acme.claudecode"],
        last_contact=(T0 - timedelta(days=3)).isoformat().replace("+00:00", "Z"),
    )
    intune_mac = estate.graph.add_device(
        "c02mig", last_sync=(T0 - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    )
    for n in range(3):  # other Macs, so Graph pages (page size 2)
        estate.graph.add_device(f"C02OTHER{n}")
    pulled = await estate.op("mdm-pull")
    assert pulled["errors"] == {} and pulled["imported"] == {"jamf": 1, "intune": 4}
    await estate.ctx.writer.add_durably(list(outdated_laptop("C02MIG", T0)))

    dry = await estate.op("actions-run")
    assert dry["unresolvable"] == []
    (planned,) = [s for s in dry["steps"] if s["state"] == "planned"]
    assert (planned["vendor"], planned["device_id"]) == ("intune", intune_mac)
    assert "acting through intune, where it last checked in" in planned["reason"]

    live = await estate.op("actions-run", live=True)
    assert live["counts"]["succeeded"] == 1 and live["counts"]["failed"] == 0
    assert estate.graph.synced == [intune_mac]
    assert estate.jamf.blank_pushes == []  # never both, never the stale enrolment
    assert jamf_mac.management_id not in estate.jamf.blank_pushes
    audit = estate.ctx.store.query(
        "SELECT vendor, reason FROM remediation_audit FINAL WHERE state = 'succeeded'"
    ).result_rows
    assert len(audit) == 1 and audit[0][0] == "intune"
    assert "jamf (last check-in" in audit[0][1] and "acting through intune" in audit[0][1]


async def test_compliance_driven_actions_show_in_the_closed_loop_with_their_reason(
    estate: Estate,
) -> None:
    """No telemetry flag at all: Jamf says the profile is missing. The sync it causes is in
    `drift --remediation` (pending, with the reason), and remediated once Jamf reports it."""
    mac = estate.jamf.add_computer("C02MDM", profiles=[], last_contact="2026-01-05T10:00:00Z")
    await estate.op("mdm-pull")
    live = await estate.op("actions-run", live=True)
    assert live["counts"]["succeeded"] == 1
    assert estate.jamf.blank_pushes == [mac.management_id]
    (row,) = await estate.op("remediation")
    assert (row["vendor"], row["device_id"], row["status"]) == (
        "jamf",
        mac.management_id,
        "pending",
    )
    assert row["reason"] == "missing_profile: profile com.driftline.acme.claudecode not installed"
    assert row["endpoint_id"] == ""

    # `driftline endpoint` of the laptop with that serial shows the action and why
    snapshot, _ = outdated_laptop("C02MDM", T0, version="2.0.12")
    await estate.ctx.writer.add_durably([snapshot])
    history = queries.endpoint_history(estate.ctx.store, "acme", "acme/C02MDM")
    assert [(a["vendor"], a["last_state"], a["reason"]) for a in history["actions"]] == [
        ("jamf", "succeeded", row["reason"])
    ]

    mac.profiles.append("com.driftline.acme.claudecode")
    mac.report_date = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    await estate.op("mdm-pull")
    (done,) = await estate.op("remediation")
    assert done["status"] == "remediated" and done["time_to_remediate_s"] >= 0


# --- safe policy pushes ----------------------------------------------------------------------


async def test_an_empty_policy_push_is_refused_unless_allowed(estate: Estate) -> None:
    estate.policies["acme"] = TenantPolicy(tenant="acme")  # the README's own example
    with pytest.raises(ValueError, match="no managed_settings"):
        await estate.op("policy-push", live=True)
    assert estate.jamf.profiles["7"].updates == 0 and estate.graph.configurations == {}
    allowed = await estate.op("policy-push", live=True, allow_empty=True)
    assert {e["outcome"] for e in allowed["entries"]} == {"pushed"}
    assert estate.jamf.profiles["7"].updates == 1


async def test_a_push_shows_what_changes_against_the_last_pushed_payload(estate: Estate) -> None:
    estate.policies["acme"] = TenantPolicy(
        tenant="acme", managed_settings={"env": {"A": "1", "B": "x"}}
    )
    first = await estate.op("policy-push", live=True)
    assert first["entries"][0]["changes"] == ["+ env.A = '1'", "+ env.B = 'x'"]
    estate.policies["acme"] = TenantPolicy(
        tenant="acme", version=1, managed_settings={"env": {"A": "2"}, "model": "opus"}
    )
    second = await estate.op("policy-push")  # dry-run shows the changes too
    by_vendor = {e["vendor"]: e for e in second["entries"]}
    assert by_vendor["jamf"]["outcome"] == "dry_run"
    assert by_vendor["jamf"]["changes"] == [
        "~ env.A: '1' -> '2'",
        "- env.B (was 'x')",
        "+ model = 'opus'",
    ]


async def test_a_partial_iru_push_is_partial_with_the_step_that_succeeded(
    estate: Estate,
) -> None:
    """The profile PATCH succeeds, then assign-library-item gets 403: not "failed"."""
    estate.integrations.disconnect("acme", Vendor.JAMF)
    estate.integrations.disconnect("acme", Vendor.INTUNE)
    estate.iru.add_profile("li-claude")
    estate.iru.add_blueprint("bp-1")
    estate.integrations.configure(
        Integration(
            tenant_id="acme",
            vendor=Vendor.IRU,
            base_url=estate.iru.url,
            profile_id="li-claude",
            blueprint_id="bp-1",
        )
    )
    without_assign = estate.iru.all_privileges - {
        "POST /api/v1/blueprints/{blueprint_id}/assign-library-item"
    }
    token = estate.iru.mint_token(without_assign)
    estate.integrations.set_credential("acme", Vendor.IRU, token, datetime.now(UTC))
    estate.policies["acme"] = TenantPolicy(tenant="acme", managed_settings={"env": {"A": "1"}})
    result = await estate.op("policy-push", live=True)
    (entry,) = result["entries"]
    assert entry["outcome"] == "partial"
    assert entry["detail"].startswith(
        "PATCH /api/v1/library/custom-profiles/li-claude -> 200 succeeded, then Forbidden"
    )
    assert "assign-library-item -> 403" in entry["detail"]
    assert estate.iru.profiles["li-claude"]["file"]  # the payload did change
    again = await estate.op("policy-push", live=True)  # partial is not "done": tried again
    assert again["entries"][0]["outcome"] == "partial"


# --- base URLs behind a reverse proxy; one vendor's failure ---------------------------------


async def test_a_proxied_graph_base_url_pages_through() -> None:
    graph = IntuneEmulator(prefix="/graph", page_size=2)
    graph.add_app("driftline", GRAPH_SECRET, {READ_DEVICES})
    await graph.start()
    try:
        for n in range(5):
            graph.add_device(f"C02P{n}")
        assert graph.url.endswith("/graph")
        integration = Integration(
            tenant_id="acme-proxy",
            vendor=Vendor.INTUNE,
            base_url=graph.url,
            token_url=f"{graph.url}/{graph.entra_tenant}/oauth2/v2.0/token",
            current=Credential(
                client_id="driftline",
                secret=SecretStr(GRAPH_SECRET),
                created_at=datetime.now(UTC),
            ),
        )
        client = IntuneClient(integration)
        try:
            devices = await client.inventory()
        finally:
            await client.aclose()
        assert sorted(d.serial_number or "" for d in devices) == [f"C02P{n}" for n in range(5)]
        pages = graph.calls("GET", "/graph/v1.0/deviceManagement/managedDevices")
        assert len(pages) == 3 and all(p.status == 200 for p in pages)
        assert sum("skiptoken" in p.query for p in pages) == 2
    finally:
        await graph.stop()


async def test_one_vendors_failure_never_stops_the_others_pull(estate: Estate) -> None:
    """Iru behind a proxy with a wrong path answers 404; Jamf and Intune are pulled anyway,
    and each vendor is reported."""
    estate.jamf.add_computer("C02J", profiles=[])
    estate.graph.add_device("C02G")
    token = estate.iru.mint_token(estate.iru.all_privileges)
    estate.integrations.configure(
        Integration(
            tenant_id="acme",
            vendor=Vendor.IRU,
            base_url=estate.iru.url + "/wrong-prefix",
            profile_id="li-claude",
        )
    )
    estate.integrations.set_credential("acme", Vendor.IRU, token, datetime.now(UTC))
    result = await estate.op("mdm-pull")
    assert result["imported"] == {"jamf": 1, "intune": 1}
    assert list(result["errors"]) == ["iru"] and "404" in result["errors"]["iru"]


async def test_jamf_and_iru_behind_a_path_prefix_read_their_inventory() -> None:
    """Every vendor works behind a reverse proxy path: Jamf's token endpoint and inventory
    pages, Iru's device pages, all under the prefix."""
    jamf, iru = JamfEmulator(prefix="/jamf"), IruEmulator(prefix="/mdm/iru")
    for emulator in (jamf, iru):
        await emulator.start()
    try:
        jamf.add_client("driftline", JAMF_SECRET, ALL_PRIVILEGES)
        for n in range(3):
            jamf.add_computer(f"C02J{n}")
            iru.add_device(f"C02K{n}")
        now = datetime.now(UTC)
        jamf_client = fast_client(
            Integration(
                tenant_id="acme-prefix",
                vendor=Vendor.JAMF,
                base_url=jamf.url,
                current=Credential(
                    client_id="driftline", secret=SecretStr(JAMF_SECRET), created_at=now
                ),
            )
        )
        iru_client = fast_client(
            Integration(
                tenant_id="acme-prefix",
                vendor=Vendor.IRU,
                base_url=iru.url,
                current=Credential(
                    secret=SecretStr(iru.mint_token(iru.all_privileges)), created_at=now
                ),
            )
        )
        try:
            assert len(await jamf_client.inventory()) == 3
            assert len(await iru_client.inventory()) == 3
        finally:
            await jamf_client.aclose()
            await iru_client.aclose()
        assert jamf.calls("POST", "/jamf/api/oauth/token")
        assert all(entry.path.startswith("/jamf/") for entry in jamf.log)
        assert all(entry.path.startswith("/mdm/iru/") for entry in iru.log)
        assert {entry.status for entry in jamf.log + iru.log} == {200}
    finally:
        for emulator in (jamf, iru):
            await emulator.stop()
