"""Everyday `mdm` and `actions` commands load only what they use: no ClickHouse engine, Kafka
client, gRPC or web server unless the command needs one, so they start in a fraction of a
second (`scripts/cli_timings.py` measures it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# (httpx, ~0.1 s, is allowed: the MDM integration models live beside their HTTP clients)
HEAVY = ("chdb", "clickhouse_connect", "aiokafka", "faust", "grpc", "aiohttp", "uvloop")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "compliance.csv"

PROBE = """
import json, sys
from driftline.cli import main
code = main(sys.argv[1:])
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(HEAVY)))
print("LOADED " + json.dumps(loaded), file=sys.stderr)
"""


def loaded_by(tmp_path: Path, *argv: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.replace("HEAVY", repr(json.dumps(HEAVY))), *argv,
         "--data", str(tmp_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    [line] = [x for x in result.stderr.splitlines() if x.startswith("LOADED ")]
    modules: list[str] = json.loads(line.removeprefix("LOADED "))
    return modules


@pytest.mark.parametrize(
    "argv",
    [
        ("actions", "stop"),
        ("actions", "resume"),
        ("mdm", "credentials", "status"),
        ("mdm", "connect", "--tenant", "acme", "--vendor", "iru", "--base-url", "http://x"),
        ("mdm", "pull", "--tenant", "nobody"),
    ],
)
def test_commands_that_need_no_store_load_none_of_it(tmp_path: Path, argv: tuple[str, ...]) -> None:
    assert loaded_by(tmp_path, *argv) == []


def test_with_a_running_pipeline_an_operation_loads_no_store(tmp_path: Path) -> None:
    from tests.support.embedded import Run

    run = Run(tmp_path)
    run.start()
    try:
        assert loaded_by(tmp_path, "actions", "run", "--tenant", "acme") == []
        assert loaded_by(tmp_path, "mdm", "import", str(EXAMPLE), "--vendor", "iru",
                         "--tenant", "acme") == []  # fmt: skip
    finally:
        run.stop()
