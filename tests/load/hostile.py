"""Load tools for hostile-load benchmarks and the soak: a cheap HTTP/1.1 client on asyncio
streams, an open-loop pacer, attack bodies, and `driftline run` as a real process.

Python, not Go: the clients are few and cheap (raw sockets, pre-encoded bodies); a 3.7 MiB
body costs the sender a kernel copy, not Python work.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from ingest.tokens import TokenStore
from tests.support.processes import free_port, wait_ready

MiB = 1024 * 1024
METRICS_PATH = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def resource_entry(attributes: dict[str, str]) -> bytes:
    request = ExportMetricsServiceRequest()
    entry = request.resource_metrics.add()
    for key, value in attributes.items():
        kv = entry.resource.attributes.add()
        kv.key, kv.value.string_value = key, value
    return bytes(request.SerializeToString())


def attribution_bomb(size: int = int(3.7 * MiB)) -> bytes:
    """~``size`` bytes of resources without identity: 200,000 of them at 3.7 MiB."""
    filler = resource_entry({"k": "v"})
    return filler * (size // len(filler))


def http_head(
    length: int, token: str | None, path: str = "/v1/metrics", extra: tuple[str, ...] = ()
) -> bytes:
    lines = [
        f"POST {path} HTTP/1.1",
        "Host: bench",
        "Content-Type: application/x-protobuf",
        f"Content-Length: {length}",
        *((f"Authorization: Bearer {token}",) if token else ()),
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class HttpConnection:
    """One keep-alive connection; ``post`` returns the status (0: the connection failed)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, head: bytes, body: bytes, timeout: float) -> int:
        try:
            async with asyncio.timeout(timeout):
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(
                        "127.0.0.1", self.port, limit=1 << 20
                    )
                assert self.reader is not None
                self.writer.write(head)
                self.writer.write(body)
                line = await self.reader.readline()
                if not line:
                    raise ConnectionError("closed")
                status = int(line.split()[1])
                length = 0
                close = False
                while (header := await self.reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                await self.reader.readexactly(length)
                if close:
                    await self.close()
                return status
        except (OSError, ConnectionError, TimeoutError, asyncio.IncompleteReadError, ValueError):
            await self.close()
            return 0

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.transport.abort()  # no waiting: this may run as a timeout fires
        self.reader = self.writer = None


@dataclass
class Tally:
    """Answers of an open-loop run: latency measured from the *scheduled* send time."""

    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # of every answered request
    ok_latencies: list[float] = field(default_factory=list)
    within: int = 0  # OK or retry-later within the deadline
    cancelled_within: int = 0  # gRPC CANCELLED (the server's queue limit) within it
    no_connection: int = 0  # not sent: every connection of the client's pool was busy
    sent: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # gRPC codes other than OK

    def add(self, status: int, latency: float, deadline: float, retry: int) -> None:
        self.sent += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status:
            self.latencies.append(latency)
        if status == 200:
            self.ok_latencies.append(latency)
        if status in (200, retry) and latency <= deadline:
            self.within += 1
        elif status == 499 and latency <= deadline:
            self.cancelled_within += 1


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Pipelined(asyncio.Protocol):
    """A client connection on a bare protocol, matching answers to requests in order: a few
    microseconds of client CPU per request, so one Python process can offer several
    thousand requests/s. Back in ``idle`` once nothing is outstanding."""

    def __init__(self, tally: Tally, deadline: float, idle: collections.deque[Any]) -> None:
        self.tally = tally
        self.deadline = deadline
        self.idle = idle
        self.sent: collections.deque[float] = collections.deque()
        self.buffer = b""
        self.transport: Any = None
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        now = time.monotonic()
        while self.sent:
            self.tally.add(0, now - self.sent.popleft(), self.deadline, 503)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[: end + 2]
            start = head.lower().find(b"content-length:")
            length = int(head[start + 15 : head.find(b"\r\n", start)]) if start >= 0 else 0
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            status = int(head[9:12])
            self.tally.add(status, time.monotonic() - self.sent.popleft(), self.deadline, 503)
            if b"connection: close" in head.lower():
                self.transport.close()
            elif not self.sent:
                self.idle.append(self)


async def open_loop_http(
    port: int,
    bodies: list[bytes],
    token: str,
    rate: float,
    seconds: float,
    connections: int = 2048,
    deadline: float = 2.0,
) -> Tally:
    """``rate`` requests/s for ``seconds`` whatever the answers. Each request takes an idle
    connection of a pool (one request at a time on a connection, as the OTLP exporters do);
    with none idle it counts as failed. Unanswered ``deadline`` + 1 s after the last is
    sent = failed."""
    tally = Tally()
    loop = asyncio.get_running_loop()
    idle: collections.deque[_Pipelined] = collections.deque()
    pool: list[_Pipelined] = []
    for _ in range(connections):
        _, protocol = await loop.create_connection(
            lambda: _Pipelined(tally, deadline, idle), "127.0.0.1", port
        )
        pool.append(protocol)
        idle.append(protocol)
    heads = {len(body): http_head(len(body), token) for body in bodies}
    started = time.monotonic()
    n = 0
    while (now := time.monotonic()) < started + seconds:
        due = started + n / rate
        if due > now:
            await asyncio.sleep(due - now)
        body = bodies[n % len(bodies)]
        n += 1
        while idle and idle[0].lost:
            idle.popleft()
        if not idle:
            tally.add(0, 0.0, deadline, 503)  # the client ran out of connections
            tally.no_connection += 1
            continue
        connection = idle.popleft()
        connection.sent.append(due)
        connection.transport.write(heads[len(body)] + body)
    drain_until = time.monotonic() + deadline + 1
    while any(c.sent for c in pool) and time.monotonic() < drain_until:
        await asyncio.sleep(0.05)
    for connection in pool:
        if connection.transport is not None:
            connection.transport.abort()
    await asyncio.sleep(0)
    return tally


async def open_loop_grpc(
    port: int,
    bodies: list[bytes],
    token: str,
    rate: float,
    seconds: float,
    channels: int = 8,
    deadline: float = 2.0,
) -> Tally:
    tally = Tally()
    pool = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(channels)]
    calls = [channel.unary_unary(METRICS_PATH) for channel in pool]
    metadata = (("authorization", f"Bearer {token}"),)
    codes = {
        grpc.StatusCode.OK: 200,
        grpc.StatusCode.UNAVAILABLE: 503,
        grpc.StatusCode.CANCELLED: 499,  # cancelled by the server's queue limit: retryable
    }
    pending: set[asyncio.Task[None]] = set()

    async def one(n: int, scheduled: float) -> None:
        try:
            await calls[n % channels](
                bodies[n % len(bodies)], metadata=metadata, timeout=deadline + 1
            )
            status = 200
        except grpc.aio.AioRpcError as error:
            status = codes.get(error.code(), 0)
            key = f"{error.code().name}: {(error.details() or '')[:60]}"
            tally.errors[key] = tally.errors.get(key, 0) + 1
        tally.add(status, time.monotonic() - scheduled, deadline, 503)

    started = time.monotonic()
    n = 0
    while (now := time.monotonic()) < started + seconds:
        due = started + n / rate
        if due > now:
            await asyncio.sleep(due - now)
        task = asyncio.create_task(one(n, due))
        pending.add(task)
        task.add_done_callback(pending.discard)
        n += 1
    if pending:
        await asyncio.gather(*pending)
    for channel in pool:
        await channel.close()
    return tally


# ------------------------------------------------------------------------- the receiver


@dataclass
class Pipeline:
    """`driftline run` (receiver, detectors, chDB) on free ports over a fresh data dir."""

    data: Path
    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    token: str

    @property
    def pid(self) -> int:
        return self.process.pid

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "driftline.cli", *args, "--data", str(self.data)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return result.stdout


@contextlib.contextmanager
def driftline_run(policy: str | None = None, **env: str) -> Iterator[Pipeline]:
    data = Path(tempfile.mkdtemp(prefix="driftline-hostile-"))
    _, token = TokenStore(data / "tokens.db").create("acme")
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    if policy is not None:
        (data / "policy.yaml").write_text(policy)
        subprocess.run(
            [sys.executable, "-m", "driftline.cli", "policy", "set", str(data / "policy.yaml"),
             "--data", str(data)],
            check=True, capture_output=True,
        )  # fmt: skip
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline.cli", "run", "--data", str(data),
         "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
         "--admin-port", str(ports["admin"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **env},
    )  # fmt: skip
    try:
        wait_ready(ports["admin"], process, timeout=90)
        yield Pipeline(data, process, ports, token)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def loop_lag(admin_port: int) -> float:
    """The receiver's own lag sample, from its Prometheus metrics."""
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read()
    for line in text.decode().splitlines():
        if line.startswith("driftline_ingest_loop_lag_seconds "):
            return float(line.split()[1])
    return float("nan")
