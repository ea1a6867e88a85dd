"""`driftline mdm connect|credentials|list|show|disconnect|test` as an admin uses them, against
the emulators: https required (plain http only to loopback, and only when asked), ids checked
when configured, a refused secret never stored (so `credentials status` never says ok for it),
`mdm test` naming exactly what failed, and a warning when a tenant gets a second MDM.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.emulators.intune import READ_DEVICES, SYNC_DEVICES, IntuneEmulator
from tests.emulators.jamf import ALL_PRIVILEGES, JamfEmulator
from tests.support.processes import cli
from tests.support.serve import Served, in_thread

SECRET = "jamf-secret-0123456789abcdef"
GRAPH_SECRET = "graph-secret-0123456789abcdef"


@pytest.fixture
def jamf() -> Iterator[tuple[JamfEmulator, Served]]:
    emulator = JamfEmulator()
    emulator.add_client("driftline", SECRET, ALL_PRIVILEGES)
    with in_thread(emulator) as served:
        yield emulator, served


@pytest.fixture
def graph() -> Iterator[tuple[IntuneEmulator, Served]]:
    emulator = IntuneEmulator()
    emulator.add_app("driftline", GRAPH_SECRET, {SYNC_DEVICES})  # no read permission
    with in_thread(emulator) as served:
        yield emulator, served


def connect_jamf(data: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return cli(
        data, "mdm", "connect", "--tenant", "acme", "--vendor", "jamf", "--base-url", url, *extra
    )


@pytest.mark.parametrize(
    ("url", "extra", "says"),
    [
        ("http://jamf.example.com", ["--allow-http-loopback"], "must be https"),
        ("http://10.0.0.5:8443", ["--allow-http-loopback"], "must be https"),
        ("http://127.0.0.1:9", [], "--allow-http-loopback"),
        ("acme.jamfcloud.com", [], "with a scheme and host"),
        ("https://user:pw@acme.jamfcloud.com", [], "user info"),
        ("https://acme.jamfcloud.com", ["--profile-id", "abc"], "numeric"),
        ("https://acme.jamfcloud.com", ["--profile-id", "1/../2"], "numeric"),
        ("https://acme.jamfcloud.com", ["--token-url", "https://x.example/t"], "Intune only"),
        ("https://acme.jamfcloud.com", ["--profile-identifier", "x y"], "reverse-DNS"),
    ],
)
def test_configuration_is_checked_when_it_is_given(
    tmp_path: Path, url: str, extra: list[str], says: str
) -> None:
    result = connect_jamf(tmp_path, url, *extra)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert not (tmp_path / "mdm" / "integrations.json").exists()


def test_intune_needs_an_https_token_url(tmp_path: Path) -> None:
    base = ["mdm", "connect", "--tenant", "acme", "--vendor", "intune"]
    url = ["--base-url", "https://graph.microsoft.com"]
    missing = cli(tmp_path, *base, *url)
    assert missing.returncode == 2 and "--token-url" in missing.stderr
    plain = cli(tmp_path, *base, *url, "--token-url", "http://login.example/t/oauth2/v2.0/token")
    assert plain.returncode == 2 and "token_url must be https" in plain.stderr


def test_a_refused_secret_is_never_stored(
    tmp_path: Path, jamf: tuple[JamfEmulator, Served]
) -> None:
    emulator, _ = jamf
    assert connect_jamf(tmp_path, emulator.url, "--allow-http-loopback").returncode == 0
    cred = ["mdm", "credentials", "set", "--tenant", "acme", "--vendor", "jamf"]
    wrong = cli(tmp_path, *cred, "--client-id", "driftline", stdin="not-the-secret")
    assert wrong.returncode == 2
    assert "jamf token: FAILED: AuthFailed: POST /api/oauth/token -> 401" in wrong.stderr
    assert "credential not stored" in wrong.stderr
    status = json.loads(cli(tmp_path, "mdm", "credentials", "status", "--json").stdout)
    assert [(s["vendor"], s["state"]) for s in status] == [("jamf", "missing")]

    right = cli(tmp_path, *cred, "--client-id", "driftline", stdin=SECRET)
    assert right.returncode == 0, right.stderr
    assert "jamf token: ok" in right.stdout
    assert "jamf read: ok: GET /api/v4/computers-inventory -> 200" in right.stdout
    status = json.loads(cli(tmp_path, "mdm", "credentials", "status", "--json").stdout)
    assert [(s["vendor"], s["state"]) for s in status] == [("jamf", "ok")]
    assert SECRET not in right.stdout + right.stderr + wrong.stdout + wrong.stderr

    # --no-test stores without asking the MDM: an explicit choice
    forced = cli(tmp_path, *cred, "--client-id", "other", "--no-test", stdin="whatever")
    assert forced.returncode == 0 and "FAILED" not in forced.stderr
    test = cli(tmp_path, "mdm", "test", "--tenant", "acme")
    assert test.returncode == 1
    assert "jamf token: FAILED: AuthFailed" in test.stderr


def test_mdm_test_names_the_missing_privilege(
    tmp_path: Path, graph: tuple[IntuneEmulator, Served]
) -> None:
    emulator, _ = graph
    connect = cli(
        tmp_path, "mdm", "connect", "--tenant", "acme", "--vendor", "intune",
        "--base-url", emulator.url, "--allow-http-loopback",
        "--token-url", f"{emulator.url}/{emulator.entra_tenant}/oauth2/v2.0/token",
    )  # fmt: skip
    assert connect.returncode == 0, connect.stderr
    cred = ["mdm", "credentials", "set", "--tenant", "acme", "--vendor", "intune"]
    refused = cli(tmp_path, *cred, "--client-id", "driftline", stdin=GRAPH_SECRET)
    assert refused.returncode == 2
    assert "intune token: ok" in refused.stdout
    assert (
        "intune read: FAILED: Forbidden: GET /v1.0/deviceManagement/managedDevices -> 403"
        in refused.stderr
    )
    emulator.apps["driftline"].roles.add(READ_DEVICES)
    assert cli(tmp_path, *cred, "--client-id", "driftline", stdin=GRAPH_SECRET).returncode == 0
    ok = cli(tmp_path, "mdm", "test", "--tenant", "acme", "--vendor", "intune")
    assert ok.returncode == 0 and "intune read: ok" in ok.stdout
    unknown = cli(tmp_path, "mdm", "test", "--tenant", "nobody")
    assert unknown.returncode == 2 and "has no MDM integration" in unknown.stderr


def test_list_show_disconnect_and_the_second_mdm_warning(
    tmp_path: Path, jamf: tuple[JamfEmulator, Served]
) -> None:
    emulator, _ = jamf
    first = connect_jamf(tmp_path, emulator.url, "--allow-http-loopback", "--profile-id", "7")
    assert first.returncode == 0 and "warning" not in first.stderr
    second = cli(
        tmp_path, "mdm", "connect", "--tenant", "acme", "--vendor", "iru",
        "--base-url", "https://acme.api.kandji.io", "--profile-id", "li-1",
        "--profile-identifier", "com.acme.claudecode",
    )  # fmt: skip
    assert second.returncode == 0
    assert "warning: tenant acme now has 2 MDMs (jamf, iru)" in second.stderr
    assert "last checked in with" in second.stderr

    listed = json.loads(cli(tmp_path, "mdm", "list", "--tenant", "acme", "--json").stdout)
    assert [(r["vendor"], r["profile_identifier"]) for r in listed] == [
        ("iru", "com.acme.claudecode"),  # adopted
        ("jamf", "com.driftline.acme.claudecode"),  # the default stays
    ]
    cred = ["mdm", "credentials", "set", "--tenant", "acme", "--vendor", "jamf"]
    assert cli(tmp_path, *cred, "--client-id", "driftline", stdin=SECRET).returncode == 0
    shown = cli(tmp_path, "mdm", "show", "--tenant", "acme", "--vendor", "jamf")
    assert shown.returncode == 0
    assert "PUT /JSSResource/osxconfigurationprofiles/id/7" in shown.stdout
    assert "client_id: driftline" in shown.stdout and SECRET not in shown.stdout

    gone = cli(tmp_path, "mdm", "disconnect", "--tenant", "acme", "--vendor", "jamf")
    assert gone.returncode == 0 and "revoke its credential in the MDM" in gone.stderr
    listed = json.loads(cli(tmp_path, "mdm", "list", "--json").stdout)
    assert [r["vendor"] for r in listed] == ["iru"]
    again = cli(tmp_path, "mdm", "disconnect", "--tenant", "acme", "--vendor", "jamf")
    assert again.returncode == 2 and "no jamf integration" in again.stderr
    assert SECRET not in (tmp_path / "mdm" / "integrations.json").read_text()
