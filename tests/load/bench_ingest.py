"""`make bench-ingest`: the receiver under concurrent OTLP/gRPC exports, in-process bus and Kafka.

Starts `driftline ingest` as users do (one process per core sharing the ports), drives it from
separate load-generator processes with pre-encoded exports over many connections, and prints:
accepted exports/s and snapshots/s at saturation, p50/p99 latency at a fixed rate (half the
target), the receivers' CPU per answered request in each phase (the figure that stays
stable on a shared machine), the receivers' peak RSS, and the generator's CPU per answered
request.

Generators, chosen per protocol by measured CPU per export on the same payloads (Claude Code
metrics exports of ~2.9 KB, memory bus, 2 shared cores, 2026-12-06, load average 4-14 from
other benchmarks; `--generator go|python` repeats it):

- OTLP/HTTP: the Python generator (`tests/load/pyload.py`, the load test's own sender): 31 µs
  per export saturated and 69 µs paced at 2,500/s, against Go's 40 and 116 µs (a second pair
  of runs: 43 against 63 µs saturated). No Go needed.
- OTLP/gRPC: Go (`tests/load/otlpload`, built by the make target with `go build`) stays.
  Python's grpcio client took 266 µs per export saturated and 289 µs paced, against Go's 136
  and 165 µs: at the paced 2,500/s it needs ~0.7 of one of the two cores the receiver runs on,
  and in that run it fell behind (1,719/s answered, p50 1.0 s, where Go held 2,500/s at
  p50 1.7 ms). A gRPC figure taken with it would measure the generator, not the receiver.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ingest.tokens import TokenStore
from tests.load.fleet import fleet, metrics_export
from tests.support.processes import free_port, wait_ready

OTLPLOAD_SRC = Path(__file__).parent / "otlpload"
OTLPLOAD_BIN = Path(__file__).resolve().parents[2] / ".cache" / "bin" / "otlpload"


PYTHON_GENERATOR = Path("pyload")  # run_load's marker for tests/load/pyload.py
# Which generator drives each protocol: by measured generator CPU per export (module doc).
GENERATORS = {"http": "python", "grpc": "go"}


def build_generator() -> Path:
    """The Go load generator (Python's gRPC client costs as much CPU as the server)."""
    subprocess.run(["go", "build", "-o", str(OTLPLOAD_BIN), "."], cwd=OTLPLOAD_SRC, check=True)
    return OTLPLOAD_BIN


def generator_for(protocol: str, choice: str = "auto") -> Path:
    """The generator for ``protocol``: ``auto`` follows GENERATORS; Go is built only if used."""
    kind = GENERATORS[protocol] if choice == "auto" else choice
    return build_generator() if kind == "go" else PYTHON_GENERATOR


def children_cpu() -> float:
    """CPU seconds of this process's finished children (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_frames(path: Path, bodies: Iterable[bytes]) -> int:
    """Requests framed for the generators ([4-byte big-endian length][request]); returns
    how many bytes of requests were written."""
    total = 0
    with path.open("wb") as out:
        for body in bodies:
            out.write(struct.pack(">I", len(body)) + body)
            total += len(body)
    return total


def write_payloads(path: Path, fleet_size: int) -> int:
    """One pre-encoded export per laptop; returns the mean size."""
    now = time.time_ns()
    bodies = (metrics_export(laptop, now) for laptop in fleet(fleet_size))
    return write_frames(path, bodies) // fleet_size


def run_load(
    generator: Path,
    payloads: Path,
    protocol: str,
    port: int,
    token: str,
    seconds: float,
    **flags: object,
) -> dict[str, Any]:
    """One load phase from the Go generator, or the Python one (``PYTHON_GENERATOR``); both
    print the same JSON, plus ``generator_cpu_s``: what the generator process used."""
    before = children_cpu()
    if generator == PYTHON_GENERATOR:
        command = [
            sys.executable, "-m", "tests.load.pyload", "--payloads", str(payloads),
            "--mode", protocol, "--port", str(port), "--duration", str(seconds), "--warmup", "1",
        ]  # fmt: skip
        for name, value in flags.items():
            command += [f"--{name.replace('_', '-')}", str(value)]
        done = subprocess.run(command, input=token + "\n", capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"the Python generator failed:\n{done.stderr[-2000:]}")
        return {**json.loads(done.stdout), "generator_cpu_s": children_cpu() - before}
    target = (
        ["-addr", f"127.0.0.1:{port}"]
        if protocol == "grpc"
        else ["-mode", "http", "-url", f"http://127.0.0.1:{port}/v1/metrics"]
    )
    command = [
        str(generator), "-payloads", str(payloads), *target,
        "-token", token, "-duration", f"{seconds}s", "-warmup", "1s",
    ]  # fmt: skip
    for name, value in flags.items():
        command += [f"-{name.replace('_', '-')}", str(value)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return {**json.loads(result.stdout), "generator_cpu_s": children_cpu() - before}


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process and its children still running have used so far."""
    ticks = 0
    for p in _tree(pid):
        fields = Path(f"/proc/{p}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _counter_total(admin_port: int, name: str) -> float:
    """Sum of a receiver counter's samples over all labels (and worker processes)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).read()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.decode().splitlines()
        if line.startswith(name + "{")
    )


def _snapshots_total(admin_port: int) -> float:
    return _counter_total(admin_port, "driftline_ingest_snapshots_total")


class CpuMeter:
    """Receiver CPU per answered request over one phase: the figure that stays stable when
    the machine is shared, unlike throughput. Requests are counted by the receivers
    themselves (every outcome), so the load generator's warm-up is included on both sides."""

    def __init__(self, pid: int, admin_port: int) -> None:
        self.pid, self.admin_port = pid, admin_port
        self.cpu, self.requests = self._read()

    def _read(self) -> tuple[float, float]:
        return cpu_seconds(self.pid), _counter_total(
            self.admin_port, "driftline_ingest_requests_total"
        )

    def ms_per_request(self) -> float:
        cpu, requests = self._read()
        return 1000 * (cpu - self.cpu) / max(requests - self.requests, 1)

    def requests_since(self) -> float:
        return self._read()[1] - self.requests


def bench(
    bus: str, protocol: str, args: argparse.Namespace, generator: Path, payloads: Path
) -> dict[str, float]:
    """One receiver (``bus``) driven over ``protocol`` at saturation, then paced."""
    data = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    _, token = TokenStore(data / "tokens.db").create("bench")
    grpc_port, http_port, admin_port = free_port(), free_port(), free_port()
    command = [
        sys.executable, "-m", "driftline.cli", "ingest", "--bus", bus, "--data", str(data),
        "--workers", str(args.workers), "--grpc-port", str(grpc_port),
        "--http-port", str(http_port), "--admin-port", str(admin_port),
    ]  # fmt: skip
    if bus == "kafka":
        from tests.support.kafka import kafka_bootstrap

        command += ["--bootstrap", kafka_bootstrap()]
    with (data / "receiver.log").open("wb") as log:
        # shedding off: this measures capacity (bench-hostile measures the shedding)
        env = {**os.environ, "DRIFTLINE_SHED_LAG": "0"}
        receiver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_ready(admin_port, receiver)
            before, began = _snapshots_total(admin_port), time.perf_counter()
            meter = CpuMeter(receiver.pid, admin_port)
            port = grpc_port if protocol == "grpc" else http_port
            saturated = run_load(
                generator, payloads, protocol, port, token, args.seconds,
                concurrency=args.concurrency, connections=args.connections,
            )  # fmt: skip
            snapshots_per_second = (_snapshots_total(admin_port) - before) / (
                time.perf_counter() - began
            )
            saturated_cpu = meter.ms_per_request()
            saturated_gen = saturated["generator_cpu_s"] / max(meter.requests_since(), 1)
            meter = CpuMeter(receiver.pid, admin_port)
            paced = run_load(
                generator, payloads, protocol, port, token, args.seconds,
                rate=args.rate or args.target / 2, connections=args.connections,
            )  # fmt: skip
            paced_cpu = meter.ms_per_request()
            paced_gen = paced["generator_cpu_s"] / max(meter.requests_since(), 1)
            rss = _peak_rss_mib(receiver.pid)
        finally:
            receiver.terminate()
            receiver.wait(30)
    return {
        "exports/s": saturated["rate"],
        "snapshots/s": snapshots_per_second,  # the receivers' own count, warm-up included
        "failed": saturated["failed"],
        "sat p99 ms": saturated["p99_ms"],
        "sat CPU ms": saturated_cpu,
        "paced/s": paced["rate"],
        "paced failed": paced["failed"],
        "p50 ms": paced["p50_ms"],
        "p99 ms": paced["p99_ms"],
        "paced CPU ms": paced_cpu,
        "peak RSS MiB": rss,
        "gen sat CPU ms": 1000 * saturated_gen,  # the generator's CPU per answered request
        "gen paced CPU ms": 1000 * paced_gen,
    }


def _width(column: str) -> int:
    return max(12, len(column))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bus", choices=["memory", "kafka", "both"], default="both")
    parser.add_argument("--protocol", choices=["grpc", "http", "both"], default="both")
    parser.add_argument("--workers", type=int, default=0, help="receiver processes (0 = cores)")
    parser.add_argument("--concurrency", type=int, default=256, help="in flight at saturation")
    parser.add_argument("--connections", type=int, default=32, help="gRPC connections")
    parser.add_argument("--seconds", type=float, default=10, help="per phase")
    parser.add_argument("--fleet", type=int, default=20_000, help="distinct laptops")
    parser.add_argument("--target", type=float, default=5000, help="exports/s goal")
    parser.add_argument("--rate", type=float, default=None, help="paced rate (default target/2)")
    parser.add_argument(
        "--generator",
        choices=["auto", "go", "python"],
        default="auto",
        help="load generator (auto: Python for OTLP/HTTP, Go for gRPC; see the module doc)",
    )
    args = parser.parse_args()
    buses = ["memory", "kafka"] if args.bus == "both" else [args.bus]
    payloads = Path(tempfile.mkdtemp(prefix="driftline-bench-")) / "exports.bin"
    size = write_payloads(payloads, args.fleet)
    print(
        f"bench-ingest: {os.cpu_count()} cores, {args.workers or os.cpu_count()} receiver "
        f"processes, OTLP metrics exports of ~{size} B from {args.fleet} laptops, "
        f"{args.connections} connections; saturation = {args.concurrency} in flight, "
        f"paced = {args.rate or args.target / 2:.0f}/s; {args.seconds:.0f} s each"
    )
    protocols = ["grpc", "http"] if args.protocol == "both" else [args.protocol]
    generators = {protocol: generator_for(protocol, args.generator) for protocol in protocols}
    print("generators: " + ", ".join(f"{p} {g.name}" for p, g in generators.items()))
    columns: list[str] = []
    for bus in buses:
        for protocol in protocols:
            row = bench(bus, protocol, args, generators[protocol], payloads)
            if not columns:
                columns = list(row)
                print(f"{'bus/protocol':14}" + "".join(f" {c:>{_width(c)}}" for c in columns))
            label = f"{bus}/{protocol}"
            cells = "".join(f" {row[c]:>{_width(c)}.{3 if 'CPU' in c else 1}f}" for c in columns)
            print(f"{label:14}{cells}", flush=True)


if __name__ == "__main__":
    main()
