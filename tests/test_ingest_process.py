"""`driftline ingest` as users run it: a real process (or several) on real ports."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bus import KafkaBus, KafkaOptions, MemoryBus
from ingest import admin
from ingest.tokens import TokenStore
from tests.support.otel import claude_resource, export_logs, export_metrics
from tests.support.processes import free_port, wait_ready


@pytest.fixture
def token(tmp_path: Path) -> str:
    return TokenStore(tmp_path / "tokens.db").create("acme")[1]


@pytest.fixture(params=[1, 2], ids=["one-process", "two-workers"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, int]]:
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline.cli", "ingest", "--data", str(tmp_path),
         "--workers", str(request.param), "--grpc-port", str(ports["grpc"]),
         "--http-port", str(ports["http"]), "--admin-port", str(ports["admin"])],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_ready(ports["admin"], process)
        yield ports
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
        assert process.returncode == 0, output
        assert "Traceback" not in output, output


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
