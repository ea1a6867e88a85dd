"""The generator tells its own queueing apart from the pipeline's: exports that wait for a free
connection are counted in ``pool_wait_ms``, against a real (slow) HTTP server."""

from __future__ import annotations

import asyncio

from loadtest.fleet import Send
from loadtest.report import speed
from loadtest.sender import HttpPool, Stats

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
