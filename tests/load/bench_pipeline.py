"""`make bench-pipeline`: the detectors and the store under a fleet's worth of snapshots.

Prints, one worker each: snapshots/s through the embedded pipeline (JSON decode → detectors →
ClickHouse, durably written; every snapshot written, and with unchanged re-exports coalesced),
detector state per endpoint at 100k endpoints, telemetry → flag-in-ClickHouse latency through
a real `driftline run` (an export is answered only once its snapshot and flags are stored, so
the answer time is that latency) at the target rate and at three quarters of it, the Faust
worker draining a backlog, and telemetry → flag-in-ClickHouse latency through the Kafka
deployment (ingest, two Faust workers, the sink, a broker of its own) sustained for 30 s at the
target rate, three quarters and half of it, with the CPU each process used per snapshot.

``--only faust-drain`` (``make bench-faust``) runs the Faust drain alone, ``--runs`` times,
with the worker's CPU per snapshot; ``--profile FILE`` samples the worker with py-spy.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka.structs import TopicPartition

import store
from bus import MemoryBus, Record, kafka_local
from driftline.embedded import Pipeline
from ingest.tokens import TokenStore
from processors.engine import DriftEngine
from schemas import EndpointSnapshot, Signal, topics
from schemas.policy import TenantPolicy, ToolPolicy
from tests.load.bench_ingest import (
    _peak_rss_mib,
    cpu_seconds,
    generator_for,
    run_load,
    write_payloads,
)
from tests.load.fleet import Laptop, fleet
from tests.support.processes import free_port, wait_ready

POLICY = TenantPolicy(
    tenant="bench", version=1, tools={"claude-code": ToolPolicy(minimum_version="2.0.10")}
)


def snapshot(laptop: Laptop, at: datetime) -> EndpointSnapshot:
    attributes = {
        "service.name": "claude-code",
        "service.version": laptop.version,
        "os.type": "darwin",
        "host.arch": "arm64",
        "device.serial_number": laptop.serial,
    }
    if laptop.team:
        attributes["team.id"] = laptop.team
    return EndpointSnapshot(
        tenant_id="bench", endpoint_id=f"bench/{laptop.serial}", serial_number=laptop.serial,
        service_name="claude-code", app_version=laptop.version, team_id=laptop.team,
        resource_attributes=attributes, signal=Signal.METRICS, observed_at=at, received_at=at,
    )  # fmt: skip


async def embedded_throughput(
    count: int, endpoints: int, concurrency: int, resolution: float = 0.0
) -> tuple[float, int]:
    """Snapshots/s through one embedded worker's pipeline, as concurrent requests drive it,
    and how many rows it wrote. ``resolution`` is `last_seen_resolution`: 0 writes every
    snapshot (the worst case), the default skips unchanged re-exports."""
    laptops = fleet(endpoints)
    start = datetime.now(UTC)
    records = [
        Record(topics.SNAPSHOTS, f"bench/{laptop.serial}", snapshot(laptop, when).to_json())
        for i in range(count)
        for laptop, when in [(laptops[i % endpoints], start + timedelta(milliseconds=i))]
    ]
    with tempfile.TemporaryDirectory() as data:
        client = store.connect(f"chdb://{data}")
        store.migrate(client)
        engine = DriftEngine()
        engine.set_policy(POLICY, start)
        writer = store.BatchWriter(client, max_delay=0.02)
        pipeline = Pipeline(engine, writer, MemoryBus(keep=1), store.Heartbeats(resolution))
        queue = iter(records)

        async def feeder() -> None:
            for record in queue:
                await pipeline.on_record(record)

        began = time.perf_counter()
        await asyncio.gather(*(feeder() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        await writer.close()
        client.close()
    return count / elapsed, writer.rows_written


def state_bytes_per_endpoint(endpoints: int) -> float:
    laptops = fleet(endpoints)
    at = datetime.now(UTC)
    snapshots = [snapshot(laptop, at) for laptop in laptops]
    engine = DriftEngine()
    engine.set_policy(POLICY, at)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for item in snapshots:
        engine.on_event(item)
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / endpoints


def embedded_latency(rate: float, seconds: float) -> dict[str, float]:
    data = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    _, token = TokenStore(data / "tokens.db").create("bench")
    from driftline.policies import PolicyDirectory

    PolicyDirectory(data / "policies").put(POLICY.model_copy(update={"version": 0}))
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    command = [
        sys.executable, "-m", "driftline.cli", "run", "--data", str(data),
        "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
        "--admin-port", str(ports["admin"]),
    ]  # fmt: skip
    payloads = data / "exports.bin"
    write_payloads(payloads, 20_000)
    with (data / "run.log").open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_ready(ports["admin"], process)
            result = run_load(
                generator_for("http"), payloads, "http", ports["http"], token, seconds,
                rate=rate, concurrency=1024,  # the HTTP connection pool
            )  # fmt: skip
            rss = _peak_rss_mib(process.pid)
        finally:
            process.terminate()
            stopped = _stopped(process)
    return {
        "rate": result["rate"],
        "failed": result["failed"],
        "p50": result["p50_ms"],
        "p99": result["p99_ms"],
        "rss": rss,
        "stopped": stopped,
    }


def _stopped(process: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    """Whether a process sent SIGTERM exits within ``timeout`` (else it is killed). One that
    does not is reported with the figures rather than losing the rest of the run."""
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


@contextmanager
def fresh_broker(data: Path) -> Iterator[str]:
    """A broker of our own with empty topics, stopped afterwards: an idle broker full of test
    topics costs a third of a core, which would skew every figure measured after it."""
    broker_dir = data / "kafka"
    bootstrap = kafka_local.up(port=free_port(), data_dir=broker_dir)
    try:
        yield bootstrap
    finally:
        kafka_local.down(broker_dir)


def kafka_latency(rate: float, seconds: float, workers: int = 2) -> dict[str, Any]:
    """Telemetry → flag in ClickHouse through the Kafka deployment, all of it on this machine.

    A fresh broker (empty topics), `driftline ingest --bus kafka`, ``workers`` Faust workers
    (one per core: a worker is one thread, and one alone, sharing its core with everything else,
    fell behind at 2,000/s in some runs and never caught up) and the sink; the load generator
    sends one export per laptop at ``rate``. Latency per flag is its ClickHouse insert time
    (``drift_flags.recorded_at``) minus the receipt of the export that raised it
    (``endpoint_states.last_received``): both server clocks of this machine. Also the CPU each
    process used per snapshot, from the load's start until the last flag is stored: what sizing
    a deployment needs, and why one machine runs out.
    """
    data = Path(tempfile.mkdtemp(prefix="driftline-bench-kafka-"))
    with fresh_broker(data) as bootstrap:
        broker = kafka_local.status(data / "kafka").pid
        assert broker is not None
        return _kafka_latency(data, bootstrap, broker, rate, seconds, workers)


def _kafka_latency(
    data: Path, bootstrap: str, broker: int, rate: float, seconds: float, workers: int
) -> dict[str, Any]:
    _, token = TokenStore(data / "tokens.db").create("bench")
    policy = data / "policy.json"
    policy.write_text(POLICY.model_copy(update={"version": 0}).to_json().decode())
    cli = [sys.executable, "-m", "driftline.cli"]
    kafka = ["--bus", "kafka", "--bootstrap", bootstrap]
    subprocess.run([*cli, "policy", "set", str(policy), "--data", str(data), *kafka], check=True)
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    payloads = data / "exports.bin"
    write_payloads(payloads, int(rate * (seconds + 2)))  # every export a laptop's first
    dsn = f"chdb://{data / 'clickhouse'}"
    processes: list[subprocess.Popen[bytes]] = []
    with (data / "run.log").open("wb") as log:

        def start(*args: str) -> subprocess.Popen[bytes]:
            process = subprocess.Popen([*cli, *args], stdout=log, stderr=subprocess.STDOUT)
            processes.append(process)
            return process

        try:
            ingest = start(
                "ingest", "--data", str(data), *kafka, "--workers", "1",
                "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
                "--admin-port", str(ports["admin"]),
            )  # fmt: skip
            worker_pids = [
                start("processors", "worker", "--data", str(data / f"worker-{n}"),
                      "--bootstrap", bootstrap).pid
                for n in range(workers)
            ]  # fmt: skip
            sink = start("sink", "--data", str(data), "--bootstrap", bootstrap, "--clickhouse", dsn)
            wait_ready(ports["admin"], ingest)
            generator = generator_for("http")
            time.sleep(10)  # the workers join their group and the sink subscribes
            pids = {
                "receiver": [ingest.pid],
                "workers" if workers > 1 else "worker": worker_pids,
                "sink": [sink.pid],
                "broker": [broker],
            }
            cpu = {name: -sum(map(cpu_seconds, group)) for name, group in pids.items()}
            children = resource.getrusage(resource.RUSAGE_CHILDREN)
            result = run_load(
                generator, payloads, "http", ports["http"], token, seconds,
                rate=rate, concurrency=1024,  # the HTTP connection pool
            )  # fmt: skip
            generated = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu["load generator"] = (
                generated.ru_utime + generated.ru_stime - children.ru_utime - children.ru_stime
            )
            time.sleep(8)  # the last flags through the worker and the sink's batch
            for name, group in pids.items():
                cpu[name] += sum(map(cpu_seconds, group))
            hops = asyncio.run(_kafka_hops(bootstrap))
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                _stopped(process)
    assert sink.returncode is not None
    client = store.connect(dsn)
    try:
        ((snapshots,),) = client.query(
            "SELECT uniqExact(endpoint_id) FROM endpoint_states"
        ).result_rows
        (row,) = client.query(
            "SELECT count(), quantile(0.5)(ms), quantile(0.99)(ms) FROM ("
            "SELECT dateDiff('millisecond', e.received, f.recorded_at) AS ms FROM "
            "(SELECT endpoint_id, recorded_at FROM drift_flags FINAL WHERE state = 'raised') AS f "
            "JOIN (SELECT endpoint_id, max(last_received) AS received FROM endpoint_states "
            "GROUP BY endpoint_id) AS e ON e.endpoint_id = f.endpoint_id)"
        ).result_rows
    finally:
        client.close()
    per_snapshot = {name: seconds * 1000 / max(int(snapshots), 1) for name, seconds in cpu.items()}
    return {
        "rate": result["rate"],
        "flags": row[0],
        "p50": row[1],
        "p99": row[2],
        **hops,
        "cpu_ms": per_snapshot,  # CPU milliseconds per snapshot, per process
    }


async def _kafka_hops(bootstrap: str) -> dict[str, float]:
    """Median ms from a snapshot's append to the log to its flag's (Kafka log timestamps)."""
    from aiokafka import AIOKafkaConsumer

    appended: dict[str, dict[bytes, int]] = {topics.SNAPSHOTS: {}, topics.FLAGS: {}}
    consumer = AIOKafkaConsumer(
        *appended, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=2000, max_records=10_000)
            if not batches:
                break
            for messages in batches.values():
                for message in messages:
                    appended[message.topic].setdefault(message.key, message.timestamp)
    finally:
        await consumer.stop()
    snapshots, flags = appended[topics.SNAPSHOTS], appended[topics.FLAGS]
    gaps = sorted(flags[key] - snapshots[key] for key in flags if key in snapshots)
    return {"processor_p50": gaps[len(gaps) // 2] if gaps else float("nan")}


async def faust_throughput(
    count: int, endpoints: int, partitions: int = 12, profile: Path | None = None
) -> dict[str, float]:
    """Snapshots/s of one Faust worker draining a pre-produced backlog from the real broker,
    and the worker's CPU milliseconds per snapshot (the figure that holds on a shared machine).

    Both are measured from the worker's first committed offset to the last, so start-up and
    the group join are not counted. With ``profile``, py-spy samples the worker meanwhile and
    writes a speedscope profile there (which slows the worker a little).
    """

    data = Path(tempfile.mkdtemp(prefix="driftline-bench-"))
    with fresh_broker(data) as bootstrap:
        return await _faust_throughput(data, bootstrap, count, endpoints, partitions, profile)


async def _faust_throughput(
    data: Path,
    bootstrap: str,
    count: int,
    endpoints: int,
    partitions: int,
    profile: Path | None,
) -> dict[str, float]:
    import uuid

    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    from processors.topology import TopicNames, ensure_topics

    prefix = f"bench{uuid.uuid4().hex[:6]}."
    names = TopicNames.with_prefix(prefix)
    await ensure_topics(bootstrap, names, partitions)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5,
        max_batch_size=256 * 1024, compression_type="lz4",
    )  # fmt: skip
    await producer.start()
    await producer.send_and_wait(names.policy, POLICY.to_json(), key=b"bench")
    laptops = fleet(endpoints)
    start = datetime.now(UTC)
    for i in range(count):
        item = snapshot(laptops[i % endpoints], start + timedelta(milliseconds=i))
        await producer.send(names.snapshots, item.to_json(), key=item.endpoint_id.encode())
    await producer.flush()
    await producer.stop()
    group = f"bench-{prefix}"
    with (data / "worker.log").open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "tests.support.faust_worker", "--bootstrap", bootstrap,
             "--app-id", group, "--prefix", prefix, "--data", str(data),
             "--partitions", str(partitions)],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        spy = None
        if profile is not None:
            spy = subprocess.Popen(
                [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(worker.pid),
                 "--rate", "250", "--format", "speedscope", "--output", str(profile)],
                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
            )  # fmt: skip
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            first: tuple[float, int, float] | None = None
            deadline = time.monotonic() + 600
            while time.monotonic() < deadline:
                await asyncio.sleep(0.25)
                try:
                    offsets = await admin.list_consumer_group_offsets(group)
                except KafkaError:  # a fresh broker: the offsets topic is still being made
                    continue
                done = sum(m.offset for tp, m in offsets.items() if tp.topic == names.snapshots)
                if done and first is None:
                    first = (time.monotonic(), done, cpu_seconds(worker.pid))
                if done >= count:
                    break
            else:
                raise RuntimeError("the worker did not drain the backlog in time")
            assert first is not None
            drained = count - first[1]
            cpu = cpu_seconds(worker.pid) - first[2]
            rate = drained / max(time.monotonic() - first[0], 1e-6)
            # what the worker wrote for those offsets (flushed before it committed them):
            # a worker that skipped its work would be fast too
            written = await _record_counts(
                bootstrap, [names.flags, f"{group}-endpoint-state-changelog"]
            )
            return {
                "rate": rate,
                "cpu_ms": cpu * 1000 / max(drained, 1),
                "flags": written[names.flags],
                "states": written[f"{group}-endpoint-state-changelog"],
            }
        finally:
            await admin.close()
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
                spy.wait(60)
            worker.terminate()
            worker.wait(30)


async def _record_counts(bootstrap: str, topics_: list[str]) -> dict[str, int]:
    """Records in each topic (end offsets summed over partitions; nothing is deleted here)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, partition)
            for topic in topics_
            for partition in consumer.partitions_for_topic(topic)
            or await _partitions(consumer, topic)
        ]
        ends = await consumer.end_offsets(tps)
        return {
            topic: sum(end for tp, end in ends.items() if tp.topic == topic) for topic in topics_
        }
    finally:
        await consumer.stop()


async def _partitions(consumer: Any, topic: str) -> set[int]:
    await consumer._client.force_metadata_update()  # aiokafka learns topics lazily
    return set(consumer.partitions_for_topic(topic) or ())


def faust_drain(count: int, profile: Path | None) -> None:
    result = asyncio.run(faust_throughput(count, 2_000, profile=profile))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    print(
        f"  Faust worker (Kafka): {result['rate']:,.0f} snapshots/s draining {count:,} "
        f"snapshots over 2,000 endpoints, worker CPU {result['cpu_ms']:.3f} ms per snapshot "
        f"(load average {load}); it wrote {result['flags']:,.0f} flags and "
        f"{result['states']:,.0f} state records"
        + (f", profile in {profile}" if profile is not None else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--snapshots", type=int, default=100_000)
    parser.add_argument("--endpoints", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=1024)  # a fleet: ingest allows 4096
    parser.add_argument("--state-endpoints", type=int, default=100_000)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--faust-snapshots", type=int, default=30_000)
    parser.add_argument("--kafka-seconds", type=float, default=30)  # sustained, not a burst
    parser.add_argument("--kafka-workers", type=int, default=2)  # Faust workers: one per core
    parser.add_argument(
        "--only", choices=["faust-drain"], help="run one section alone (to iterate on it)"
    )
    parser.add_argument("--runs", type=int, default=1, help="repetitions of --only's section")
    parser.add_argument(
        "--profile", type=Path, help="py-spy the draining Faust worker into this speedscope file"
    )
    args = parser.parse_args()
    if args.only == "faust-drain":
        print("bench-faust (one Faust worker draining a backlog)")
        for _ in range(args.runs):
            faust_drain(args.faust_snapshots, args.profile)
        return
    print("bench-pipeline (embedded and the Faust drain: one worker each)")
    for resolution, what in ((0.0, "every snapshot written"), (60.0, "re-exports coalesced")):
        throughput, rows = asyncio.run(
            embedded_throughput(args.snapshots, args.endpoints, args.concurrency, resolution)
        )
        print(
            f"  embedded, {what}: {throughput:,.0f} snapshots/s ({args.snapshots:,} snapshots "
            f"over {args.endpoints:,} endpoints, {rows:,} rows durable in chDB, "
            f"{args.concurrency} concurrent)"
        )
    per_endpoint = state_bytes_per_endpoint(args.state_endpoints)
    print(f"  state: {per_endpoint:,.0f} bytes per endpoint at {args.state_endpoints:,} endpoints")
    for rate in (args.rate, args.rate * 0.75):
        latency = embedded_latency(rate, args.seconds)
        print(
            f"  embedded telemetry → flag in ClickHouse, {rate:,.0f} exports/s offered over "
            f"OTLP/HTTP: {latency['rate']:,.0f}/s answered, p50 {latency['p50']:.1f} ms, "
            f"p99 {latency['p99']:.1f} ms, {latency['failed']:.0f} failed, "
            f"peak RSS {latency['rss']:.0f} MiB"
            + ("" if latency["stopped"] else " (DID NOT STOP within 60 s of SIGTERM: killed)")
        )
    faust_drain(args.faust_snapshots, args.profile)
    for rate in (args.rate, args.rate * 0.75, args.rate / 2):
        through_kafka = kafka_latency(rate, args.kafka_seconds, args.kafka_workers)
        cpu: dict[str, float] = through_kafka["cpu_ms"]
        total = sum(cpu.values())
        print(
            f"  Kafka telemetry → flag in ClickHouse, {rate:,.0f} exports/s offered for "
            f"{args.kafka_seconds:.0f} s (ingest, {args.kafka_workers} Faust workers, sink, "
            f"broker and load on these cores): {through_kafka['rate']:,.0f}/s answered, "
            f"p50 {through_kafka['p50']:,.0f} ms, p99 {through_kafka['p99']:,.0f} ms over "
            f"{through_kafka['flags']:,.0f} flags "
            f"(snapshot → flag in Kafka p50 {through_kafka['processor_p50']:,.0f} ms)\n"
            f"    CPU per snapshot: "
            + ", ".join(f"{name} {ms:.2f} ms" for name, ms in cpu.items())
            + f"; {total:.2f} ms in all, {total * rate / 1000:.2f} cores at this rate"
        )


if __name__ == "__main__":
    main()
