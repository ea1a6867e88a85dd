"""Admission control shared by both transports: a memory budget and load shedding.

Both answer "retry later" (503 + Retry-After, UNAVAILABLE + RetryInfo) *before* a request's
body is read, which the OTLP exporters retry with backoff: that is the protocol's contract,
and it keeps a receiver past capacity answering quickly instead of timing everybody out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ingest import metrics


class MemoryBudget:
    """Bytes of request bodies in flight across every connection of the process.

    A request reserves its declared size (or, chunked / gRPC, what has arrived) before more is
    read; past ``limit`` new requests are refused. One request is always admitted when nothing
    else is in flight, so a body up to the transport's own cap can never be refused forever.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self._trimmed_at = 0.0

    def try_reserve(self, size: int) -> bool:
        if self.in_use and self.in_use + size > self.limit:
            metrics.rejects("memory_budget").inc()
            return False
        self.reserve(size)
        return True

    def reserve(self, size: int) -> None:
        """Reserve whatever the budget says (bytes already read must be accounted)."""
        self.in_use += size
        metrics.BODY_BYTES.set(self.in_use)

    def release(self, size: int) -> None:
        self.in_use = max(0, self.in_use - size)
        metrics.BODY_BYTES.set(self.in_use)
        if self.in_use == 0 and size > _TRIM_AFTER:
            now = time.monotonic()
            if now - self._trimmed_at > 1.0:  # a trim walks the heap: at most once a second
                self._trimmed_at = now
                trim_heap()

    @property
    def full(self) -> bool:
        return self.in_use >= self.limit


@dataclass(frozen=True, slots=True)
class ShedOptions:
    target_lag: float = 0.05  # seconds of (smoothed) event-loop lag past which to shed
    # seconds admitted requests take from arrival to answer (least of the last ``window``)
    # past which to shed: where the work is elsewhere (the store's group commit, Kafka, gRPC's
    # threads) the loop need not be late, but requests queue
    target_queue: float = 0.25
    window: float = 0.1
    period: float = 0.01  # how often the lag is sampled
    smoothing: float = 0.3  # weight of a new sample: one GC pause alone sheds nothing
    step_up: float = 0.05  # shed probability added per sample over target
    step_down: float = 0.01  # … and taken away per sample under it
    max_probability: float = 0.98  # always admit some, so the lag is measured on real work
    # admitted requests waiting on the bus at once: at most ``headroom`` times what the bus
    # completes in ``target_queue`` (Little's law), never under ``min_inflight``
    min_inflight: int = 256
    headroom: float = 2.0
    rate_time_constant: float = 1.0  # seconds over which the completion rate is smoothed


class LoadShedder:
    """Sheds a fraction of new requests while requests queue: the event loop runs late, or
    admitted requests take long from arrival to answer.

    Event-loop lag is the queueing delay every request sees before it is even parsed; the
    time to answer adds the queue behind the receiver (the store, Kafka). The latter is taken
    as the *least* wait of the requests that finished in the last ``window`` (CoDel's
    standing-queue signal: a burst passes, a queue that never drains does not). Sampling
    every ``period`` and moving the shed probability up while either is over its target
    and down while both are under (additive both ways) holds the receiver near its
    capacity: admitted requests stay fast, the rest get a cheap 503/UNAVAILABLE at once.

    A probability moves too slowly for a store that answers in group commits: at three times
    capacity the queue grew to over a second (OK p99 1.2 s) before it shed enough. So
    requests are also refused outright while those already admitted and waiting on the bus
    are more than ``headroom`` times what the bus completes in ``target_queue``: the
    queue cannot outgrow the target whatever the controller's pace, and the limit follows
    the completion rate up as the bus speeds up (bigger commits), from ``min_inflight``.

    Steps are per unit of time, not per sample: a sample that comes 300 ms late (the loop
    was busy with 2,048 connections' requests) moves the probability as much as the thirty
    samples that did not come. Per-sample steps made the controller slowest exactly when it
    had to act fastest, and at three times capacity the receiver collapsed (every request
    timed out) before shedding caught up.
    """

    def __init__(self, options: ShedOptions | None = None) -> None:
        self.options = options or ShedOptions()
        self.probability = 0.0
        self.lag = 0.0
        self.queue = 0.0  # the least time to answer of the last window, held while none do
        self._window_min = float("inf")
        self._window_started = 0.0
        self._completed = 0  # answers in this window
        self.rate = 0.0  # answers a second, smoothed
        self.limit = float(self.options.min_inflight)  # admitted requests on the bus at once
        self.waiting: Callable[[], bool] = lambda: False  # any request on the bus now?
        self._task: asyncio.Task[None] | None = None
        self._random = random.Random()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="shedder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def admit(self, inflight: int = 0) -> bool:
        """Whether to take a new request, ``inflight`` admitted ones waiting on the bus."""
        if inflight < self.limit and (
            self.probability <= 0.0 or self._random.random() >= self.probability
        ):
            return True
        metrics.rejects("overloaded").inc()
        return False

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        opts = self.options
        while True:
            started = loop.time()
            await asyncio.sleep(opts.period)
            self.observe(loop.time() - started - opts.period)

    def waited(self, seconds: float) -> None:
        """An admitted request's time from arrival to answer."""
        self._window_min = min(self._window_min, seconds)
        self._completed += 1

    def observe(self, lag: float, now: float | None = None) -> None:
        """One lag sample (seconds); public so tests can drive it."""
        opts = self.options
        now = time.monotonic() if now is None else now
        elapsed = now - self._window_started
        if elapsed >= opts.window:
            if self._window_min != float("inf"):
                self.queue = self._window_min
            elif not self.waiting():
                self.queue = 0.0  # none finished and none waits: idle, not stuck
            weight = 1.0 - math.exp(-elapsed / opts.rate_time_constant)
            self.rate += weight * (self._completed / elapsed - self.rate)
            self.limit = max(opts.min_inflight, opts.headroom * self.rate * opts.target_queue)
            self._completed = 0
            self._window_min = float("inf")
            self._window_started = now
        lag = max(0.0, lag)
        periods = min(_MAX_PERIODS, 1.0 + lag / opts.period)  # this sample stands for these
        self.lag += (1.0 - (1.0 - opts.smoothing) ** periods) * (lag - self.lag)
        if self.lag > opts.target_lag or self.queue > opts.target_queue:
            step = opts.step_up * periods
            self.probability = min(opts.max_probability, self.probability + step)
        else:
            self.probability = max(0.0, self.probability - opts.step_down * periods)
        metrics.LOOP_LAG.set(self.lag)
        metrics.ANSWER_QUEUE.set(self.queue)
        metrics.SHED_PROBABILITY.set(self.probability)
        metrics.INFLIGHT_LIMIT.set(self.limit)


_MAX_PERIODS: Final = 100.0  # a sample stands for at most this many periods (1 s at 10 ms)


# ----------------------------------------------------------------------- returning memory

_TRIM_AFTER: Final = 1024 * 1024
_M_TRIM_THRESHOLD: Final = -1
_M_MMAP_THRESHOLD: Final = -3


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt  # noqa: B018 - glibc only
        libc.malloc_trim  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


_LIBC: Final = _libc()


def pin_malloc_thresholds(mmap_threshold: int = 1024 * 1024) -> bool:
    """Keep large buffers in their own mappings, so freeing a body returns it to the OS.

    glibc raises its mmap threshold each time a mapped block is freed (up to 32 MiB): after a
    few 19 MiB bodies, later ones come from the heap, whose top cannot shrink past live
    objects, and RSS stays at its peak after the connections close. A fixed threshold turns
    that adaptation off. No-op (False) off glibc.

    Not lower than 1 MiB: the Kafka producer's LZ4 compressor allocates and zeroes a ~256 KiB
    context for every batch, and at a 256 KiB threshold each one was a fresh mapping, 65 page
    faults and 144 µs a batch instead of 6 µs (aiokafka's lz4_encode, 1.8 KB batch).
    """
    if _LIBC is None:
        return False
    ok = bool(_LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold))
    ok &= bool(_LIBC.mallopt(_M_TRIM_THRESHOLD, 2 * mmap_threshold))
    return ok


def trim_heap() -> None:
    """Give free heap pages back to the OS (cheap when there is little to give)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)
