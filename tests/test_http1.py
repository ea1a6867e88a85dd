"""The OTLP/HTTP transport over raw sockets: what clients and proxies actually send."""

from __future__ import annotations

import asyncio
import gzip
import socket
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from ingest.http1 import Admission, Gate, Request, Response, Server, ServerOptions


@dataclass
class Running:
    server: Server
    port: int
    seen: list[Request]
    release: asyncio.Event  # handlers of "/slow" wait for it


@pytest.fixture
async def running() -> AsyncIterator[Running]:
    async with serving(ServerOptions(max_body_bytes=1000)) as run:
        yield run


class serving:
    """A server whose handler echoes what it got: ``<method> <path> <body>`` or the problem."""

    def __init__(self, options: ServerOptions, gate: Gate | None = None) -> None:
        self.options = options
        self.gate = gate

    async def __aenter__(self) -> Running:
        seen: list[Request] = []
        release = asyncio.Event()

        async def handle(request: Request) -> Response:
            seen.append(request)
            if request.path == "/slow":
                await release.wait()
            if request.problem is not None:
                status, message = request.problem
                return Response(status, message.encode())
            echo = f"{request.method} {request.path} ".encode() + request.body
            return Response(200, echo, headers={"X-Peer": request.peer})

        self.server = Server(handle, self.options, gate=self.gate)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        await self.server.start(sock)
        return Running(self.server, sock.getsockname()[1], seen, release)

    async def __aexit__(self, *_: object) -> None:
        await self.server.stop(grace=1)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


def post(path: str, body: bytes, *headers: str) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: x", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert status_line, "connection closed without a response"
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    return await asyncio.wait_for(reader.read(), 5) == b""


async def test_keep_alive_serves_requests_one_after_another(running: Running) -> None:
    reader, writer = await connect(running.port)
    for n in range(3):
        writer.write(post("/v1/metrics", b"body%d" % n))
        status, headers, body = await response(reader)
        assert (status, body) == (200, b"POST /v1/metrics body%d" % n)
        assert headers["x-peer"] == "127.0.0.1" and "date" in headers
        assert "connection" not in headers
    writer.close()


async def test_pipelined_requests_are_answered_in_order(running: Running) -> None:
    reader, writer = await connect(running.port)
    writer.write(b"".join(post(f"/p{n}", b"x") for n in range(20)))  # more than get queued
    for n in range(20):
        assert (await response(reader))[2] == f"POST /p{n} x".encode()
    writer.close()


def _shedding_gate(request: Request) -> Admission:
    """Answers /shed from the headers, as the receiver does past capacity."""
    if request.path == "/shed":
        return Admission(discard=True, answer=Response(503, b"busy", headers={"Retry-After": "1"}))
    return Admission()


async def test_answers_decided_at_the_headers_skip_the_handler_and_keep_the_connection() -> None:
    async with serving(ServerOptions(max_body_bytes=1000), _shedding_gate) as run:
        reader, writer = await connect(run.port)
        for _ in range(3):
            writer.write(post("/shed", b"x" * 500))
            status, headers, body = await response(reader)
            assert (status, body, headers["retry-after"]) == (503, b"busy", "1")
        writer.write(post("/after", b"ok"))  # the same connection, body read past each time
        status, _, body = await response(reader)
        assert (status, body) == (200, b"POST /after ok")
        assert [r.path for r in run.seen] == ["/after"]
        writer.close()


async def test_an_answer_decided_at_the_headers_waits_its_turn_behind_pipelined_ones() -> None:
    async with serving(ServerOptions(max_body_bytes=1000), _shedding_gate) as run:
        reader, writer = await connect(run.port)
        writer.write(post("/slow", b"1") + post("/shed", b"2") + post("/p3", b"3"))
        await asyncio.sleep(0.2)  # all three are in; /slow's handler is waiting
        run.release.set()
        answers = [await response(reader) for _ in range(3)]
        assert [(status, body) for status, _, body in answers] == [
            (200, b"POST /slow 1"),
            (503, b"busy"),
            (200, b"POST /p3 3"),
        ]
        writer.close()


async def test_a_malformed_request_is_400_and_closed_while_others_are_served(
    running: Running,
) -> None:
    reader, writer = await connect(running.port)
    writer.write(b"POST /v1/metrics HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
    status, headers, _ = await response(reader)
    assert status == 400 and headers["connection"] == "close"
    assert await closed(reader)
    reader, writer = await connect(running.port)
    writer.write(post("/v1/logs", b"fine"))
    assert (await response(reader))[0] == 200
    assert running.seen[-1].path == "/v1/logs" and len(running.seen) == 1


async def test_endless_headers_are_431_and_closed(running: Running) -> None:
    reader, writer = await connect(running.port)
    writer.write(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\n")
    for n in range(100):
        writer.write(f"X-Padding-{n}: {'a' * 1000}\r\n".encode())
    status, headers, _ = await response(reader)
    assert status == 431 and headers["connection"] == "close"
    assert await closed(reader) and running.seen == []


async def test_a_client_reading_no_answers_is_not_read_further() -> None:
    async with serving(ServerOptions(max_body_bytes=200_000)) as run:
        reader, writer = await connect(run.port)
        request = post("/v1/metrics", b"x" * 100_000)
        for _ in range(400):  # 40 MB of answers (echoes), none of them read for now
            writer.write(request)
        await asyncio.sleep(1)
        # socket buffers fill, answering stops, then reading (at most _MAX_QUEUED waiting)
        assert len(run.seen) < 300
        for n in range(400):
            assert (await response(reader))[0] == 200, n
        assert len(run.seen) == 400
        writer.close()


async def test_a_declared_oversize_body_is_refused_before_it_is_sent(running: Running) -> None:
    reader, writer = await connect(running.port)
    writer.write(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    status, headers, body = await response(reader)  # answered without the body
    assert (status, body) == (413, b"request body over 1000 bytes")
    assert headers["connection"] == "close" and await closed(reader)


async def test_a_chunked_body_is_cut_off_at_the_limit(running: Running) -> None:
    reader, writer = await connect(running.port)
    writer.write(b"POST /v1/metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"400\r\n" + b"a" * 0x400 + b"\r\n")  # 1024 > 1000: refused mid-stream
    status, _, _ = await response(reader)
    assert status == 413 and await closed(reader)


async def test_a_chunked_body_under_the_limit_is_joined(running: Running) -> None:
    reader, writer = await connect(running.port)
    writer.write(b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    writer.write(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert (await response(reader))[2] == b"POST /c abcde"
    writer.close()


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("deflate", lambda b: _raw(b))],
)
async def test_compressed_bodies_arrive_decoded(
    running: Running, encoding: str, compress: object
) -> None:
    assert callable(compress)
    reader, writer = await connect(running.port)
    writer.write(post("/z", compress(b"hello " * 100), f"Content-Encoding: {encoding}"))
    assert (await response(reader))[2] == b"POST /z " + b"hello " * 100
    writer.close()


async def test_a_compression_bomb_is_413_and_a_corrupt_stream_400(running: Running) -> None:
    reader, writer = await connect(running.port)
    writer.write(post("/z", gzip.compress(b"\0" * 100_000), "Content-Encoding: gzip"))
    status, _, body = await response(reader)
    assert (status, body) == (413, b"request body over 1000 bytes")
    writer.write(post("/z", gzip.compress(b"hello")[:-6], "Content-Encoding: gzip"))
    assert (await response(reader))[:1] == (400,)
    writer.write(post("/z", b"not gzip at all", "Content-Encoding: gzip"))
    assert (await response(reader))[0] == 400
    writer.write(post("/z", b"x", "Content-Encoding: br"))
    status, _, body = await response(reader)
    assert status == 415 and b"'br'" in body
    writer.write(post("/z", b"still served"))
    assert (await response(reader))[0] == 200
    writer.close()


async def test_expect_100_continue_is_answered_before_the_body(running: Running) -> None:
    reader, writer = await connect(running.port)
    writer.write(
        b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    assert await asyncio.wait_for(reader.readline(), 5) == b"HTTP/1.1 100 Continue\r\n"
    assert await reader.readline() == b"\r\n"
    writer.write(b"body")
    assert (await response(reader))[2] == b"POST /e body"
    writer.close()


async def test_head_gets_headers_only_and_http_1_0_is_closed(running: Running) -> None:
    reader, writer = await connect(running.port)
    writer.write(b"HEAD /h HTTP/1.1\r\nHost: x\r\n\r\n")
    status_line = await reader.readline()
    assert status_line.startswith(b"HTTP/1.1 200")
    headers = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    assert "content-length: 8" in headers  # what a GET would carry: "HEAD /h "
    writer.write(b"POST /old HTTP/1.0\r\nContent-Length: 1\r\n\r\nx")
    status, headers_10, body = await response(reader)  # nothing of the HEAD body in between
    assert (status, body) == (200, b"POST /old x") and headers_10["connection"] == "close"
    assert await closed(reader)


async def test_idle_and_stalled_connections_are_closed() -> None:
    async with serving(ServerOptions(idle_timeout=0.3, request_timeout=0.3)) as run:
        idle_reader, _ = await connect(run.port)
        stalled_reader, stalled = await connect(run.port)
        stalled.write(b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        assert await closed(idle_reader)
        status, _, _ = await response(stalled_reader)
        assert status == 408 and await closed(stalled_reader)
        assert run.seen == []


async def test_stop_finishes_requests_in_hand_and_refuses_new_connections() -> None:
    async with serving(ServerOptions()) as run:
        reader, writer = await connect(run.port)
        writer.write(post("/slow", b"s"))
        while not run.seen:
            await asyncio.sleep(0.01)
        idle_reader, _ = await connect(run.port)
        stopping = asyncio.create_task(run.server.stop(grace=5))
        assert await closed(idle_reader)  # nothing asked on it: closed at once
        run.release.set()
        status, headers, body = await response(reader)
        assert (status, body) == (200, b"POST /slow s") and headers["connection"] == "close"
        await stopping
        with pytest.raises(OSError):
            await connect(run.port)


def _raw(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()
