"""A Python stand-in for ``otlpload``: the same payload files, flags and JSON, sent with the
load test's own senders (``loadtest.sender``), so a benchmark needs no Go.

The payload file holds repeated [4-byte big-endian length][request bytes] frames, sent
round-robin. Without ``--rate`` the load is a closed loop of ``--concurrency`` requests in
flight; with it, requests start on a fixed schedule and latency counts from the scheduled
start (no coordinated omission). Requests started during ``--warmup`` are sent, not counted.
One JSON object goes to stdout: sent, ok, failed, seconds, rate (ok/s), p50/p90/p99/max_ms,
errors, and the generator's own CPU seconds. The bearer token is read from stdin (not argv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import struct
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvloop

from loadtest.fleet import Send
from loadtest.sender import GrpcPool, HttpPool, Stats

SEND = Send(0.0, 0, 0, 0, "metrics", False, 0, True)


def read_payloads(path: Path) -> list[bytes]:
    data = path.read_bytes()
    bodies, offset = [], 0
    while offset < len(data):
        (size,) = struct.unpack_from(">I", data, offset)
        bodies.append(data[offset + 4 : offset + 4 + size])
        offset += 4 + size
    if not bodies:
        raise ValueError(f"{path}: no requests")
    return bodies


@dataclass
class Meter(Stats):
    """Stats that count only requests due after the warm-up, and call ``answered`` for each
    answer (the closed loop's refill)."""

    measured_from: float = 0.0
    ok: int = 0
    counted_sent: int = 0
    last_done: float = 0.0
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    answered: Callable[[], None] = lambda: None

    def record(self, send: Send, due: float, status: str, now: float) -> None:
        """``due`` is on ``time.perf_counter``'s clock: uvloop's own is in whole milliseconds,
        too coarse for sub-millisecond answers."""
        now = time.perf_counter()
        if due >= self.measured_from:
            self.counted_sent += 1
            self.last_done = now
            if status == "ok":
                self.ok += 1
                self.latencies.append((now - due) * 1000)
            else:
                self.outcomes[status] += 1
        self.answered()


def summary(meter: Meter, seconds: float, cpu: float) -> dict[str, Any]:
    meter.latencies.sort()

    def ms(q: float) -> float:  # exact, nearest rank, as otlpload
        if not meter.latencies:
            return 0.0
        return meter.latencies[max(math.ceil(q * len(meter.latencies)) - 1, 0)]

    failed = sum(meter.outcomes.values())
    return {
        "sent": meter.counted_sent,
        "ok": meter.ok,
        "failed": failed,
        "seconds": seconds,
        "rate": meter.ok / seconds,
        "p50_ms": ms(0.5),
        "p90_ms": ms(0.9),
        "p99_ms": ms(0.99),
        "max_ms": ms(1.0),
        "errors": dict(meter.outcomes),
        "cpu_seconds": cpu,
        "all_sent": meter.sent,
    }


async def load(args: argparse.Namespace, bodies: list[bytes], token: str) -> dict[str, Any]:
    clock = time.perf_counter
    cpu = time.process_time()
    meter = Meter()
    pool: HttpPool | GrpcPool
    if args.mode == "grpc":
        pool = GrpcPool("127.0.0.1", args.port, args.concurrency, meter, channels=args.connections)
    else:
        pool = HttpPool("127.0.0.1", args.port, args.concurrency, meter)
    await pool.start()
    start = clock()
    meter.measured_from = start + args.warmup
    end = meter.measured_from + args.duration
    n = 0

    def submit(due: float) -> None:
        nonlocal n
        meter.sent += 1
        pool.submit(SEND, token, bodies[n % len(bodies)], due)
        n += 1

    if args.rate:
        while (due := start + n / args.rate) < end:
            if due > (now := clock()) + 0.001:
                await asyncio.sleep(due - now)
            submit(due)
    else:

        def refill() -> None:
            if (now := clock()) < end:
                submit(now)

        meter.answered = refill
        for _ in range(args.concurrency):
            submit(start)
        await asyncio.sleep(end - clock())
    while pool.in_flight():  # answers arrive in callbacks
        await asyncio.sleep(0.01)
    await pool.close()
    seconds = max(meter.last_done - meter.measured_from, args.duration)
    return summary(meter, seconds, time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payloads", type=Path, required=True)
    parser.add_argument("--mode", choices=["grpc", "http"], default="grpc")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=16, help="gRPC channels")
    parser.add_argument("--concurrency", type=int, default=128, help="in flight / HTTP pool")
    parser.add_argument("--rate", type=float, default=0, help="requests/s; 0 = closed loop")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=0)
    args = parser.parse_args()
    token = sys.stdin.readline().strip()
    result = uvloop.run(load(args, read_payloads(args.payloads), token))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
