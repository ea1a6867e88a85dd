"""`driftline loadtest` end to end: a small fleet against a real `driftline run`.

300 laptops in three tenants, a token rotation (laggards retrying, in bursts, late switchers,
fixed ones), drifted laptops fixed mid-run and a policy change that re-evaluates everyone. The
pipeline runs with its default settings, as a user's would; every flag kind must be found
exactly: precision and recall 1.0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from driftline.cli.loadtest import connections_for
from driftline.settings import Settings
from tests.support.embedded import Run

pytestmark = pytest.mark.slow


def test_small_fleet_is_judged_exactly(tmp_path: Path) -> None:
    run = Run(tmp_path / "data")
    default = Settings.model_fields["auth_event_interval"].default
    run.start(DRIFTLINE_AUTH_EVENT_INTERVAL=str(default))  # the default, not the tests' shortcut
    report = tmp_path / "report.json"
    plot = tmp_path / "report.png"
    try:
        done = subprocess.run(
            [sys.executable, "-m", "driftline.cli", "loadtest", "--data", str(run.data),
             "--http-port", str(run.ports["http"]), "--endpoints", "300", "--rate", "250",
             "--duration", "40", "--json", str(report), "--plot", str(plot)],
            capture_output=True, text=True, timeout=400,
        )  # fmt: skip
    finally:
        run.stop()
    assert report.exists(), done.stderr[-3000:]
    result = json.loads(report.read_text())
    speed = result["speed"]
    assert speed["sent"] == speed["accepted"] + speed["rejected"]
    assert speed["failed"] == 0 and speed["unexpected"] == 0, speed
    assert speed["rejected"] > 0  # the rotation's laggards were refused
    roles = result["fleet"]["roles"]
    assert {"stale", "stale_fixed", "stale_burst", "late", "fixed", "quiet"} <= set(roles)
    misses = {kind: row.get("misses") for kind, row in result["accuracy"].items()}
    for kind in ("outdated_client", "missing_policy", "stale_token", "overall"):
        row = result["accuracy"][kind]
        assert row["expected"] > 0
        assert (row["precision"], row["recall"]) == (1.0, 1.0), (kind, misses)
    assert result["time_to_flag_s"]["n"] > 0 and result["time_to_resolve_s"]["n"] > 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert done.returncode == 0
    assert "precision" in done.stdout


def test_the_sender_has_connections_for_answers_of_a_quarter_second_at_the_rate() -> None:
    assert connections_for(1000, None) == 250  # 10,000 laptops at 1,000/s
    assert connections_for(100, None) == 64  # never fewer than 64
    assert connections_for(1000, 8) == 8  # what the user asked for
