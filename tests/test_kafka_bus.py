"""KafkaBus batches records per partition itself: what a publisher is promised still holds
against a real broker (acknowledged before it returns, every record once, order per key)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from bus import KafkaBus, KafkaOptions, Record, batching
from schemas import topics


async def _started(options: KafkaOptions) -> KafkaBus:
    bus = KafkaBus(options)
    await bus.start()
    await bus.wait_ready(20)
    return bus


async def _landed(kafka: str, prefix: str, count: int) -> list[tuple[str, bytes]]:
    """(key, value) of the snapshots topic's records whose key starts with ``prefix``, in
    offset order per partition, once ``count`` of them have been read."""
    consumer = AIOKafkaConsumer(
        topics.SNAPSHOTS, bootstrap_servers=kafka, group_id=None, auto_offset_reset="earliest"
    )
    await consumer.start()
    found: list[tuple[str, bytes]] = []

    async def read_more() -> None:
        for messages in (await consumer.getmany(timeout_ms=500)).values():
            found.extend(
                (m.key.decode(), m.value) for m in messages if m.key.decode().startswith(prefix)
            )

    try:
        async with asyncio.timeout(30):
            while len(found) < count:
                await read_more()
        await asyncio.sleep(0.5)  # anything beyond ``count`` (a duplicate) shows up too
        await read_more()
    finally:
        await consumer.stop()
    return found


@pytest.mark.kafka
async def test_concurrent_publishes_return_acknowledged_and_land_once(kafka: str) -> None:
    bus = await _started(KafkaOptions(kafka, client_id="test-bus-many"))
    prefix = f"acme/many-{uuid.uuid4().hex[:8]}-"
    try:
        await asyncio.gather(
            *(bus.publish([Record(topics.SNAPSHOTS, f"{prefix}{n}", b"{}")]) for n in range(300)),
            bus.publish([Record(topics.SNAPSHOTS, f"{prefix}x{n}", b"{}") for n in range(40)]),
        )
    finally:
        await bus.stop()
    keys = [key for key, _ in await _landed(kafka, prefix, 340)]
    assert sorted(keys) == sorted(
        [f"{prefix}{n}" for n in range(300)] + [f"{prefix}x{n}" for n in range(40)]
    )


@pytest.mark.kafka
async def test_records_past_full_batches_keep_their_order(kafka: str) -> None:
    """Small batches: one publish of 60 records of 2 KB for one key spans several batches,
    and a second publish follows; the topic holds them in the order they were given."""
    bus = await _started(KafkaOptions(kafka, client_id="test-bus-order", max_batch_size=16 * 1024))
    key = f"acme/ordered-{uuid.uuid4().hex[:8]}"
    values = [f"{n:04d}".encode() + b"." * 2048 for n in range(80)]
    try:
        await bus.publish([Record(topics.SNAPSHOTS, key, value) for value in values[:60]])
        await bus.publish([Record(topics.SNAPSHOTS, key, value) for value in values[60:]])
    finally:
        await bus.stop()
    assert [value for _, value in await _landed(kafka, key, 80)] == values


@pytest.mark.kafka
async def test_stopping_sends_what_is_still_lingering(kafka: str) -> None:
    """A publish waiting out a long linger is sent, and acknowledged, when the bus stops."""
    options = KafkaOptions(kafka, client_id="test-bus-stop", linger_ms=30_000, publish_timeout=60)
    bus = await _started(options)
    key = f"acme/lingering-{uuid.uuid4().hex[:8]}"
    publishing = asyncio.create_task(bus.publish([Record(topics.SNAPSHOTS, key, b"late")]))
    await asyncio.sleep(0.2)
    assert not publishing.done()  # still lingering
    started = time.monotonic()
    await bus.stop()
    await publishing  # returned OK: acknowledged, not abandoned
    assert time.monotonic() - started < 10  # not the 30 s linger
    assert await _landed(kafka, key, 1) == [(key, b"late")]


def test_a_keys_partition_is_kafkas_murmur2_and_remembered_within_bounds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(batching, "MAX_PLACED_KEYS", 3)
    placement = batching._Placement({5, 0, 3, 1}, checked=0.0)
    keys = [f"acme/laptop-{n}".encode() for n in range(7)]
    expected = [DefaultPartitioner()(key, [0, 1, 3, 5], [0, 1, 3, 5]) for key in keys]
    assert [placement.partition(key) for key in keys] == expected
    assert len(placement.by_key) <= 3  # forgotten past the bound, never grown
    assert [placement.partition(key) for key in keys] == expected
