"""`make bench-ingest`: the receiver under concurrent OTLP/gRPC exports, in-process bus and Kafka.

Starts `driftline ingest` as users do (one process per core sharing the ports), drives it from
separate load-generator processes with pre-encoded exports over many connections, and prints:
accepted exports/s and snapshots/s at saturation, p50/p99 latency at a fixed rate (half the
target), and the receivers' peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc

from ingest.tokens import TokenStore
from tests.load.fleet import fleet, metrics_export

EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Result:
    sent: int
    ok: int
    failed: int
    seconds: float
    latencies: list[float]


async def _drive(
    port: int,
    token: str,
    payloads: list[bytes],
    seconds: float,
    concurrency: int,
    connections: int,
    rate: float | None,
) -> Result:
    """Closed loop (rate None: `concurrency` requests always in flight) or open loop at `rate`."""
    channels = [
        grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.use_local_subchannel_pool", 1)]
        )
        for _ in range(connections)
    ]
    calls = [channel.unary_unary(EXPORT) for channel in channels]
    metadata = (("authorization", f"Bearer {token}"),)
    latencies: list[float] = []
    ok = failed = sent = 0
    start = time.perf_counter()
    deadline = start + seconds

    async def one(i: int) -> None:
        nonlocal ok, failed
        began = time.perf_counter()
        try:
            await calls[i % connections](payloads[i % len(payloads)], metadata=metadata, timeout=10)
        except grpc.aio.AioRpcError:
            failed += 1
            return
        latencies.append(time.perf_counter() - began)
        ok += 1

    if rate is None:

        async def worker(offset: int) -> None:
            nonlocal sent
            i = offset
            while time.perf_counter() < deadline:
                sent += 1
                await one(i)
                i += concurrency

        await asyncio.gather(*(worker(k) for k in range(concurrency)))
    else:
        tasks: set[asyncio.Task[None]] = set()
        interval = 1 / rate
        while (now := time.perf_counter()) < deadline:
            due = start + sent * interval
            if due > now:
                await asyncio.sleep(due - now)
            task = asyncio.create_task(one(sent))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    for channel in channels:
        await channel.close()
    return Result(sent, ok, failed, elapsed, latencies)


def _generator(args: tuple[int, str, int, float, int, int, float | None, int]) -> Result:
    port, token, fleet_size, seconds, concurrency, connections, rate, seed = args
    laptops = fleet(fleet_size, seed=seed)
    now = time.time_ns()
    payloads = [metrics_export(laptop, now) for laptop in laptops]
    return asyncio.run(_drive(port, token, payloads, seconds, concurrency, connections, rate))


def _run_load(
    port: int,
    token: str,
    *,
    generators: int,
    seconds: float,
    concurrency: int,
    connections: int,
    rate: float | None,
    fleet_size: int,
) -> Result:
    per_rate = rate / generators if rate else None
    jobs = [
        (port, token, fleet_size // generators, seconds, concurrency, connections, per_rate, g)
        for g in range(generators)
    ]
    with multiprocessing.get_context("spawn").Pool(generators) as pool:
        results = pool.map(_generator, jobs)
    return Result(
        sent=sum(r.sent for r in results),
        ok=sum(r.ok for r in results),
        failed=sum(r.failed for r in results),
        seconds=max(r.seconds for r in results),
        latencies=sorted(lat for r in results for lat in r.latencies),
    )


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def _tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        children = (task / "children").read_text().split()
        for child in children:
            pids += _tree(int(child))
    return pids


def _peak_rss_mib(pid: int) -> float:
    """Sum of VmHWM (peak resident set) over the receiver and its worker processes."""
    total_kib = 0
    for p in _tree(pid):
        status = Path(f"/proc/{p}/status").read_text()
        match = re.search(r"VmHWM:\s+(\d+) kB", status)
        if match and "python" in Path(f"/proc/{p}/cmdline").read_text():
            total_kib += int(match.group(1))
    return total_kib / 1024


def _snapshots_total(admin_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith("driftline_ingest_snapshots_total{")
    )


def _wait_ready(admin_port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("receiver exited during start-up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError("receiver not ready in time")


def bench(bus: str, args: argparse.Namespace) -> dict[str, float]:
    data = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    _, token = TokenStore(data / "tokens.db").create("bench")
    grpc_port, http_port, admin_port = _free_port(), _free_port(), _free_port()
    command = [
        sys.executable, "-m", "driftline.cli", "ingest", "--bus", bus, "--data", str(data),
        "--workers", str(args.workers), "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--admin-port", str(admin_port),
    ]  # fmt: skip
    env = dict(os.environ)
    if bus == "kafka":
        from tests.support.kafka import kafka_bootstrap

        command += ["--bootstrap", kafka_bootstrap()]
    log = open(data / "receiver.log", "wb")  # noqa: SIM115 - closed below
    receiver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        _wait_ready(admin_port, receiver)
        load = dict(
            generators=args.generators,
            connections=args.connections,
            fleet_size=args.fleet,
        )
        _run_load(grpc_port, token, seconds=2, concurrency=args.concurrency, rate=None, **load)
        before = _snapshots_total(admin_port)
        saturated = _run_load(
            grpc_port, token, seconds=args.seconds, concurrency=args.concurrency, rate=None, **load
        )
        snapshots = _snapshots_total(admin_port) - before
        rate = args.rate or args.target / 2
        paced = _run_load(grpc_port, token, seconds=args.seconds, concurrency=0, rate=rate, **load)
        rss = _peak_rss_mib(receiver.pid)
    finally:
        receiver.terminate()
        receiver.wait(30)
        log.close()
    return {
        "exports/s": saturated.ok / saturated.seconds,
        "snapshots/s": snapshots / saturated.seconds,
        "failed": saturated.failed,
        "sat p50 ms": _percentile(saturated.latencies, 0.5) * 1000,
        "sat p99 ms": _percentile(saturated.latencies, 0.99) * 1000,
        "paced rate/s": paced.ok / paced.seconds,
        "paced failed": paced.failed,
        "p50 ms": _percentile(paced.latencies, 0.5) * 1000,
        "p99 ms": _percentile(paced.latencies, 0.99) * 1000,
        "peak RSS MiB": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bus", choices=["memory", "kafka", "both"], default="both")
    parser.add_argument("--workers", type=int, default=0, help="receiver processes (0 = cores)")
    parser.add_argument("--generators", type=int, default=2, help="load-generator processes")
    parser.add_argument("--concurrency", type=int, default=64, help="in flight per generator")
    parser.add_argument("--connections", type=int, default=8, help="connections per generator")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--fleet", type=int, default=20_000, help="distinct laptops")
    parser.add_argument("--target", type=float, default=5000, help="exports/s goal")
    parser.add_argument("--rate", type=float, default=None, help="paced rate (default target/2)")
    args = parser.parse_args()
    buses = ["memory", "kafka"] if args.bus == "both" else [args.bus]
    export_size = len(metrics_export(fleet(1)[0], time.time_ns()))
    print(
        f"bench-ingest: {os.cpu_count()} cores, receivers={args.workers or os.cpu_count()}, "
        f"generators={args.generators}x{args.concurrency} in flight over "
        f"{args.connections} connections, {args.seconds:.0f}s per phase, "
        f"fleet {args.fleet} laptops, ~{export_size} B per export"
    )
    rows = {bus: bench(bus, args) for bus in buses}
    columns = list(next(iter(rows.values())))
    print(f"{'bus':8}" + "".join(f"{c:>14}" for c in columns))
    for bus, row in rows.items():
        print(f"{bus:8}" + "".join(f"{row[c]:>14.1f}" for c in columns))


if __name__ == "__main__":
    main()
