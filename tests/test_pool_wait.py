"""The generator tells its own queueing apart from the pipeline's: exports that wait for a free
connection are counted in ``pool_wait_ms``, against a real (slow) HTTP server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bus import MemoryBus
from ingest.admission import ShedOptions
from ingest.service import IngestOptions
from loadtest.fleet import Send
from loadtest.report import speed
from loadtest.sender import GrpcPool, HttpPool, Retry, Stats
from tests.conftest import start_receiver
from tests.test_hostile import resource

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


async def _slow_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers each request 100 ms after it arrives, one at a time (bodies are 2 bytes)."""
    while await reader.readuntil(b"\r\n\r\n"):
        await reader.readexactly(2)
        await asyncio.sleep(0.1)
        writer.write(ANSWER)
        await writer.drain()


async def _send(connections: int) -> Stats:
    server = await asyncio.start_server(_slow_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    stats = Stats()
    pool = HttpPool("localhost", port, connections, stats)
    await pool.start()
    now = asyncio.get_running_loop().time()
    for n in range(4):
        stats.sent += 1
        pool.submit(Send(0.0, 0, n, 0, "metrics", False, 0, True), "t", b"{}", now)
    while pool.in_flight():
        await asyncio.sleep(0.01)
    await pool.close()
    server.close()
    stats.elapsed = 1.0
    return stats


def test_exports_waiting_for_a_connection_are_counted_apart() -> None:
    one = speed(asyncio.run(_send(1)), "http")
    assert one["accepted"] == 4
    assert one["generator"]["pool_wait_ms"]["max"] >= 250  # the fourth waited for three
    four = speed(asyncio.run(_send(4)), "http")
    assert four["accepted"] == 4
    assert four["generator"]["pool_wait_ms"]["max"] < 50  # each had a connection of its own


# --- retries: what OTLP exporters do with "retry later" ------------------------------------------


async def _against_a_stalled_store(protocol: str, retry: Retry | None, tmp: Path) -> Stats:
    """A real receiver whose store holds every export for 0.5 s and that lets at most 2 wait
    on it (the in-flight limit): 4 exports sent while 2 wait are answered 503 / UNAVAILABLE."""
    bus = MemoryBus()

    async def slow_store(record: object) -> None:
        await asyncio.sleep(0.5)

    bus.subscribe(slow_store)
    options = IngestOptions(shedding=ShedOptions(target_lag=60.0, min_inflight=2))
    running = await start_receiver(tmp, bus, options)
    stats = Stats()
    fast = Retry(first_delay=0.3)
    pool: HttpPool | GrpcPool = (
        GrpcPool("127.0.0.1", running.grpc_port, 6, stats, retry=retry and fast)
        if protocol == "grpc"
        else HttpPool("127.0.0.1", running.http_port, 6, stats, retry=retry and fast)
    )
    await pool.start()
    for n in range(6):
        if n == 2:  # the first two are on the bus before the rest arrive
            while running.receiver.service._inflight < 2:
                await asyncio.sleep(0.01)
        stats.sent += 1
        body = resource({"device.serial_number": f"R{n}"})
        now = asyncio.get_running_loop().time()
        pool.submit(Send(0.0, n, n, 0, "metrics", False, 0, True), running.token, body, now)
    while pool.in_flight():
        await asyncio.sleep(0.02)
    await pool.close()
    await running.receiver.stop(grace=0)
    return stats


@pytest.mark.parametrize("protocol", ["http", "grpc"])
async def test_shed_exports_are_sent_again_like_an_exporter_would(
    protocol: str, tmp_path: Path
) -> None:
    without = await _against_a_stalled_store(protocol, None, tmp_path / "without")
    shed = "http 503" if protocol == "http" else "grpc UNAVAILABLE"
    assert without.accepted == 2 and without.errors[shed] == 4  # lost to the load test
    again = await _against_a_stalled_store(protocol, Retry(), tmp_path / "with")
    assert (again.accepted, again.failed) == (6, 0)
    assert again.retried >= 4
    assert max(again.latency_ms) >= 300  # answered after the backoff, timed from the first send
