"""`driftline ingest` as users run it: a real process (or several) on real ports."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bus import KafkaBus, KafkaOptions, MemoryBus
from ingest import admin
from ingest.tokens import TokenStore
from tests.support.embedded import until
from tests.support.otel import claude_resource, export_logs, export_metrics
from tests.support.processes import free_port, wait_ready


@pytest.fixture
def token(tmp_path: Path) -> str:
    return TokenStore(tmp_path / "tokens.db").create("acme")[1]


@dataclass
class Ingest:
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    output: str = ""  # what it printed, once stopped


@contextlib.contextmanager
def _ingest(data: Path, workers: int) -> Iterator[Ingest]:
    """`driftline ingest` on free ports until the block ends, then SIGTERM: it must exit 0."""
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline.cli", "ingest", "--data", str(data),
         "--workers", str(workers), "--grpc-port", str(ports["grpc"]),
         "--http-port", str(ports["http"]), "--admin-port", str(ports["admin"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    running = Ingest(process, ports)
    try:
        wait_ready(ports["admin"], process)
        yield running
    finally:
        process.send_signal(signal.SIGTERM)
        running.output = process.communicate(timeout=30)[0].decode()
    assert process.returncode == 0, running.output


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, int]]:
    with _ingest(tmp_path, request.param) as running:
        yield running.ports
    assert "Traceback" not in running.output, running.output


def test_serves_both_protocols_and_counts_in_metrics(receiver: dict[str, int], token: str) -> None:
    for i in range(4):  # several connections, so two workers both get some
        assert export_metrics("grpc", receiver["grpc"], token, claude_resource(serial=f"S{i}"))
        assert export_logs("http", receiver["http"], token, claude_resource(serial=f"L{i}"))
    assert not export_metrics("grpc", receiver["grpc"], "wrong", claude_resource())
    text = httpx.get(f"http://127.0.0.1:{receiver['admin']}/metrics").text
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("driftline_ingest_")
    }
    assert samples['driftline_ingest_snapshots_total{signal="metrics"}'] == 4
    assert samples['driftline_ingest_snapshots_total{signal="logs"}'] == 4
    assert samples['driftline_ingest_rejects_total{reason="malformed"}'] == 1
    assert httpx.get(f"http://127.0.0.1:{receiver['admin']}/healthz").status_code == 200


async def test_readyz_follows_the_bus() -> None:
    kafka_down = KafkaBus(KafkaOptions("127.0.0.1:1"))
    await kafka_down.start()
    try:
        for bus, expected in ((MemoryBus(), 200), (kafka_down, 503)):
            async with TestClient(TestServer(admin.build_app(bus.ready))) as client:
                assert (await client.get("/readyz")).status == expected
                assert (await client.get("/healthz")).status == 200
    finally:
        await kafka_down.stop()
    await asyncio.sleep(0)


def _inflight_limit(admin_port: int) -> float:
    for line in httpx.get(f"http://127.0.0.1:{admin_port}/metrics").text.splitlines():
        if line.startswith("driftline_ingest_inflight_limit "):
            return float(line.split()[1])
    raise AssertionError("no driftline_ingest_inflight_limit on /metrics")


def test_a_killed_worker_is_restarted_and_its_live_gauges_dropped(tmp_path: Path) -> None:
    """Each worker reports its in-flight limit (256 when idle) and /metrics sums the live ones:
    after kill -9 and the restart, two workers must add up to 512, not 768."""
    with _ingest(tmp_path, 2) as running:
        admin_port, process = running.ports["admin"], running.process
        until(lambda: _inflight_limit(admin_port) == 512)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        workers = [
            int(pid)
            for pid in children
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        ]
        assert len(workers) == 2
        os.kill(workers[0], signal.SIGKILL)
        until(lambda: not Path(f"/proc/{workers[0]}").exists())
        wait_ready(admin_port, process)  # restarted
        until(lambda: _inflight_limit(admin_port) == 512, timeout=20)
    assert "exited with -9; restarting" in running.output, running.output
