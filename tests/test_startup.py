"""The block `driftline run` prints at start: addresses, data, and the command to run next."""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

from driftline.startup import StartupFacts, startup_block
from ingest.tokens import TokenStore
from tests.support.embedded import Run

FRESH = StartupFacts(
    host="127.0.0.1",
    grpc_port=4317,
    http_port=4318,
    admin_port=8888,
    data=Path("/srv/driftline/.driftline"),
    program=".venv/bin/driftline",
    data_flag=False,
    token_tenants=(),
    policy_tenants=(),
)


def test_a_fresh_install_is_told_its_addresses_and_to_create_a_token() -> None:
    text = startup_block(FRESH)
    assert "OTLP gRPC   http://127.0.0.1:4317" in text
    assert "OTLP HTTP   http://127.0.0.1:4318" in text
    assert "admin       http://127.0.0.1:8888" in text
    assert "data        /srv/driftline/.driftline" in text
    assert "remediation dry-run" in text
    assert "\n  .venv/bin/driftline tokens create --tenant acme\n" in text
    assert "console" not in text  # no console yet: no line for it
    assert len(text.splitlines()) <= 12  # one short block


def test_a_tenant_with_a_token_but_no_policy_is_told_to_publish_one() -> None:
    text = startup_block(replace(FRESH, token_tenants=("beta", "acme"), policy_tenants=("acme",)))
    assert "publish a policy for tenant beta" in text
    assert text.endswith("\n  .venv/bin/driftline policy set beta.yaml")
    assert "tokens create" not in text


def test_with_token_and_policy_it_says_how_to_ask_what_drifted() -> None:
    text = startup_block(replace(FRESH, token_tenants=("acme",), policy_tenants=("acme",)))
    assert text.endswith("\n  .venv/bin/driftline drift --tenant acme")
    assert "Next:" not in text


def test_a_data_directory_given_by_flag_is_carried_into_the_next_command() -> None:
    facts = replace(FRESH, data=Path("/tmp/my data"), data_flag=True)
    assert "tokens create --tenant acme --data '/tmp/my data'" in startup_block(facts)


def test_every_interface_and_the_console_are_named() -> None:
    facts = replace(FRESH, host="0.0.0.0", console="http://127.0.0.1:8889", live=True)
    text = startup_block(facts)
    assert "OTLP gRPC   http://0.0.0.0:4317 (every interface)" in text
    assert "console     http://127.0.0.1:8889" in text
    assert "remediation live" in text


def test_a_hostile_tenant_name_is_quoted_in_the_suggested_command() -> None:
    facts = replace(FRESH, token_tenants=("a; rm -rf ~",))
    assert "policy set 'a; rm -rf ~.yaml'" in startup_block(facts)


def test_driftline_run_prints_the_block_and_follows_what_exists(tmp_path: Path) -> None:
    run = Run(tmp_path)
    run.start()
    output = run.stop(signal.SIGTERM)
    assert f"admin       http://127.0.0.1:{run.ports['admin']}" in output
    assert f"data        {tmp_path.resolve()}" in output
    assert "tokens create --tenant acme --data" in output  # a --data of its own: carried on
    TokenStore(tmp_path / "tokens.db").create("acme")
    run.start()
    output = run.stop(signal.SIGTERM)
    assert "policy set acme.yaml --data" in output


def test_token_creation_names_the_next_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "tokens", "create", "--tenant", "acme",
         "--data", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert len(result.stdout.splitlines()) == 1  # stdout is the token alone
    assert f"policy set acme.yaml --data {tmp_path}" in result.stderr
