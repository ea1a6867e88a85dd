"""Sending a planned fleet on schedule over OTLP/HTTP or OTLP/gRPC, and what came back.

Built for one core: HTTP/1.1 keep-alive connections driven by callbacks (llhttp parses the
answers), no task or future per request; gRPC through grpcio's aio channels with pre-encoded
bytes (no serializer). Latency is measured from each export's *scheduled* time, so a slow
receiver cannot hide its queueing behind a generator that waits for it (coordinated omission);
the generator's own lag behind the schedule is reported apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import random
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

import httptools

from loadtest.fleet import Send
from loadtest.otlp import Templates

PATHS: Final = {"metrics": "/v1/metrics", "logs": "/v1/logs", "traces": "/v1/traces"}
GRPC_METHODS: Final = {
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
}
MAX_QUEUED: Final = 200_000
# answers OTLP exporters retry (the spec's list; RESOURCE_EXHAUSTED only with RetryInfo, left out)
RETRYABLE: Final = frozenset(
    {"http 429", "http 502", "http 503", "http 504", "grpc UNAVAILABLE", "grpc CANCELLED"}
)


@dataclass(frozen=True)
class Retry:
    """What an OTLP exporter does with "retry later": send the export again after a backoff.

    Without it every export a receiver shed was lost to the load test and counted against the
    pipeline (a rotation storm's missing stale_token flags, a cold start's shed exports).
    """

    attempts: int = 5  # sends in all
    first_delay: float = 1.0  # seconds: the receiver's Retry-After
    jitter: float = 0.25  # ± share of each delay, so shed exports do not return in step

    def delay(self, attempt: int) -> float:
        """Seconds before the send after ``attempt`` (1 = the first send) failed."""
        spread = random.uniform(1 - self.jitter, 1 + self.jitter)
        return float(self.first_delay * 2 ** (attempt - 1) * spread)


class Retrier:
    """Schedules a pool's retries and counts them, so the pool is in flight until they end."""

    def __init__(self, policy: Retry | None, stats: Stats) -> None:
        self.policy, self.stats = policy, stats
        self.pending = 0

    def later(self, attempt: int, status: str, resend: Callable[[], None]) -> bool:
        """Whether ``status`` is retried (then ``resend`` runs after the backoff)."""
        policy = self.policy
        if policy is None or status not in RETRYABLE or attempt >= policy.attempts:
            return False
        self.pending += 1
        self.stats.retried += 1
        asyncio.get_running_loop().call_later(policy.delay(attempt), self._fire, resend)
        return True

    def _fire(self, resend: Callable[[], None]) -> None:
        self.pending -= 1
        resend()


@dataclass
class Stats:
    """Counts, latencies and the moments that matter for time-to-flag."""

    started: float = 0.0  # wall clock of the schedule's zero
    sent: int = 0
    accepted: int = 0
    rejected: int = 0
    failed: int = 0
    unexpected: int = 0  # answered otherwise than the plan says (accepted vs rejected)
    retried: int = 0  # sends again after a "retry later" answer (see Retry)
    errors: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    latency_ms: array[float] = field(default_factory=lambda: array("d"))
    sent_at: array[float] = field(default_factory=lambda: array("d"))  # seconds from start
    lag_ms: array[float] = field(default_factory=lambda: array("d"))
    # from the scheduled time to the request going out: a pool with no free connection (HTTP)
    # or call slot (gRPC) makes exports wait here, in the generator, not in the pipeline
    pool_wait_ms: array[float] = field(default_factory=lambda: array("d"))
    triggers: dict[tuple[int, int], float] = field(default_factory=dict)  # wall clock
    controls: dict[str, float] = field(default_factory=dict)  # control event → wall clock
    cpu_seconds: float = 0.0
    elapsed: float = 0.0

    def record(self, send: Send, due: float, status: str, now: float) -> None:
        self.latency_ms.append((now - due) * 1000)
        self.sent_at.append(due)
        if status == "ok":
            self.accepted += 1
            expected = send.accepted
        elif status == "unauthenticated":
            self.rejected += 1
            expected = not send.accepted
        else:
            self.failed += 1
            self.errors[status] += 1
            return
        if not expected:
            self.unexpected += 1
            if len(self.examples) < 10:
                self.examples.append(
                    f"laptop {send.laptop} export {send.seq} at fleet {send.at:.1f} s: {status}, "
                    f"planned {'accepted' if send.accepted else 'rejected'}"
                )


# (send, request pieces, due on the loop clock, attempt, queued: this attempt's start)
Item = tuple[Send, list[bytes], float, int, float]


class _HttpConnection(asyncio.Protocol):
    def __init__(self, pool: HttpPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.current: Item | None = None
        self.began = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.pool.idle(self)

    def send(self, item: Item) -> None:
        assert self.transport is not None
        self.current = item
        self.began = self.pool.loop.time()
        # sends go out up to 1 ms early (the schedule's slack): count those as no wait
        self.pool.stats.pool_wait_ms.append(max(0.0, self.began - item[4]) * 1000)
        self.transport.writelines(item[1])

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.abort()

    def on_message_complete(self) -> None:
        code = self.parser.get_status_code()
        item, self.current = self.current, None
        if item is not None:
            self.pool.done(
                item, "ok" if code == 200 else "unauthenticated" if code == 401 else f"http {code}"
            )
        if not self.parser.should_keep_alive():
            assert self.transport is not None
            self.transport.close()
        else:
            self.pool.idle(self)

    def connection_lost(self, exc: Exception | None) -> None:
        item, self.current = self.current, None
        if item is not None:
            self.pool.done(item, "connection lost")
        self.pool.lost(self)


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class HttpPool:
    """``size`` keep-alive connections, one request in flight on each, like exporters'.

    On a loopback target each connection has its own source address (127.0.x.y), so the
    receiver's per-source budgets see many laptops, as they would behind many NATs, not one.
    """

    def __init__(
        self,
        host: str,
        port: int,
        size: int,
        stats: Stats,
        timeout: float = 10,
        retry: Retry | None = None,
    ) -> None:
        self.host, self.port, self.size = host, port, size
        self.stats = stats
        self._retrier = Retrier(retry, stats)
        self.timeout = timeout
        self.loop = asyncio.get_running_loop()
        self._idle: list[_HttpConnection] = []
        self._queue: deque[Item] = deque()
        self._open: set[_HttpConnection] = set()
        self._closing = False
        self._sweeper: asyncio.Task[None] | None = None
        self._heads: dict[tuple[str, str, str], bytes] = {}

    def head(self, signal: str, token: str, extra: str = "") -> bytes:
        """The request line and headers up to Content-Length; ``extra`` header lines replace
        the default content type."""
        key = (signal, token, extra)
        found = self._heads.get(key)
        if found is None:
            kind = (
                ""
                if "content-type:" in extra.lower()
                else "Content-Type: application/x-protobuf\r\n"
            )
            found = (
                f"POST {PATHS[signal]} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"{kind}{extra}Authorization: Bearer {token}\r\n"
            ).encode()
            self._heads[key] = found
        return found

    async def start(self) -> None:
        await asyncio.gather(*(self._connect(n) for n in range(self.size)))
        self._sweeper = asyncio.create_task(self._sweep())

    async def _connect(self, n: int) -> None:
        local = None
        if _loopback(self.host) and self.host != "localhost" and ":" not in self.host:
            local = (f"127.0.{1 + n // 250}.{1 + n % 250}", 0)
        connection = _HttpConnection(self)
        self._open.add(connection)
        try:
            await self.loop.create_connection(
                lambda: connection, self.host, self.port, local_addr=local
            )
        except OSError as error:
            self._open.discard(connection)
            raise ConnectionError(f"cannot connect to {self.host}:{self.port}: {error}") from None

    def submit(self, send: Send, token: str, body: bytes, due: float, extra: str = "") -> None:
        pieces = [
            self.head(send.signal, token, extra),
            b"Content-Length: %d\r\n\r\n" % len(body),
            body,
        ]
        self._dispatch((send, pieces, due, 1, due))

    def _dispatch(self, item: Item) -> None:
        if self._idle:
            self._idle.pop().send(item)
        elif len(self._queue) < MAX_QUEUED:
            self._queue.append(item)
        else:
            self.done(item, "generator queue full")

    def idle(self, connection: _HttpConnection) -> None:
        if self._queue:
            connection.send(self._queue.popleft())
        else:
            self._idle.append(connection)

    def done(self, item: Item, status: str) -> None:
        send, pieces, due, attempt, _ = item
        if self._retrier.later(
            attempt,
            status,
            lambda: self._dispatch((send, pieces, due, attempt + 1, self.loop.time())),
        ):
            return
        self.stats.record(send, due, status, self.loop.time())

    def lost(self, connection: _HttpConnection) -> None:
        self._open.discard(connection)
        with contextlib.suppress(ValueError):
            self._idle.remove(connection)
        if not self._closing:
            task = self.loop.create_task(self._connect(len(self._open) + 1000))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def in_flight(self) -> int:
        busy = sum(1 for c in self._open if c.current is not None)
        return len(self._queue) + busy + self._retrier.pending

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1)
            now = self.loop.time()
            for connection in list(self._open):
                if connection.current is not None and now - connection.began > self.timeout:
                    self.stats.errors["timeout"] += 0  # counted by connection_lost
                    if connection.transport is not None:
                        connection.transport.abort()

    async def close(self) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
        for connection in list(self._open):
            if connection.transport is not None:
                connection.transport.close()


# (send, metadata, body, due on the loop clock, attempt, queued: this attempt's start)
Call = tuple[Send, tuple[tuple[str, str], ...], bytes, float, int, float]


class GrpcPool:
    """grpcio aio channels sending pre-encoded bytes; at most ``size`` calls in flight."""

    def __init__(
        self,
        host: str,
        port: int,
        size: int,
        stats: Stats,
        timeout: float = 10,
        channels: int = 4,
        retry: Retry | None = None,
    ) -> None:
        import grpc

        self._grpc = grpc
        self.stats = stats
        self._retrier = Retrier(retry, stats)
        self.timeout = timeout
        self.size = size
        self.loop = asyncio.get_running_loop()
        self._channels = [
            grpc.aio.insecure_channel(
                f"{host}:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
            )
            for _ in range(channels)
        ]
        self._calls = [
            {
                signal: channel.unary_unary(
                    method, request_serializer=None, response_deserializer=None
                )
                for signal, method in GRPC_METHODS.items()
            }
            for channel in self._channels
        ]
        self._next = 0
        self._inflight = 0
        self._queue: deque[Call] = deque()
        self._metadata: dict[str, tuple[tuple[str, str], ...]] = {}

    async def start(self) -> None:
        await asyncio.gather(*(channel.channel_ready() for channel in self._channels))

    def submit(self, send: Send, token: str, body: bytes, due: float, extra: str = "") -> None:
        metadata = self._metadata.get(token)
        if metadata is None:
            metadata = self._metadata[token] = (("authorization", f"Bearer {token}"),)
        self._dispatch((send, metadata, body, due, 1, due))

    def _dispatch(self, item: Call) -> None:
        if self._inflight < self.size:
            self._call(item)
        elif len(self._queue) < MAX_QUEUED:
            self._queue.append(item)
        else:
            self.stats.record(item[0], item[3], "generator queue full", self.loop.time())

    def _call(self, item: Call) -> None:
        send, metadata, body, _, _, queued = item
        self._next = (self._next + 1) % len(self._calls)
        self.stats.pool_wait_ms.append(max(0.0, self.loop.time() - queued) * 1000)
        call = self._calls[self._next][send.signal](body, metadata=metadata, timeout=self.timeout)
        self._inflight += 1
        call.add_done_callback(lambda done: self._done(item, done))

    def _done(self, item: Call, call: Any) -> None:
        self._inflight -= 1
        if self._queue:
            self._call(self._queue.popleft())
        if call._cython_call.is_ok():  # the status without awaiting: no task per OK call
            self.stats.record(item[0], item[3], "ok", self.loop.time())
        else:
            self.loop.create_task(self._failed(item, call, self.loop.time()))

    async def _failed(self, item: Call, call: Any, now: float) -> None:
        grpc = self._grpc
        code = grpc.StatusCode.CANCELLED if call.cancelled() else await call.code()
        status = (
            "unauthenticated" if code == grpc.StatusCode.UNAUTHENTICATED else f"grpc {code.name}"
        )
        send, metadata, body, due, attempt, _ = item
        if not self._retrier.later(
            attempt,
            status,
            lambda: self._dispatch((send, metadata, body, due, attempt + 1, self.loop.time())),
        ):
            self.stats.record(send, due, status, now)

    def in_flight(self) -> int:
        return self._inflight + len(self._queue) + self._retrier.pending

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


Pool = HttpPool | GrpcPool
Control = tuple[float, str, Callable[[], dict[str, str] | None]]  # (fleet at, name, action)


async def drive(
    schedule: Iterable[Send],
    compression: float,
    pool: Pool,
    templates: Templates,
    tokens: dict[tuple[str, bool], str],
    tenant_of: Callable[[int], str],
    triggers: set[tuple[int, int]],
    controls: list[Control],
    stats: Stats,
    progress: Callable[[int], None] | None = None,
    start_at: float | None = None,
) -> None:
    """Send ``schedule`` (time-ordered) on time; run each control when its moment comes.

    A control returns new tokens (``{tenant: token}``, the tenant's rotated-in one) or None.
    ``start_at`` (wall clock) is the schedule's zero, so several processes share one.
    """
    loop = asyncio.get_running_loop()
    pending = sorted(controls, key=lambda c: c[0])
    cpu = time.process_time()
    stats.started = start_at if start_at is not None else time.time() + 0.2
    zero = loop.time() + (stats.started - time.time())
    wall = stats.started - zero  # loop clock → wall clock
    last_progress = 0.0

    def run_controls(until: float) -> None:
        while pending and pending[0][0] <= until:
            _, name, action = pending.pop(0)
            stats.controls[name] = time.time()
            for tenant, token in (action() or {}).items():
                tokens[(tenant, True)] = token

    for send in schedule:
        due = zero + send.at / compression
        now = loop.time()
        if due > now + 0.001:
            run_controls(send.at)
            await asyncio.sleep(due - now)
            now = loop.time()
            if progress is not None and now - last_progress > 0.2:
                last_progress = now
                progress(stats.sent)
        run_controls(send.at)
        stats.lag_ms.append((now - due) * 1000)
        token = tokens[(tenant_of(send.laptop), send.new_token)]
        body = templates.get(send.laptop, send.tool, send.signal, send.variant).body(time.time_ns())
        if (send.laptop, send.seq) in triggers:
            stats.triggers[(send.laptop, send.seq)] = now + wall
        stats.sent += 1
        pool.submit(send, token, body, due)
    run_controls(float("inf"))
    while pool.in_flight():
        await asyncio.sleep(0.05)
        if progress is not None:
            progress(stats.sent)
    stats.elapsed = loop.time() - zero
    stats.cpu_seconds = time.process_time() - cpu
    # latencies were measured on the loop clock; report send times from the schedule's zero
    for index, due in enumerate(stats.sent_at):
        stats.sent_at[index] = due - zero


def merge(parts: list[Stats]) -> Stats:
    """One process's worth of stats from several generator processes'."""
    total = Stats(started=min(part.started for part in parts))
    for part in parts:
        for name in (
            "sent", "accepted", "rejected", "failed", "unexpected", "retried", "cpu_seconds",
        ):  # fmt: skip
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.elapsed = max(total.elapsed, part.elapsed)
        total.errors.update(part.errors)
        total.examples += part.examples[: 10 - len(total.examples)]
        total.latency_ms.extend(part.latency_ms)
        total.sent_at.extend(part.sent_at)
        total.lag_ms.extend(part.lag_ms)
        total.pool_wait_ms.extend(part.pool_wait_ms)
        total.triggers.update(part.triggers)
        total.controls.update(part.controls)
    return total


async def replay(
    requests: Iterable[tuple[Send, bytes, str]],
    speed: float | None,
    pool: Pool,
    token: str,
    stats: Stats,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Send recorded requests ``speed`` times as fast as recorded (None: as fast as possible).
    Each item is (send, body, extra HTTP header lines)."""
    loop = asyncio.get_running_loop()
    cpu = time.process_time()
    zero = loop.time() + 0.1
    stats.started = time.time() + 0.1
    for send, body, extra in requests:
        due = zero + (send.at / speed if speed else 0.0)
        now = loop.time()
        if due > now + 0.001:
            await asyncio.sleep(due - now)
            now = loop.time()
        due = max(due, zero) if speed else now
        stats.lag_ms.append((now - due) * 1000)
        stats.sent += 1
        pool.submit(send, token, body, due, extra)
        if progress is not None and stats.sent % 256 == 0:
            progress(stats.sent)
            await asyncio.sleep(0)
    while pool.in_flight():  # noqa: ASYNC110 - answers arrive in callbacks, not as an event
        await asyncio.sleep(0.05)
    stats.elapsed = loop.time() - zero
    stats.cpu_seconds = time.process_time() - cpu
    for index, due in enumerate(stats.sent_at):
        stats.sent_at[index] = due - zero
