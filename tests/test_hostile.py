"""The receiver under attack: each defence tested with the attack itself, over real sockets.

Attack clients run in threads with blocking sockets, so the receiver's event loop (the one the
test runs on) does only the receiver's work and its lag can be measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import socket
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from bus import MemoryBus
from ingest.admission import ShedOptions
from ingest.service import IngestOptions
from schemas import AuthEvent, AuthReason, EndpointSnapshot, topics
from tests.conftest import RunningReceiver, start_receiver

METRICS_PATH = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
MiB = 1024 * 1024


# --- building hostile bodies -------------------------------------------------------------------


def resource(attributes: dict[str, str]) -> bytes:
    """One serialized resource_metrics entry (a request is their concatenation)."""
    request = ExportMetricsServiceRequest()
    entry = request.resource_metrics.add()
    for key, value in attributes.items():
        kv = entry.resource.attributes.add()
        kv.key, kv.value.string_value = key, value
    metric = entry.scope_metrics.add().metrics.add()
    metric.name = "claude_code.session.count"
    metric.sum.data_points.add().as_int = 1
    return bytes(request.SerializeToString())


def attribution_bomb(size: int = int(3.7 * MiB), first: dict[str, str] | None = None) -> bytes:
    """``size`` bytes of resources without identity (the issue's 3.7 MiB, ~100,000 of them)."""
    head = resource(first) if first else b""
    filler = resource({"service.name": "x"})
    return head + filler * ((size - len(head)) // len(filler))


def http_request(
    body: bytes,
    authorizations: tuple[str, ...] = (),
    declared: int | None = None,
    extra: tuple[str, ...] = (),
) -> bytes:
    head = [
        "POST /v1/metrics HTTP/1.1",
        "Host: x",
        "Content-Type: application/x-protobuf",
        f"Content-Length: {len(body) if declared is None else declared}",
        *(f"Authorization: {a}" for a in authorizations),
        *extra,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
    }
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body[:length]


def exchange(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send, then read the answer; status 0 when the receiver closed the connection before
    taking the whole request (what it does to an unauthenticated body past its prefix)."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(raw)  # cut short: the answer may still be readable
        try:
            return read_response(sock)
        except (ConnectionResetError, ConnectionError):
            return 0, {}, b""


@contextlib.asynccontextmanager
async def loop_lag() -> AsyncIterator[list[float]]:
    """Samples of how late a 5 ms timer fires on this loop while the block runs."""
    samples: list[float] = []
    loop = asyncio.get_running_loop()

    async def sample() -> None:
        while True:
            started = loop.time()
            await asyncio.sleep(0.005)
            samples.append(loop.time() - started - 0.005)

    task = asyncio.create_task(sample())
    try:
        yield samples
    finally:
        task.cancel()


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[RunningReceiver]:
    running = await start_receiver(tmp_path, MemoryBus())
    yield running
    await running.receiver.stop(grace=0)
    await running.bus.stop()


def events(running: RunningReceiver) -> list[AuthEvent]:
    assert isinstance(running.bus, MemoryBus)
    return [AuthEvent.from_json(r.value) for r in running.bus.tail(topics.AUTH_EVENTS)]


def snapshots(running: RunningReceiver) -> list[EndpointSnapshot]:
    assert isinstance(running.bus, MemoryBus)
    return [EndpointSnapshot.from_json(r.value) for r in running.bus.tail(topics.SNAPSHOTS)]


async def grpc_call(
    port: int, body: bytes, metadata: tuple[tuple[str, str], ...]
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            await channel.unary_unary(METRICS_PATH)(body, metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or "", tuple(error.trailing_metadata() or ())
    return grpc.StatusCode.OK, "", ()


def retry_delay(trailing: tuple[tuple[str, bytes], ...]) -> int:
    status = status_pb2.Status.FromString(dict(trailing)["grpc-status-details-bin"])
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    return int(retry.retry_delay.seconds)


# --- 1. authenticate before reading; bounded attribution ----------------------------------------


async def test_attribution_bombs_do_not_hold_the_loop(running: RunningReceiver) -> None:
    bomb = attribution_bomb()
    raw = http_request(bomb)  # no token
    async with loop_lag() as lag:
        answers = await asyncio.gather(
            *(asyncio.to_thread(exchange, running.http_port, raw) for _ in range(4))
        )
        code, message, _ = await grpc_call(running.grpc_port, bomb, ())
    # answered 401 once the 64 KiB prefix is in, the rest never read: the sender may see the
    # 401 or, still sending, a reset
    assert {status for status, _, _ in answers} <= {401, 0}
    assert code == grpc.StatusCode.UNAUTHENTICATED and "missing" in message
    # decoding a bomb whole took 1.1-2.6 s of loop time; a prefix costs well under a ms
    assert max(lag) < 0.25, f"loop held for {max(lag):.3f} s"
    await running.receiver.service.drain()
    assert sum(event.count for event in events(running)) == 5


async def test_a_refused_body_is_attributed_from_its_prefix(running: RunningReceiver) -> None:
    token_id = running.store.records("acme")[0].token_id
    running.store.revoke(token_id, timedelta(days=1))
    bomb = attribution_bomb(first={"device.serial_number": "C02BIG", "service.name": "x"})
    status, _, _ = await asyncio.to_thread(
        exchange, running.http_port, http_request(bomb, (f"Bearer {running.token}",))
    )
    assert status in (401, 0)  # 0: reset while still sending past the prefix
    code, _, _ = await grpc_call(
        running.grpc_port, bomb, (("authorization", f"Bearer {running.token}"),)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    await running.receiver.service.drain()
    assert {(e.reason, e.endpoint_id) for e in events(running)} == {
        (AuthReason.REVOKED, "acme/C02BIG")
    }
    assert sum(e.count for e in events(running)) == 2


async def test_gzip_prefix_of_a_refused_body_is_attributed(running: RunningReceiver) -> None:
    body = gzip.compress(attribution_bomb(first={"host.name": "laptop-9"}))
    raw = http_request(body, extra=("Content-Encoding: gzip",))
    assert (await asyncio.to_thread(exchange, running.http_port, raw))[0] == 401
    await running.receiver.service.drain()
    assert [e.identity for e in events(running)] == ["laptop-9"]


async def test_half_sent_unauthenticated_bodies_hold_only_a_prefix(
    running: RunningReceiver,
) -> None:
    body = b"\0" * (19 * MiB)
    raw = http_request(body)
    before = rss()
    sockets = []

    def open_and_send_half() -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", running.http_port))
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            sock.sendall(memoryview(raw)[: len(raw) // 2])  # refused after the prefix
        return sock

    try:
        for _ in range(12):
            sockets.append(await asyncio.to_thread(open_and_send_half))
        await asyncio.sleep(0.5)  # let the receiver read what was sent
        grown = rss() - before
        # buffered whole, 12 half bodies were 114 MiB; a 64 KiB prefix each is under 1 MiB
        assert grown < 40 * MiB, f"RSS grew {grown / MiB:.0f} MiB"
        assert running.receiver.service.budget.in_use == 0  # prefixes are not charged
    finally:
        for sock in sockets:
            sock.close()
    await asyncio.sleep(0.2)
    assert running.receiver.service.budget.in_use == 0


# --- 2. memory budget ---------------------------------------------------------------------------


async def test_a_full_memory_budget_answers_retry_before_reading(tmp_path: Path) -> None:
    options = IngestOptions(shedding=None, max_body_bytes_in_flight=2 * MiB)
    running = await start_receiver(tmp_path, MemoryBus(), options)
    token = (f"Bearer {running.token}",)
    held = socket.create_connection(("127.0.0.1", running.http_port))
    try:
        # an authenticated client declares 3 MiB and sends half: its reservation fills it
        await asyncio.to_thread(held.sendall, http_request(b"x" * MiB, token, declared=3 * MiB))
        await asyncio.sleep(0.2)
        assert running.receiver.service.budget.in_use == 3 * MiB
        small = resource({"device.serial_number": "C1"})
        status, headers, _ = await asyncio.to_thread(
            exchange, running.http_port, http_request(small, token)
        )
        assert status == 503 and headers["retry-after"] == "1"
        code, message, trailing = await grpc_call(
            running.grpc_port, small, (("authorization", token[0]),)
        )
        assert code == grpc.StatusCode.UNAVAILABLE and "memory budget" in message
        assert retry_delay(trailing) == 1
    finally:
        held.close()
    await asyncio.sleep(0.2)
    assert running.receiver.service.budget.in_use == 0  # released when the client went away
    status, _, _ = await asyncio.to_thread(exchange, running.http_port, http_request(small, token))
    assert status == 200
    assert running.receiver.service.budget.in_use == 0
    await running.receiver.stop(grace=0)


# --- 3. load shedding ---------------------------------------------------------------------------


async def test_a_late_loop_sheds_new_requests_quickly_then_recovers(tmp_path: Path) -> None:
    options = IngestOptions(shedding=ShedOptions(target_lag=0.02))
    running = await start_receiver(tmp_path, MemoryBus(), options)
    body = resource({"device.serial_number": "C1"})
    raw = http_request(body, (f"Bearer {running.token}",))

    def send_many(count: int) -> list[tuple[int, str, float]]:
        out = []
        for _ in range(count):
            started = time.monotonic()
            status, headers, _ = exchange(running.http_port, raw)
            out.append((status, headers.get("retry-after", ""), time.monotonic() - started))
        return out

    async def hog(seconds: float) -> None:  # CPU work that keeps the loop ~50 ms late
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(0.05)
            await asyncio.sleep(0)

    try:
        _, answers = await asyncio.gather(hog(2.0), asyncio.to_thread(send_many, 40))
        shed = [a for a in answers if a[0] == 503]
        assert shed, "nothing was shed while the loop ran late"
        assert all(retry == "1" for _, retry, _ in shed)
        assert {status for status, _, _ in answers} <= {200, 503}
        await asyncio.sleep(1.5)  # the lag is gone: the probability decays to 0
        # a loaded test machine can be late on its own: recovery is five OKs in a row, soon
        deadline = time.monotonic() + 10
        while [s for s, _, _ in await asyncio.to_thread(send_many, 5)] != [200] * 5:
            assert time.monotonic() < deadline, "still shedding 10 s after the loop recovered"
            await asyncio.sleep(0.5)
        metadata = (("authorization", f"Bearer {running.token}"),)
        code, _, _ = await grpc_call(running.grpc_port, body, metadata)
        assert code == grpc.StatusCode.OK
    finally:
        await running.receiver.stop(grace=0)


async def test_a_stalled_bus_holds_at_most_the_inflight_limit_and_sheds_the_rest(
    tmp_path: Path,
) -> None:
    """The store stops answering (a group commit stuck on a slow disk): requests beyond the
    in-flight limit get 503 + Retry-After at once instead of queueing behind it, and the
    ones admitted are answered OK once the store is back, every snapshot published."""
    bus = MemoryBus()
    store_back = asyncio.Event()

    async def slow_store(record: object) -> None:
        await store_back.wait()

    bus.subscribe(slow_store)
    limit = 8
    options = IngestOptions(shedding=ShedOptions(target_lag=60.0, min_inflight=limit))
    running = await start_receiver(tmp_path, bus, options)
    token = (f"Bearer {running.token}",)

    def timed(serial: str) -> tuple[int, str, float]:
        started = time.monotonic()
        raw = http_request(resource({"device.serial_number": serial}), token)
        status, headers, _ = exchange(running.http_port, raw)
        return status, headers.get("retry-after", ""), time.monotonic() - started

    loop = asyncio.get_running_loop()
    clients = ThreadPoolExecutor(32)  # to_thread's default pool has 6 threads on 2 cores

    def client(serial: str) -> asyncio.Future[tuple[int, str, float]]:
        return loop.run_in_executor(clients, timed, serial)

    try:
        held = [client(f"H{n}") for n in range(limit)]
        deadline = time.monotonic() + 10
        while running.receiver.service._inflight < limit:
            assert time.monotonic() < deadline, "the first requests never reached the bus"
            await asyncio.sleep(0.05)
        refused = await asyncio.gather(*(client(f"R{n}") for n in range(12)))
        assert [(status, retry) for status, retry, _ in refused] == [(503, "1")] * 12
        assert max(seconds for _, _, seconds in refused) < 1.0
        assert not any(task.done() for task in held)
        store_back.set()
        answers = await asyncio.gather(*held)
        assert [status for status, _, _ in answers] == [200] * limit
        published = {s.endpoint_id for s in snapshots(running)}
        assert published == {f"acme/H{n}" for n in range(limit)}
    finally:
        store_back.set()
        clients.shutdown(wait=True)
        await running.receiver.stop(grace=0)


# --- 4. protocol edges --------------------------------------------------------------------------


async def test_multi_member_gzip_is_decoded(running: RunningReceiver) -> None:
    one = resource({"device.serial_number": "GZ1"})
    two = resource({"device.serial_number": "GZ2"})
    body = gzip.compress(one) + gzip.compress(two)  # what `cat a.gz b.gz` makes
    raw = http_request(body, (f"Bearer {running.token}",), extra=("Content-Encoding: gzip",))
    status, _, _ = await asyncio.to_thread(exchange, running.http_port, raw)
    assert status == 200
    assert [s.endpoint_id for s in snapshots(running)] == ["acme/GZ1", "acme/GZ2"]


async def test_error_answers_are_capped(running: RunningReceiver) -> None:
    bomb = attribution_bomb(size=int(3.9 * MiB))
    raw = http_request(bomb, (f"Bearer {running.token}",))
    started = time.monotonic()
    status, _, body = await asyncio.to_thread(exchange, running.http_port, raw)
    assert status == 400
    assert time.monotonic() - started < 5  # was 10.8 s for an 18.5 MB answer
    message = status_pb2.Status.FromString(body).message
    assert len(body) <= 64 * 1024 + 64
    assert message.endswith("more") and "… and " in message
    code, details, _ = await grpc_call(
        running.grpc_port,
        attribution_bomb(3 * MiB),
        (("authorization", f"Bearer {running.token}"),),
    )
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(details.encode()) <= 64 * 1024 and "… and " in details


async def test_duplicate_authorization_is_refused_the_same_on_both_transports(
    running: RunningReceiver,
) -> None:
    good = f"Bearer {running.token}"
    body = resource({"device.serial_number": "DUP"})
    for pair in ((good, "Bearer nonsense"), ("Bearer nonsense", good), (good, good)):
        status, _, answer = await asyncio.to_thread(
            exchange, running.http_port, http_request(body, pair)
        )
        assert status == 401
        http_message = status_pb2.Status.FromString(answer).message
        code, grpc_message, _ = await grpc_call(
            running.grpc_port, body, tuple(("authorization", value) for value in pair)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert (
            http_message
            == grpc_message
            == ("ingest token malformed: more than one Authorization header")
        )
    assert snapshots(running) == []


# --- 5. rejections counted ----------------------------------------------------------------------


async def test_every_rejection_is_counted_and_the_first_published_at_once(
    running: RunningReceiver,
) -> None:
    token_id = running.store.records("acme")[0].token_id
    running.store.rotate("acme", timedelta(0), timedelta(days=30))
    body = resource({"device.serial_number": "C02STALE"})
    raw = http_request(body, (f"Bearer {running.token}",))
    for _ in range(4):  # four in well under 2 s
        assert (await asyncio.to_thread(exchange, running.http_port, raw))[0] == 401
    await asyncio.sleep(0.05)
    [first] = events(running)  # published at once; the next three are held
    assert (first.count, first.token_id, first.endpoint_id) == (1, token_id, "acme/C02STALE")
    await asyncio.sleep(1.2)  # the interval (1 s) is up: the held ones go out as one
    first, rest = events(running)
    assert rest.count == 3 and rest.first_at < rest.observed_at


async def test_an_interval_of_zero_publishes_each_rejection(tmp_path: Path) -> None:
    running = await start_receiver(
        tmp_path, MemoryBus(), IngestOptions(shedding=None, auth_event_interval=0)
    )
    raw = http_request(resource({"device.serial_number": "C0"}))
    for _ in range(3):
        assert (await asyncio.to_thread(exchange, running.http_port, raw))[0] == 401
    await running.receiver.service.drain()
    assert [e.count for e in events(running)] == [1, 1, 1]
    await running.receiver.stop(grace=0)


async def test_a_grpc_call_that_never_sends_its_message_is_refused_in_time(
    running: RunningReceiver,
) -> None:
    never = asyncio.Event()

    async def nothing() -> AsyncIterator[bytes]:
        await never.wait()
        yield b""

    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        started = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await channel.stream_unary(METRICS_PATH)(nothing(), timeout=10)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert time.monotonic() - started < 5  # the 2 s read budget of a refused call
