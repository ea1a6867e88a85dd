"""Tenant ids: one documented charset, checked wherever a tenant enters, so endpoint ids cannot
collide across tenants and a tenant never names a path outside the data directory."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from actions import compliance_csv, operations
from actions.service import write_payload
from driftline.policies import PolicyDirectory
from ingest.tokens import Authenticator, Denied, Granted, TokenStore, hash_token, new_token
from schemas import TenantIdError, check_tenant_id, endpoint_id, split_endpoint_id
from schemas.identity import TENANT_ID_CHARSET, is_tenant_id
from schemas.policy import TenantPolicy
from schemas.remediation import Vendor

tenants = st.from_regex(TENANT_ID_CHARSET, fullmatch=True).filter(is_tenant_id)
HOSTILE = ["t/x", "../../escape", "a/b", "..", ".", "", "Acme", "acme corp", "-x", "x" * 64,
           "acme\n", "acme\x00", "ac..me", "/etc", "a\\b"]  # fmt: skip


@pytest.mark.parametrize("tenant", HOSTILE)
def test_hostile_tenant_ids_are_refused(tenant: str) -> None:
    with pytest.raises(TenantIdError, match="invalid tenant id"):
        check_tenant_id(tenant)


@pytest.mark.parametrize("tenant", ["acme", "a", "0", "acme-corp.eu_1", "x" * 63])
def test_the_documented_charset_is_accepted(tenant: str) -> None:
    assert check_tenant_id(tenant) == tenant


@given(tenants, st.text(min_size=1), tenants, st.text(min_size=1))
def test_endpoint_ids_are_unambiguous_whatever_the_identity_holds(
    tenant: str, identity: str, other_tenant: str, other_identity: str
) -> None:
    """An id splits back into its tenant and identity, so two endpoints share an id only if
    they share both: no tenant can take over another's endpoint by its choice of serial."""
    assert split_endpoint_id(endpoint_id(tenant, identity)) == (tenant, identity)
    if endpoint_id(tenant, identity) == endpoint_id(other_tenant, other_identity):
        assert (tenant, identity) == (other_tenant, other_identity)


def test_the_colliding_tenants_of_the_report_cannot_both_exist(tmp_path: Path) -> None:
    """Tenant ``t/x`` with serial ``S1`` and tenant ``t`` with serial ``x/S1`` had one id."""
    assert endpoint_id("t", "x/S1") == "t/x/S1"
    assert split_endpoint_id("t/x/S1") == ("t", "x/S1")  # it can only be tenant t's endpoint
    registry = TokenStore(tmp_path / "tokens.db")
    with pytest.raises(TenantIdError):
        registry.create("t/x")
    with pytest.raises(TenantIdError):
        registry.rotate("t/x", grace=timedelta(0), remember=timedelta(days=1))
    assert registry.records() == []
    result = _cli(tmp_path, "tokens", "create", "--tenant", "t/x")
    assert result.returncode == 2 and "invalid tenant id 't/x'" in result.stderr
    assert result.stdout == ""  # no token printed, none issued
    assert TokenStore(tmp_path / "tokens.db").records() == []


def test_a_registry_from_before_validation_authenticates_no_invalid_tenant(
    tmp_path: Path,
) -> None:
    """A token issued for ``t/x`` by an older version is refused, not granted as ``t/x``."""
    registry = TokenStore(tmp_path / "tokens.db")
    _, good = registry.create("t")
    legacy_id, legacy = new_token()
    with sqlite3.connect(registry.path) as db:
        db.execute(
            "INSERT INTO tokens (token_id, tenant_id, sha256, created_at) VALUES (?, ?, ?, ?)",
            (legacy_id, "t/x", hash_token(legacy), time.time()),
        )
    authenticator = Authenticator(registry.path, refresh_every=0)
    assert isinstance(authenticator.authenticate(f"Bearer {good}"), Granted)
    refused = authenticator.authenticate(f"Bearer {legacy}")
    assert isinstance(refused, Denied) and refused.tenant_id is None
    authenticator.close()


def _cli(data: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *args, "--data", str(data)],
        capture_output=True, text=True, input=stdin, timeout=120,
    )  # fmt: skip


def test_every_way_in_refuses_a_traversal_tenant(tmp_path: Path) -> None:
    data = tmp_path / "deep" / "data"
    assert _cli(data, "tokens", "create", "--tenant", "acme").returncode == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    policy = tmp_path / "escape.yaml"
    policy.write_text("tenant: ../../escape\n")
    csv = tmp_path / "export.csv"
    csv.write_text("device_id,status\nD1,compliant\n")
    attempts = [
        ("tokens", "create", "--tenant", "../../escape"),
        ("tokens", "rotate", "--tenant", "../../escape"),
        ("policy", "set", str(policy)),
        ("policy", "show", "--tenant", "../../escape"),
        ("policy", "push", "--tenant", "../../escape"),
        ("mdm", "connect", "--tenant", "../../escape", "--vendor", "iru",
         "--base-url", "https://x.test"),
        ("mdm", "import", str(csv), "--vendor", "jamf", "--tenant", "../../escape"),
        ("drift", "--tenant", "../../escape"),
        ("actions", "run", "--tenant", "a/b"),
    ]  # fmt: skip
    for args in attempts:
        result = _cli(data, *args)
        assert result.returncode == 2, (args, result.stderr)
        assert "invalid tenant id" in result.stderr and "Traceback" not in result.stderr, args
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert [p for p in after if p not in before and p.suffix not in (".yaml", ".csv")] == []


def test_file_names_derived_from_a_tenant_stay_inside(tmp_path: Path) -> None:
    """Below the CLI too: a policy that slipped past validation is not written anywhere."""
    forged = TenantPolicy.model_construct(tenant="../../escape", managed_settings={})
    with pytest.raises(TenantIdError):
        write_payload(forged, tmp_path / "data" / "policy-push")
    with pytest.raises(TenantIdError):
        PolicyDirectory(tmp_path / "policies").get("../../escape")
    with pytest.raises(ValueError, match="invalid tenant id"):
        TenantPolicy(tenant="a/b")
    with pytest.raises(TenantIdError):
        compliance_csv.parse("device_id,status\nD1,compliant\n", "a/b", Vendor.JAMF, _now())
    assert not (tmp_path / "escape").exists() and list(tmp_path.rglob("*.mobileconfig")) == []
    payload, _, path = write_payload(TenantPolicy(tenant="acme"), tmp_path / "push")
    assert path.parent == tmp_path / "push" and path.read_bytes() == payload


async def test_operations_refuse_a_hostile_tenant_before_running() -> None:
    """The admin API hands bodies to run_operation: a tenant there is checked first."""
    for name in operations.OPERATIONS:
        with pytest.raises(TenantIdError):
            await operations.run_operation(None, name, {"tenant": "../x"})  # type: ignore[arg-type]


def _now() -> datetime:
    return datetime.now(UTC)


def test_a_policy_file_of_an_invalid_tenant_from_an_older_version_is_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = PolicyDirectory(tmp_path / "policies")
    directory.put(TenantPolicy(tenant="acme"))
    (tmp_path / "policies" / "a%2Fb.json").write_text('{"tenant": "a/b"}')
    assert [p.tenant for p in directory.all()] == ["acme"]
    assert "a%2Fb.json not applied" in caplog.text


def test_an_event_of_a_tenant_from_before_validation_does_not_stop_the_detectors() -> None:
    """Old messages on a topic may still carry such a tenant: judged by the default policy."""
    from processors.engine import DriftEngine
    from tests.support.drift import outdated_laptop

    snapshot, _ = outdated_laptop("S1", _now(), tenant="acme")
    legacy = snapshot.model_copy(update={"tenant_id": "t/x", "endpoint_id": "t/x/S1"})
    engine = DriftEngine()
    assert engine.on_event(legacy) == []  # no policy: nothing outdated, team.id present
    assert engine.policy("t/x").required_attributes == ("team.id",)
