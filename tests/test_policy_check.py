"""Policy tool names against the service.names endpoints reported: typos warn, --strict refuses."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import store
from driftline.datadir import store_path
from driftline.policy_check import tool_warnings
from ingest.tokens import TokenStore
from store.rows import values_for
from tests.support.drift import outdated_laptop
from tests.support.embedded import Run
from tests.support.otel import claude_resource, export_metrics
from tests.support.processes import cli as driftline


def test_a_reported_name_passes_and_a_typo_gets_the_closest_known_name() -> None:
    assert tool_warnings(["claude-code"], ["claude-code", "cursor"]) == []
    [warning] = tool_warnings(["claude_code"], ["claude-code", "cursor"])
    assert "no endpoint has reported this service.name; did you mean 'claude-code'?" in warning
    [warning] = tool_warnings(["gemini"], ["claude-code"])
    assert "did you mean" not in warning and "reported: 'claude-code'" in warning


def test_without_telemetry_or_store_it_says_so_instead_of_unknown() -> None:
    [warning] = tool_warnings(["claude_code"], [])
    assert "no endpoint of this tenant has reported telemetry yet" in warning
    assert "did you mean 'claude-code'" in warning  # the well-known name still helps
    [warning] = tool_warnings(["cursor"], None, "no store yet at /x")
    assert warning == "tool 'cursor': not checked (no store yet at /x)"
    assert tool_warnings(["claude-code"], None, "no store yet") == []  # well known


def policy_file(tmp_path: Path, tool: str) -> str:
    path = tmp_path / f"{tool}.yaml"
    path.write_text(f'tenant: acme\ntools: {{{tool}: {{minimum_version: "2.0.10"}}}}\n')
    return str(path)


def stored_version(data: Path) -> int | None:
    shown = driftline(data, "policy", "show", "--tenant", "acme")
    return None if "default" in shown.stderr else int(json.loads(shown.stdout)["version"])


def test_policy_set_checks_names_against_the_store(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = driftline(data, "policy", "set", policy_file(tmp_path, "cursor"))
    assert result.returncode == 0
    assert "tool 'cursor': not checked (no store yet at" in result.stderr
    assert not store_path(data).exists()  # looking did not create a store

    client = store.connect(f"chdb://{store_path(data).resolve()}")
    store.migrate(client)
    snapshot, _ = outdated_laptop("C02A", datetime.now(UTC))
    table, values = values_for(snapshot)
    store.insert_rows(client, table, [values])
    client.close()

    result = driftline(data, "policy", "set", policy_file(tmp_path, "claude_code"))
    assert result.returncode == 0
    assert "warning: tool 'claude_code'" in result.stderr
    assert "did you mean 'claude-code'?" in result.stderr
    assert stored_version(data) == 2

    result = driftline(data, "policy", "set", "--strict", policy_file(tmp_path, "claude_code"))
    assert result.returncode == 2
    assert "error: tool 'claude_code'" in result.stderr and "not published" in result.stderr
    assert stored_version(data) == 2  # refused: still the previous version

    result = driftline(data, "policy", "set", "--strict", policy_file(tmp_path, "claude-code"))
    assert result.returncode == 0
    assert "warning" not in result.stderr and "error" not in result.stderr
    assert f"drift --tenant acme --data {data}" in result.stderr  # the next command
    assert stored_version(data) == 3


def test_policy_set_asks_the_running_pipeline(tmp_path: Path) -> None:
    run = Run(tmp_path)
    token = TokenStore(tmp_path / "tokens.db").create("acme")[1]
    run.start()
    try:
        assert export_metrics("http", run.ports["http"], token, claude_resource("C02B", "web"))
        result = driftline(tmp_path, "policy", "set", policy_file(tmp_path, "claude_code"))
        assert "did you mean 'claude-code'?" in result.stderr
        assert "reported: 'claude-code'" in result.stderr
        assert result.returncode == 0
    finally:
        run.stop()
