"""`driftline sql`, `query`, `report` and `console` over the known fleet, no pipeline running."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from driftline.console import reports
from tests.support.processes import cli


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("cli") / "data"
    data.mkdir()
    subprocess.run([sys.executable, "-m", "tests.support.console_fleet", str(data)], check=True)
    return data


def test_sql_formats_and_scope(data: Path) -> None:
    sql = "SELECT endpoint_id, kind FROM drift_current ORDER BY endpoint_id, kind"
    as_json = json.loads(cli(data, "sql", sql, "--tenant", "globex", "--format", "json").stdout)
    assert as_json == [{"endpoint_id": "globex/G0", "kind": "outdated_client"}]
    as_csv = list(
        csv.reader(io.StringIO(cli(data, "sql", sql, "--tenant", "acme", "--format", "csv").stdout))
    )
    assert as_csv[0] == ["endpoint_id", "kind"] and len(as_csv) == 6
    assert all(row[0].startswith("acme/") for row in as_csv[1:])
    table = cli(data, "sql", "SELECT count() AS n FROM endpoints_latest", "--tenant", "acme").stdout
    assert table.split() == ["n", "10"]
    bound = cli(
        data, "sql", "SELECT count() AS n FROM endpoints_latest WHERE app_version = {v:String}",
        "--tenant", "acme", "--param", "v=2.0.3", "--format", "json",
    )  # fmt: skip
    assert json.loads(bound.stdout) == [{"n": 4}]


def test_sql_refuses_writes_escapes_and_unknown_tenants(data: Path) -> None:
    for sql in (
        "INSERT INTO drift_flags (tenant_id) VALUES ('acme')",
        "SELECT * FROM merge('default', 'drift_flags')",
        "SELECT name FROM system.tables",
    ):
        result = cli(data, "sql", sql, "--tenant", "acme")
        assert result.returncode != 0 and result.stdout == "", sql
    unknown = cli(data, "sql", "SELECT 1", "--tenant", "nobody")
    assert unknown.returncode == 2 and "unknown tenant 'nobody'" in unknown.stderr
    nowhere = cli(data / "missing", "sql", "SELECT 1", "--tenant", "acme")
    assert nowhere.returncode == 2 and "no store under" in nowhere.stderr


def test_saved_queries_by_name_only(data: Path) -> None:
    listed = cli(data, "query", "--list").stdout.split()
    assert listed == reports.saved_names() and "drift_by_team" in listed
    rows = json.loads(
        cli(data, "query", "version_distribution", "--tenant", "acme", "--format", "json").stdout
    )
    assert {(r["version"], r["endpoints"], r["outdated"]) for r in rows} == {
        ("2.0.14", 6, 0),
        ("2.0.3", 4, 4),
    }
    mttr = cli(data, "query", "mean_time_to_resolve", "--tenant", "acme", "--param", "days=30",
               "--format", "json")  # fmt: skip
    assert json.loads(mttr.stdout)[0]["mean_hours"] == 24.0
    for name in ("../saved/drift_by_team", "/etc/passwd", "nope"):
        result = cli(data, "query", name, "--tenant", "acme")
        assert result.returncode == 2 and "no saved query" in result.stderr
    other = cli(data, "query", "drift_by_team", "--tenant", "acme", "--param", "tenant=globex")
    assert other.returncode == 2


def test_report_in_three_formats(data: Path) -> None:
    report = json.loads(cli(data, "report", "--tenant", "acme", "--format", "json").stdout)
    assert (report["endpoints"], report["drifting"], report["compliant_percent"]) == (10, 4, 60.0)
    assert report["mean_time_to_remediate_s"] == 7200.0
    assert report["open_remediation"] == 0
    assert report["top_drift_by_team"][0] == {"team": "data", "kind": "outdated_client", "flags": 3}
    markdown = cli(data, "report", "--tenant", "acme").stdout
    assert "| compliant | 60.0% |" in markdown and "| mean time to remediate | 2.0 h |" in markdown
    assert "globex" not in markdown
    rows = list(
        csv.reader(io.StringIO(cli(data, "report", "--tenant", "acme", "--format", "csv").stdout))
    )
    assert ["summary", "compliant_percent", "60.0"] in rows


def test_console_url_needs_a_running_process(data: Path) -> None:
    result = cli(data, "console", "url", "--tenant", "acme")
    assert result.returncode == 2 and "no running" in result.stderr


def test_console_serves_the_same_pages_from_a_clickhouse_dsn(data: Path) -> None:
    """`driftline console --clickhouse URL`, the Kafka deployment's console (here on the
    embedded engine's DSN: the same client and SQL as a server's)."""
    import httpx

    from tests.support.processes import free_port, wait_ready

    port = free_port()
    dsn = f"chdb://{(data / 'clickhouse').resolve()}"
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline.cli", "console", "--clickhouse", dsn,
         "--port", str(port), "--data", str(data)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_ready(port, process, timeout=60)
        link = cli(data, "console", "url", "--tenant", "acme").stdout.strip()
        assert link.startswith(f"http://127.0.0.1:{port}/console/sign-in?token=")
        with httpx.Client(follow_redirects=True) as browser:
            fleet = browser.get(link)
            assert fleet.status_code == 200 and 'data-testid="compliant">60.0%' in fleet.text
            assert "globex" not in fleet.text
        assert httpx.get(f"http://127.0.0.1:{port}/console/").status_code == 401
        assert "driftline_open_drift" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        process.terminate()
        process.communicate(timeout=30)
