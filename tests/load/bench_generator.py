"""`make bench-generator`: what one `driftline loadtest` generator process sends on one core.

Starts `driftline ingest` (in-process bus, one receiver process) and drives it with the load
test's fleet at a rate beyond what the receiver takes, over OTLP/HTTP and OTLP/gRPC. Prints the
exports/s answered and the generator's own CPU per export: its capacity on one core is the
inverse, whatever the receiver (sharing this machine's cores) managed.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

import uvloop

from ingest.tokens import TokenStore
from loadtest.fleet import all_sends, fleet, scenario
from loadtest.otlp import Templates
from loadtest.sender import GrpcPool, HttpPool, Stats, drive
from tests.support.processes import free_port, wait_ready

TENANTS = ("bench-a", "bench-b", "bench-c")


async def generate(
    protocol: str, port: int, tokens: dict[str, str], args: argparse.Namespace
) -> Stats:
    sc = dataclasses.replace(
        scenario(args.endpoints, args.rate, args.seconds, TENANTS), rotated=()
    )  # no rotation: every export is accepted, and costs the receiver its full path
    laptops = fleet(args.endpoints, sc)
    templates = Templates({laptop.index: laptop for laptop in laptops})
    for laptop in laptops:  # encoded before the clock starts, as `driftline loadtest` does
        for tool in range(len(laptop.tools)):
            for signal in ("metrics", "logs"):
                templates.get(laptop.index, tool, signal, 0)
    stats = Stats()
    pool: HttpPool | GrpcPool
    if protocol == "http":
        pool = HttpPool("127.0.0.1", port, args.connections, stats)
    else:
        pool = GrpcPool("127.0.0.1", port, args.connections * 8, stats)
    await pool.start()
    try:
        await drive(
            all_sends(laptops, sc), sc.compression, pool, templates,
            {(tenant, False): token for tenant, token in tokens.items()},
            lambda index: laptops[index].tenant, set(), [], stats,
        )  # fmt: skip
    finally:
        await pool.close()
    return stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--endpoints", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rate", type=float, default=0, help="offered exports/s (0: per protocol)")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--protocol", choices=["http", "grpc", "both"], default="both")
    args = parser.parse_args()
    data = Path(tempfile.mkdtemp(prefix="driftline-bench-generator-"))
    store = TokenStore(data / "tokens.db")
    tokens = {tenant: store.create(tenant)[1] for tenant in TENANTS}
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    command = [
        sys.executable, "-m", "driftline.cli", "ingest", "--bus", "memory", "--data", str(data),
        "--workers", "1", "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
        "--admin-port", str(ports["admin"]),
    ]  # fmt: skip
    protocols = ["http", "grpc"] if args.protocol == "both" else [args.protocol]
    with (data / "ingest.log").open("wb") as log:
        receiver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(ports["admin"], receiver)
            for protocol in protocols:
                rate = args.rate or (8000 if protocol == "http" else 4000)
                run = argparse.Namespace(**{**vars(args), "rate": rate})
                stats = uvloop.run(generate(protocol, ports[protocol], tokens, run))
                answered = stats.accepted + stats.rejected + stats.failed
                print(
                    f"{protocol:>4}: {rate:,.0f}/s offered, {answered / stats.elapsed:,.0f}/s "
                    f"answered ({stats.failed:,} failed) by one receiver process; generator "
                    f"{stats.cpu_seconds / stats.sent * 1e6:,.0f} µs CPU per export = "
                    f"{stats.sent / stats.cpu_seconds:,.0f} exports/s on one core",
                    flush=True,
                )
        finally:
            receiver.terminate()
            receiver.wait(30)


if __name__ == "__main__":
    main()
