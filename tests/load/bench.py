"""`make bench`: the standard load-test scenarios, results and a machine description under
``benchmarks/``.

1. a 10,000-endpoint fleet on `driftline run` (embedded);
2. the same through the Kafka deployment: a broker of its own, `driftline ingest --bus kafka`,
   two Faust workers and the sink, flags read from the flags topic;
3. a token-rotation storm on `driftline run`: every tenant rotated, three laptops in four
   keeping the old token (retrying, in bursts, then switching).

Each runs `driftline loadtest` as a user would and keeps its JSON report; the summary table
goes to ``benchmarks/latest.md`` and into the README's ``bench:latest`` block. A reduced run
(``--endpoints/--rate/--duration`` other than the standard, or ``--only``) is a smoke test: its
reports go to ``--out`` but it touches neither ``latest.md`` nor the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bus import kafka_local
from tests.support.processes import free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "driftline.cli"]


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())  # fmt: skip
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    memory = next((int(line.split()[1]) // 1024 for line in meminfo.splitlines()
                   if line.startswith("MemTotal")), None)  # fmt: skip
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_mib": memory,
        "os": platform.platform(),
        "python": platform.python_version(),
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": os.getloadavg(),  # a shared machine's other work, at the start
    }


@contextmanager
def embedded(data: Path) -> Iterator[dict[str, int]]:
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    with (data / "run.log").open("wb") as log:
        process = subprocess.Popen(
            [*CLI, "run", "--data", str(data), "--grpc-port", str(ports["grpc"]),
             "--http-port", str(ports["http"]), "--admin-port", str(ports["admin"])],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_ready(ports["admin"], process)
            yield ports
        finally:
            process.terminate()
            process.wait(60)


@contextmanager
def kafka_deployment(data: Path, workers: int = 2) -> Iterator[tuple[dict[str, int], str]]:
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    bootstrap = kafka_local.up(port=free_port(), data_dir=data / "kafka")
    processes: list[subprocess.Popen[bytes]] = []
    with (data / "run.log").open("wb") as log:

        def start(*args: str) -> subprocess.Popen[bytes]:
            process = subprocess.Popen([*CLI, *args], stdout=log, stderr=subprocess.STDOUT)
            processes.append(process)
            return process

        try:
            ingest = start(
                "ingest", "--data", str(data), "--bus", "kafka", "--bootstrap", bootstrap,
                "--workers", "1", "--grpc-port", str(ports["grpc"]),
                "--http-port", str(ports["http"]), "--admin-port", str(ports["admin"]),
            )  # fmt: skip
            for n in range(workers):
                start("processors", "worker", "--data", str(data / f"worker-{n}"),
                      "--bootstrap", bootstrap)  # fmt: skip
            start("sink", "--data", str(data), "--bootstrap", bootstrap,
                  "--clickhouse", f"chdb://{data / 'clickhouse'}")  # fmt: skip
            wait_ready(ports["admin"], ingest)
            time.sleep(10)  # the workers join their group, the sink subscribes
            yield ports, bootstrap
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(60)
            kafka_local.down(data / "kafka")


def loadtest(data: Path, port: int, out: Path, *flags: str) -> dict[str, Any]:
    subprocess.run(
        [*CLI, "loadtest", "--data", str(data), "--http-port", str(port), "--json", str(out),
         "--settle", "10", *flags],
        check=False,
    )  # fmt: skip
    return json.loads(out.read_text())  # type: ignore[no-any-return]


def row(name: str, result: dict[str, Any]) -> str:
    sp, acc = result["speed"], result["accuracy"]
    lat, flag, resolve = sp["latency_ms"], result["time_to_flag_s"], result["time_to_resolve_s"]

    def f(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    accuracy = ", ".join(
        f"{kind} {acc[kind]['precision']:.3f}/{acc[kind]['recall']:.3f}"
        for kind in ("outdated_client", "missing_policy", "stale_token")
    )
    return (
        f"| {name} | {result['fleet']['endpoints']:,} | {f(sp['exports_per_second'], 0)} "
        f"| {f(lat['p50'])} / {f(lat['p99'])} ms | {f(flag['p50'], 2)} / {f(flag['p99'], 2)} s "
        f"| {f(resolve['p50'], 2)} / {f(resolve['p99'], 2)} s | {accuracy} |"
    )


README_BLOCK = re.compile(r"(<!-- bench:latest[^>]*-->\n)(.*?)(<!-- /bench:latest -->)", re.S)
STANDARD = {"endpoints": 10_000, "rate": 1000.0, "duration": 120.0, "only": None}


def refresh_readme(readme: Path, table: str) -> bool:
    """Put ``table`` into the README's bench block; False if the README has none."""
    text = readme.read_text()
    new, found = README_BLOCK.subn(lambda m: m.group(1) + table + m.group(3), text)
    if found:
        readme.write_text(new)
    return bool(found)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoints", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=1000)
    parser.add_argument("--duration", type=float, default=120)
    parser.add_argument("--only", choices=["embedded", "kafka", "storm"], action="append")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks", help="reports go here")
    args = parser.parse_args()
    chosen = args.only or ["embedded", "kafka", "storm"]
    standard = all(getattr(args, name) == value for name, value in STANDARD.items())
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    fleet = ["--endpoints", str(args.endpoints), "--rate", str(args.rate),
             "--duration", str(args.duration)]  # fmt: skip
    results: dict[str, Any] = {"machine": machine(), "scenarios": {}}
    for name in chosen:
        data = Path(tempfile.mkdtemp(prefix=f"driftline-bench-{name}-"))
        report = out / f"{stamp}-{name}.json"
        if name == "kafka":
            with kafka_deployment(data) as (ports, bootstrap):
                result = loadtest(data, ports["http"], report, *fleet,
                                  "--bus", "kafka", "--bootstrap", bootstrap)  # fmt: skip
        else:
            with embedded(data) as ports:
                extra = ["--rotation-storm"] if name == "storm" else []
                result = loadtest(data, ports["http"], report, *fleet, *extra)
        results["scenarios"][name] = {"report": report.name, **result}
    (out / f"{stamp}-machine.json").write_text(json.dumps(results["machine"], indent=2) + "\n")
    m = results["machine"]
    lines = [
        f"`make bench` at {m['date']} (commit {m['commit']}): {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_mib']:,} MiB, Python {m['python']}, load average "
        f"{m['load_average'][0]:.1f} at the start; OTLP/HTTP, {args.rate:,.0f} exports/s "
        f"offered for {args.duration:.0f} s.",
        "",
        "| scenario | endpoints | exports/s | latency p50 / p99 | time to flag p50 / p99 "
        "| time to resolve p50 / p99 | precision/recall |",
        "|---|---|---|---|---|---|---|",
    ]
    names = {"embedded": "`driftline run`", "kafka": "Kafka, 2 workers",
             "storm": "rotation storm, `driftline run`"}  # fmt: skip
    lines += [row(names[name], results["scenarios"][name]) for name in chosen]
    table = "\n".join(lines) + "\n"
    (out / f"{stamp}-summary.md").write_text(table)
    print(table, end="")
    if standard:
        (ROOT / "benchmarks" / "latest.md").write_text(table)
        refreshed = refresh_readme(ROOT / "README.md", table)
        print("README refreshed" if refreshed else "README has no bench:latest block")
    else:
        print("a reduced run: benchmarks/latest.md and the README are left as they were")


if __name__ == "__main__":
    main()
