"""The CLI answers truthfully: "nothing" only when it looked and found nothing.

Wrong directory, unknown tenant, unknown endpoint, a store held by another process: each is an
error with one line saying why, never an empty table with rc 0. Real processes, real chDB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import store
from schemas.durations import format_duration
from tests.support.drift import outdated_laptop
from tests.support.processes import heavy_imports

CLI = [sys.executable, "-m", "driftline.cli"]


def driftline(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLINE_")}
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, cwd=cwd, env={**environment, **env},
        timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    "command",
    [
        ["drift", "--tenant", "acme"],
        ["drift", "--all-tenants"],
        ["drift", "--remediation", "--tenant", "acme"],
        ["endpoint", "acme/C02XYZ", "--tenant", "acme"],
        ["tokens", "list"],
        ["policy", "show", "--tenant", "acme"],
        ["mdm", "credentials", "status"],
        ["actions", "stop"],
    ],
)
def test_from_an_empty_directory_a_read_fails_and_creates_nothing(
    tmp_path: Path, command: list[str]
) -> None:
    result = driftline(*command, cwd=tmp_path)
    assert result.returncode != 0
    assert f"no Driftline data at {tmp_path / '.driftline'} (use --data)" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no ./.driftline, nothing else


def _stored(data: Path) -> None:
    """A data directory whose store holds acme's outdated laptops C1 and C2, and an
    endpoint whose identity is ``C1`` in tenant beta too (so a bare ``C1`` is ambiguous)."""
    now = datetime.now(UTC)
    client = store.connect(f"chdb://{data / 'clickhouse'}")
    store.migrate(client)
    for serial, tenant in (("C1", "acme"), ("C2", "acme"), ("C1", "beta")):
        snapshot, flag = outdated_laptop(serial, now, tenant=tenant)
        # a detail as long as a stale_token one, with a line break in it
        flag = flag.model_copy(update={"detail": "x" * 150 + "\nend"})
        for message in (snapshot, flag):
            table, row = store.row_for(message)
            store.insert_rows(client, table, [list(row.values())])
    client.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("answers") / "data"
    _stored(data)
    return data


def test_unknown_tenant_is_an_error(data: Path) -> None:
    result = driftline("drift", "--tenant", "nosuch", "--data", str(data))
    assert result.returncode == 1
    assert "unknown tenant 'nosuch'" in result.stderr and result.stdout == ""
    known = driftline("drift", "--tenant", "acme", "--data", str(data), "--json")
    assert known.returncode == 0, known.stderr
    assert {r["endpoint_id"] for r in json.loads(known.stdout)} == {"acme/C1", "acme/C2"}


def test_unknown_endpoint_is_not_found(data: Path) -> None:
    for given, tenant in (("acme/NOPE", "acme"), ("beta/C2", "beta"), ("acme/C1", "beta")):
        result = driftline("endpoint", given, "--tenant", tenant, "--data", str(data))
        assert result.returncode == 1, (given, tenant)
        assert "not found" in result.stderr and result.stdout == ""


def test_a_bare_serial_finds_its_endpoint_when_unambiguous(data: Path) -> None:
    result = driftline("endpoint", "C2", "--tenant", "acme", "--data", str(data), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["endpoint_id"] == "acme/C2"
    scoped = driftline("endpoint", "C1", "--tenant", "beta", "--data", str(data), "--json")
    assert json.loads(scoped.stdout)["endpoint_id"] == "beta/C1"
    ambiguous = driftline("endpoint", "C1", "--all-tenants", "--data", str(data))
    assert ambiguous.returncode == 2
    assert "ambiguous" in ambiguous.stderr and "acme/C1" in ambiguous.stderr


def test_tables_cut_long_details_and_json_keeps_them(data: Path) -> None:
    table = driftline("drift", "--tenant", "acme", "--data", str(data))
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert len(lines) == 3  # header and two rows: the detail's line break did not split a row
    assert all(len(line) < 250 for line in lines) and "…" in lines[1]
    full = json.loads(driftline("drift", "--tenant", "acme", "--data", str(data), "--json").stdout)
    assert full[0]["detail"] == "x" * 150 + "\nend"


def test_a_closed_pipe_ends_quietly(data: Path) -> None:
    process = subprocess.Popen(
        [*CLI, "drift", "--tenant", "acme", "--data", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # like `| head` that has read enough
    error = process.stderr.read().decode()
    assert process.wait(timeout=120) == 141
    assert error == ""


def test_a_store_held_by_another_process_is_named(tmp_path: Path) -> None:
    """The Kafka deployment: `driftline sink` holds DATA/clickhouse; the CLI says so."""
    data = tmp_path / "data"
    _stored(data)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time, store; "
         f"client = store.connect('chdb://{data / 'clickhouse'}'); store.migrate(client); "
         "print('held', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        result = driftline("drift", "--tenant", "acme", "--data", str(data))
        assert result.returncode == 1
        assert f"held by another process (pid {holder.pid})" in result.stderr
        assert "--clickhouse" in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1
    finally:
        holder.kill()
        holder.wait()


def test_an_unreachable_clickhouse_is_an_error_not_an_empty_answer(tmp_path: Path) -> None:
    from tests.support.processes import free_port

    url = f"http://default:secret@127.0.0.1:{free_port()}"
    for result in (
        driftline("drift", "--tenant", "acme", "--clickhouse", url),
        driftline("drift", "--tenant", "acme", DRIFTLINE_CLICKHOUSE=url),
    ):
        assert result.returncode == 1
        assert "cannot open the store http://default:***@127.0.0.1" in result.stderr
        assert "secret" not in result.stderr and "Traceback" not in result.stderr


def test_help_imports_no_heavy_machinery() -> None:
    """What keeps `driftline --help` fast: no store, server framework or HTTP library."""
    assert heavy_imports("--help") == []


def test_durations_and_tables_are_for_people() -> None:
    assert [format_duration(s) for s in (7, 725, 12000, 90061, None)] == [
        "7s", "12m 5s", "3h 20m", "1d 1h", ""
    ]  # fmt: skip
    assert format_duration(3600.4) == "1h"
