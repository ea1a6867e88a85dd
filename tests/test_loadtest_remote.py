"""`driftline loadtest` against a remote target: a `driftline run` with a data directory of its
own, which loadtest is given only through tokens, published policies and a flag source.

The error paths are the mistakes a user makes: a remote target without tokens must not quietly
get a token that only a local registry knows, and a missing flag source or a refused admin
token must stop the run before anything is sent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.embedded import Run
from tests.support.processes import free_port


def loadtest(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", "loadtest", *args],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_a_remote_target_without_tokens_is_an_error_naming_the_flag(tmp_path: Path) -> None:
    data = tmp_path / "data"
    done = loadtest("--data", str(data), "--target", f"127.0.0.1:{free_port()}")
    assert done.returncode == 2
    assert "--token-file TENANT=PATH" in done.stderr
    assert not data.exists()  # no local token, tenant or policy was made


def test_remote_flags_are_checked_before_anything_is_sent(tmp_path: Path) -> None:
    token = tmp_path / "acme.token"
    token.write_text("dlt_0123abcd_" + "s" * 43 + "\n")
    target = ("--target", f"127.0.0.1:{free_port()}")
    cases = {
        "--admin URL with --admin-token-file": ("--token-file", f"acme={token}"),
        "cannot read it": ("--token-file", f"acme={tmp_path / 'missing'}", "--clickhouse", "x"),
        "TENANT=PATH": ("--token-file", str(token), "--clickhouse", "x"),
        "twice": ("--token-file", f"acme={token}", "--token-file", f"acme={token}"),
        "needs the pipeline's token registry": (
            "--token-file", f"acme={token}", "--clickhouse", "x", "--rotation-storm"
        ),
        "--admin needs --admin-token-file": (
            "--token-file", f"acme={token}", "--admin", "http://127.0.0.1:1"
        ),
        "tenant": ("--token-file", f"../etc={token}", "--clickhouse", "x"),
    }  # fmt: skip
    for expected, flags in cases.items():
        done = loadtest(*target, *flags)
        assert done.returncode == 2, (flags, done.stderr)
        assert expected in done.stderr, (flags, done.stderr)
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    done = loadtest(*target, "--token-file", f"acme={empty}", "--clickhouse", "x")
    assert done.returncode == 2 and "empty" in done.stderr


@pytest.mark.slow
def test_remote_run_with_given_tokens_and_policies_is_judged_exactly(tmp_path: Path) -> None:
    run = Run(tmp_path / "remote")
    run.start()
    local = tmp_path / "local"  # loadtest's own data directory: it must stay untouched
    try:
        tokens = {}
        for tenant in ("acme", "globex"):
            token = run.cli("tokens", "create", "--tenant", tenant).strip().splitlines()[-1]
            tokens[tenant] = tmp_path / f"{tenant}.token"
            tokens[tenant].write_text(token + "\n")
        token_flags = [f for t, p in tokens.items() for f in ("--token-file", f"{t}={p}")]
        policies = tmp_path / "policies"
        done = loadtest(*token_flags, "--policies-out", str(policies), "--data", str(local))
        assert done.returncode == 0, done.stderr
        for tenant in tokens:
            run.cli("policy", "set", str(policies / f"{tenant}.json"))
        admin = ("--admin", f"http://127.0.0.1:{run.ports['admin']}")
        wrong = tmp_path / "wrong.token"
        wrong.write_text("not-the-admin-token\n")
        remote = ("--data", str(local), "--target", f"127.0.0.1:{run.ports['http']}")
        refused = loadtest(*remote, *token_flags, *admin, "--admin-token-file", str(wrong))
        assert refused.returncode == 2 and "refused" in refused.stderr, refused.stderr
        assert "not-the-admin-token" not in refused.stderr
        report = tmp_path / "report.json"
        done = loadtest(
            *remote, *token_flags, *admin,
            "--admin-token-file", str(run.data / "admin.token"),
            "--endpoints", "200", "--rate", "200", "--duration", "30", "--json", str(report),
            timeout=300,
        )  # fmt: skip
        listed = {t: run.cli("tokens", "list", "--tenant", t) for t in tokens}
    finally:
        run.stop()
    assert report.exists(), done.stderr[-3000:]
    result = json.loads(report.read_text())
    assert result["fleet"]["tenants"] == ["acme", "globex"]
    assert result["not_judged"] == ["token rotation", "policy change"]
    speed = result["speed"]
    assert speed["sent"] == speed["accepted"] > 0 and speed["rejected"] == 0, speed
    misses = {kind: row.get("misses") for kind, row in result["accuracy"].items()}
    for kind in ("outdated_client", "missing_policy"):
        row = result["accuracy"][kind]
        assert row["expected"] > 0
        assert (row["precision"], row["recall"]) == (1.0, 1.0), (kind, misses)
    assert result["accuracy"]["stale_token"]["expected"] == 0
    assert result["accuracy"]["stale_token"]["fp"] == 0
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not in this run: token rotation, policy change" in done.stdout
    assert not local.exists()  # everything came from the flags, nothing from a local registry
    for tenant, table in listed.items():  # loadtest created no token on the remote side either
        assert len(table.strip().splitlines()) == 2, (tenant, table)  # a header and one token
