"""The Python load generator of `make bench-ingest`/`bench-pipeline` against a real receiver:
its counts are the receiver's answers (a wrong token is counted failed, not ok), and it
reports its own CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ingest.tokens import TokenStore
from tests.load.bench_ingest import PYTHON_GENERATOR, run_load, write_payloads
from tests.support.processes import free_port, wait_ready

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_python_generator_counts_what_the_receiver_answered(tmp_path: Path, protocol: str) -> None:
    _, token = TokenStore(tmp_path / "tokens.db").create("bench")
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    receiver = subprocess.Popen(
        [sys.executable, "-m", "driftline.cli", "ingest", "--bus", "memory",
         "--data", str(tmp_path), "--workers", "1", "--grpc-port", str(ports["grpc"]),
         "--http-port", str(ports["http"]), "--admin-port", str(ports["admin"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        # shedding off, as in bench-ingest: this counts answers, and a loop 50 ms late on a
        # busy CI machine may shed (233 of 5,109 closed-loop calls failed in one CI run)
        env={**os.environ, "DRIFTLINE_SHED_LAG": "0"},
    )  # fmt: skip
    try:
        wait_ready(ports["admin"], receiver)
        payloads = tmp_path / "exports.bin"
        write_payloads(payloads, 50)
        port = ports[protocol]
        paced = run_load(PYTHON_GENERATOR, payloads, protocol, port, token, 2, rate=100)
        closed = run_load(PYTHON_GENERATOR, payloads, protocol, port, token, 2, concurrency=8)
        refused = run_load(PYTHON_GENERATOR, payloads, protocol, port, "dlt_wrong", 1, rate=50)
    finally:
        receiver.terminate()
        receiver.wait(30)
    assert paced["failed"] == 0 and 150 <= paced["ok"] <= 250, paced
    assert 0 < paced["p50_ms"] <= paced["p99_ms"] <= paced["max_ms"]
    assert paced["generator_cpu_s"] > 0
    assert closed["failed"] == 0 and closed["ok"] > paced["ok"], closed["errors"]
    assert refused["ok"] == 0 and refused["errors"] == {"unauthenticated": refused["sent"]}
