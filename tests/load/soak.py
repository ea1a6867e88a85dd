"""`make soak`: `driftline run` under steady mixed load for a while, watched for leaks.

Valid exports (HTTP and gRPC, a fleet re-exporting), requests with a stale or missing token,
and now and then an attribution bomb and a half-sent body, at a steady rate. Every
``--every`` seconds it prints the receiver's RSS, open files, event-loop lag and what was
answered; at the end, the slopes of RSS and open files over the second half of the run (the
first half is warm-up: caches, chDB parts, allocator arenas), by least squares.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field

import uvloop
from rich.console import Console
from rich.table import Table

from tests.load.fleet import Laptop, metrics_export
from tests.load.hostile import (
    HttpConnection,
    MiB,
    Tally,
    attribution_bomb,
    driftline_run,
    http_head,
    loop_lag,
    open_files,
    open_loop_grpc,
    open_loop_http,
    percentile,
    rss_mib,
)

console = Console()


@dataclass
class Sample:
    at: float
    rss: float
    files: int
    lag: float


@dataclass
class Counters:
    hostile: int = 0
    samples: list[Sample] = field(default_factory=list)


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value), per minute."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((x - mean_x) ** 2 for x, _ in points)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in points)
    return cov / var * 60 if var else float("nan")


async def hostile(port: int, stop: float, counters: Counters) -> None:
    """A stale token, a missing one, a bomb and a half-sent body, in a slow loop."""
    bomb = attribution_bomb()
    stale = metrics_export(Laptop("C02SOAKSTALE", "web", "2.0.14"), time.time_ns())
    connection = HttpConnection(port)
    while time.monotonic() < stop:
        await connection.post(http_head(len(stale), "dlt_00000000_" + "A" * 43), stale, 10)
        await connection.post(http_head(len(stale), None), stale, 10)
        await HttpConnection(port).post(http_head(len(bomb), None), bomb, 10)
        with contextlib.suppress(OSError):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.send(http_head(19 * MiB, None) + bytes(MiB))
            await asyncio.sleep(0.5)
            sock.close()
        counters.hostile += 4
        await asyncio.sleep(0.5)
    await connection.close()


async def watch(
    pid: int, admin: int, started: float, stop: float, every: float, counters: Counters
) -> None:
    console.print(f"sampling every {every:g} s")
    while time.monotonic() < stop:
        sample = Sample(time.monotonic() - started, rss_mib(pid), open_files(pid), loop_lag(admin))
        counters.samples.append(sample)
        console.print(
            f"{sample.at:7.0f} s  RSS {sample.rss:8.1f} MiB  files {sample.files:5d}"
            f"  lag {sample.lag * 1000:7.2f} ms"
        )
        await asyncio.sleep(every)


async def amain(args: argparse.Namespace) -> None:
    fleet = [
        metrics_export(Laptop(f"C02SOAK{i:05d}", "web", "2.0.14"), time.time_ns())
        for i in range(args.fleet)
    ]
    counters = Counters()
    with driftline_run() as run:
        started = time.monotonic()
        stop = started + args.seconds
        http_rate = args.rate * 0.7
        grpc_rate = args.rate - http_rate
        results = await asyncio.gather(
            open_loop_http(run.ports["http"], fleet, run.token, http_rate, args.seconds, 256),
            open_loop_grpc(run.ports["grpc"], fleet, run.token, grpc_rate, args.seconds, 4),
            hostile(run.ports["http"], stop, counters),
            watch(run.pid, run.ports["admin"], started, stop, args.every, counters),
        )
        await asyncio.sleep(3)
        final = Sample(time.monotonic() - started, rss_mib(run.pid), open_files(run.pid), 0.0)
    http, grpc_ = results[0], results[1]
    assert isinstance(http, Tally) and isinstance(grpc_, Tally)
    second_half = [s for s in counters.samples if s.at >= args.seconds / 2]
    summary = Table("measure", "value")
    for name, tally in (("HTTP", http), ("gRPC", grpc_)):
        summary.add_row(f"{name} answers", str(tally.statuses))
        summary.add_row(f"{name} OK p99 ms", f"{percentile(tally.ok_latencies, 0.99) * 1000:.1f}")
    summary.add_row("hostile requests", str(counters.hostile))
    first = counters.samples[0] if counters.samples else final
    summary.add_row(
        "RSS first / last / after MiB",
        f"{first.rss:.1f} / {counters.samples[-1].rss:.1f} / {final.rss:.1f}",
    )
    summary.add_row(
        "RSS slope, second half",
        f"{slope_per_minute([(s.at, s.rss) for s in second_half]):+.2f} MiB/min",
    )
    summary.add_row(
        "open files slope, second half",
        f"{slope_per_minute([(s.at, s.files) for s in second_half]):+.2f} /min",
    )
    summary.add_row("open files first / after", f"{first.files} / {final.files}")
    summary.add_row(
        "loop lag p99 ms", f"{percentile([s.lag for s in counters.samples], 0.99) * 1000:.2f}"
    )
    console.print(summary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=120, help="how long (SOAK_SECONDS)")
    parser.add_argument("--rate", type=float, default=300, help="valid exports/s, all told")
    parser.add_argument("--fleet", type=int, default=2000, help="laptops re-exporting")
    parser.add_argument("--every", type=float, default=10, help="seconds between samples")
    uvloop.run(amain(parser.parse_args()))


if __name__ == "__main__":
    main()
