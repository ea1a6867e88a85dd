"""`driftline endpoint` shows when Driftline received each state; the endpoint's own clock is a
detail, so a laptop whose clock is years off does not look years old."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import store
from driftline.datadir import store_path
from store.queries import endpoint_history
from store.rows import values_for
from tests.support.drift import outdated_laptop

NOW = datetime.now(UTC).replace(microsecond=0)
WRONG_CLOCK = datetime(2019, 3, 1, 12, 0, tzinfo=UTC)


def test_first_and_last_seen_are_receipt_times(tmp_path: Path) -> None:
    client = store.connect(f"chdb://{store_path(tmp_path).resolve()}")
    store.migrate(client)
    for minutes in (0, 5):  # the same state exported twice, five minutes apart by our clock
        snapshot, _ = outdated_laptop("C02X", WRONG_CLOCK + timedelta(minutes=minutes))
        snapshot = snapshot.model_copy(update={"received_at": NOW + timedelta(minutes=minutes)})
        table, values = values_for(snapshot)
        store.insert_rows(client, table, [values])
    [state] = endpoint_history(client, "acme", "acme/C02X")["states"]
    assert (state["first_seen"], state["last_seen"]) == (NOW, NOW + timedelta(minutes=5))
    assert (state["telemetry_first"], state["telemetry_last"]) == (
        WRONG_CLOCK,
        WRONG_CLOCK + timedelta(minutes=5),
    )
    client.close()

    shown = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "endpoint", "acme/C02X", "--tenant", "acme",
         "--data", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    [row] = [line for line in shown.splitlines() if "claude-code" in line]
    assert row.startswith(str(NOW.date()))  # received today…
    assert "2019-03-01 12:00:00+00:00 .. 2019-03-01 12:05:00+00:00" in row  # …said it was 2019
    assert "when Driftline received them" in shown


def test_a_state_stored_before_receipt_times_were_kept_says_so(tmp_path: Path) -> None:
    client = store.connect(f"chdb://{store_path(tmp_path).resolve()}")
    store.migrate(client)
    client.command(  # a row as written before migration 013: no first receipt
        "INSERT INTO endpoint_states (tenant_id, endpoint_id, state_hash, service_name, "
        "first_seen, last_seen, last_received) VALUES ('acme', 'acme/C02Y', 1, 'claude-code', "
        "now64(3), now64(3), now64(3))"
    )
    [state] = endpoint_history(client, "acme", "acme/C02Y")["states"]
    assert state["first_seen"] is None and state["last_seen"] is not None
    client.close()
    shown = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "endpoint", "acme/C02Y", "--tenant", "acme",
         "--data", str(tmp_path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "(not recorded)" in shown
