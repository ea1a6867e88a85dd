"""Token rotation you can watch: accepted requests record their token's id (never the token),
and `driftline tokens usage` lists, during the grace window, the laptops still on the retiring
token and when each was last seen, through a running `driftline run`.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ingest.tokens import TokenStore
from tests.support.embedded import Run, until
from tests.support.otel import claude_resource, export_metrics


def test_usage_lists_the_laptops_still_on_the_retiring_token(tmp_path: Path) -> None:
    run = Run(tmp_path)
    old_id, old = TokenStore(tmp_path / "tokens.db").create("acme")
    TokenStore(tmp_path / "tokens.db").create("other")  # another tenant's laptops stay out
    before = subprocess.run(  # nothing received yet: said, not an empty list
        [sys.executable, "-m", "driftline.cli", "tokens", "usage", "--tenant", "acme",
         "--data", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert before.returncode == 2 and "nothing received yet" in before.stderr
    unknown = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "tokens", "usage", "--tenant", "nobody",
         "--data", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert unknown.returncode == 2 and "has no ingest tokens" in unknown.stderr
    run.start()
    try:
        grpc = run.ports["grpc"]
        for serial in ("C02OLD", "C02NEW"):
            assert export_metrics("grpc", grpc, old, claude_resource(serial, "web"), "2.0.12")
        rotated = run.cli("tokens", "rotate", "--tenant", "acme", "--grace", "1h")
        new = rotated.strip().splitlines()[-1]
        assert new.startswith("dlt_") and new != old
        assert export_metrics("grpc", grpc, new, claude_resource("C02NEW", "web"), "2.0.12")

        def report() -> dict[str, Any]:
            out = run.cli("tokens", "usage", "--tenant", "acme", "--json")
            result: dict[str, Any] = json.loads(out)
            return result

        until(lambda: [e["endpoint_id"] for e in report()["endpoints"]] == ["acme/C02OLD"])
        usage = report()
        assert usage["retiring_tokens"] == [old_id]
        (still,) = usage["endpoints"]
        assert still["token_id"] == old_id and still["last_seen"] and still["grace_ends"]
        table = run.cli("tokens", "usage", "--tenant", "acme")
        assert f"1 endpoints still on retiring token(s) {old_id}; 1 moved" in table
        assert old not in table and new not in table  # ids only, never tokens

        assert export_metrics("grpc", grpc, new, claude_resource("C02OLD", "web"), "2.0.12")
        until(lambda: report()["endpoints"] == [])
    finally:
        output = run.stop(signal.SIGTERM)
    assert old not in output and new not in output
