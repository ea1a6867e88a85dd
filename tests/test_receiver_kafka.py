"""The receiver against a real Kafka broker: snapshots and AuthEvents land on their topics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from bus import KafkaBus, KafkaOptions, Record
from schemas import AuthEvent, AuthReason, EndpointSnapshot, topics
from tests.conftest import RunningReceiver, start_receiver
from tests.support.otel import Protocol, claude_resource, export_logs, export_metrics

pytestmark = pytest.mark.kafka


@pytest.fixture
async def on_kafka(tmp_path: Path, kafka: str) -> AsyncIterator[RunningReceiver]:
    bus = KafkaBus(KafkaOptions(kafka, client_id="test-ingest"))
    running = await start_receiver(tmp_path, bus)
    for _ in range(200):
        if bus.ready():
            break
        await asyncio.sleep(0.1)
    assert bus.ready(), "producer did not connect"
    yield running
    await running.receiver.stop(grace=0)
    await bus.stop()


async def read_key(bootstrap: str, topic: str, key: str, timeout: float = 20) -> list[bytes]:
    """Every value with this key on the topic, reading from the beginning of all partitions."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-{uuid.uuid4()}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: list[bytes] = []
    try:
        async with asyncio.timeout(timeout):
            while not found:
                batches = await consumer.getmany(timeout_ms=500)
                for messages in batches.values():
                    found += [m.value for m in messages if m.key == key.encode()]
        # anything else already fetched for this key comes in the same poll or the next one
        for messages in (await consumer.getmany(timeout_ms=500)).values():
            found += [m.value for m in messages if m.key == key.encode()]
    finally:
        await consumer.stop()
    return found


@pytest.mark.parametrize(("protocol", "signal"), [("grpc", "metrics"), ("http", "logs")])
async def test_snapshot_arrives_on_the_topic_keyed_by_endpoint(
    on_kafka: RunningReceiver, kafka: str, protocol: Protocol, signal: str
) -> None:
    serial = f"C02{uuid.uuid4().hex[:8].upper()}"
    port = on_kafka.grpc_port if protocol == "grpc" else on_kafka.http_port
    export = export_metrics if signal == "metrics" else export_logs
    resource = claude_resource(serial=serial, team="security")
    assert await asyncio.to_thread(export, protocol, port, on_kafka.token, resource, "2.0.7")
    [value] = await read_key(kafka, topics.SNAPSHOTS, f"acme/{serial}")
    snapshot = EndpointSnapshot.from_json(value)
    assert (snapshot.serial_number, snapshot.app_version, snapshot.team_id) == (
        serial,
        "2.0.7",
        "security",
    )
    assert snapshot.signal.value == signal


async def test_retired_token_yields_an_auth_event_on_kafka(
    on_kafka: RunningReceiver, kafka: str
) -> None:
    serial = f"C02{uuid.uuid4().hex[:8].upper()}"
    on_kafka.store.rotate("acme", timedelta(0), timedelta(days=1))
    ok = await asyncio.to_thread(
        export_metrics, "grpc", on_kafka.grpc_port, on_kafka.token, claude_resource(serial=serial)
    )
    assert not ok
    await on_kafka.receiver.service.drain()
    [value] = await read_key(kafka, topics.AUTH_EVENTS, f"acme/{serial}")
    event = AuthEvent.from_json(value)
    assert (event.reason, event.tenant_id) == (AuthReason.RETIRED, "acme")


async def test_records_land_in_the_partition_the_processors_compute(kafka: str) -> None:
    """The processors send re-evaluation requests to the partition holding an endpoint's
    state; that only works if ingest partitions keys as they do (Kafka's murmur2)."""
    bus = KafkaBus(KafkaOptions(kafka, client_id="test-partitions"))
    await bus.start()
    await bus.wait_ready(20)  # connected, topics made
    run = uuid.uuid4().hex[:8]
    keys = {f"acme/partitioned-{run}-{n}" for n in range(48)}
    try:
        await bus.publish([Record(topics.SNAPSHOTS, key, b"{}") for key in sorted(keys)])
    finally:
        await bus.stop()
    consumer = AIOKafkaConsumer(
        topics.SNAPSHOTS, bootstrap_servers=kafka, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    landed: dict[str, int] = {}
    try:
        async with asyncio.timeout(20):
            while len(landed) < len(keys):
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    for message in messages:
                        if message.key.decode() in keys:
                            landed[message.key.decode()] = message.partition
        every = sorted(consumer.partitions_for_topic(topics.SNAPSHOTS))
    finally:
        await consumer.stop()
    murmur2 = DefaultPartitioner()
    assert landed == {key: murmur2(key.encode(), every, every) for key in keys}
    assert len(set(landed.values())) > 1
