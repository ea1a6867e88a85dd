"""The Kafka → ClickHouse sink against the real broker and chdb.

Each test has its own topic prefix and consumer group, and its own chdb path (closed at the end:
one chdb path per process at a time).
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.structs import TopicPartition

from processors.topology import TopicNames, ensure_topics
from schemas import AuthEvent, AuthReason, DriftFlag, EndpointSnapshot, FlagKind, FlagState, Signal
from store import Client, connect, migrate
from store.sink import Sink, SinkOptions, run_sink

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[1]

Message = EndpointSnapshot | AuthEvent | DriftFlag
NOW = datetime.now(UTC).replace(microsecond=0)  # rows older than a table's TTL vanish


def snapshot(tenant: str, n: int, version: str = "2.0.1") -> EndpointSnapshot:
    return EndpointSnapshot(
        tenant_id=tenant,
        endpoint_id=f"{tenant}/SN{n}",
        serial_number=f"SN{n}",
        service_name="claude-code",
        app_version=version,
        team_id="eng",
        resource_attributes={"host.name": f"mac{n}"},
        signal=Signal.METRICS,
        observed_at=NOW + timedelta(seconds=n),
        received_at=NOW + timedelta(seconds=n, milliseconds=5),
    )


def auth_event(tenant: str, n: int) -> AuthEvent:
    return AuthEvent(
        tenant_id=tenant,
        endpoint_id=f"{tenant}/SN{n}",
        identity=f"SN{n}",
        token_id="tok1",
        reason=AuthReason.RETIRED,
        source="10.0.0.1",
        observed_at=NOW + timedelta(seconds=n),
    )


def flag(tenant: str, n: int, state: FlagState = FlagState.RAISED) -> DriftFlag:
    return DriftFlag(
        flag_id=f"{tenant}-f{n}",
        tenant_id=tenant,
        endpoint_id=f"{tenant}/SN{n}",
        kind=FlagKind.OUTDATED_CLIENT,
        state=state,
        detail="2.0.1 < minimum 2.0.5 for claude-code",
        first_seen=NOW + timedelta(seconds=n),
        last_seen=NOW + timedelta(seconds=n),
        policy_version=1,
    )


class Topics:
    """A test's own topic set, with a producer for it."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = f"t{uuid.uuid4().hex[:10]}."
        self.names = TopicNames.with_prefix(self.prefix)
        self.producer: Any = None

    async def send(self, topic: str, key: str, value: bytes | None) -> None:
        await self.producer.send_and_wait(topic, value, key=key.encode())

    async def send_messages(
        self, messages: Sequence[EndpointSnapshot | AuthEvent | DriftFlag]
    ) -> None:
        for message in messages:
            topic = {
                EndpointSnapshot: self.names.snapshots,
                AuthEvent: self.names.auth_events,
                DriftFlag: self.names.flags,
            }[type(message)]
            await self.producer.send(
                topic, message.to_json(), key=str(message.endpoint_id).encode()
            )
        await self.producer.flush()

    def options(self, **overrides: Any) -> SinkOptions:
        settings: dict[str, Any] = {
            "group_id": f"sink-{self.prefix}",
            "topic_prefix": self.prefix,
            "commit_interval": 0.3,
            "max_delay": 0.1,
        }
        settings.update(overrides)
        return SinkOptions(**settings)


@pytest.fixture
async def kafka_topics(kafka: str) -> AsyncIterator[Topics]:
    own = Topics(kafka)
    await ensure_topics(kafka, own.names, partitions=3)
    own.producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await own.producer.start()
    yield own
    await own.producer.stop()


@pytest.fixture
def dsn(tmp_path: Path) -> str:
    return f"chdb://{tmp_path}/clickhouse"


@pytest.fixture
def store(dsn: str) -> Iterator[Client]:
    client = connect(dsn)
    migrate(client)
    yield client
    client.close()


@asynccontextmanager
async def running(sink: Sink) -> AsyncIterator[Sink]:
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        yield sink
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def eventually(
    condition: Callable[[], bool], within: float = 30.0, state: Callable[[], object] = str
) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met in time ({state()})")
        await asyncio.sleep(0.1)


def count(client: Client, table: str, tenant: str, final: bool = False) -> int:
    """Rows of a tenant; ``final`` collapses duplicates."""
    sql = (
        "SELECT count() FROM {table:Identifier}"
        + (" FINAL" if final else "")
        + " WHERE tenant_id = {tenant:String}"
    )
    return int(client.query(sql, parameters={"table": table, "tenant": tenant}).result_rows[0][0])


def counts(client: Client, tenant: str, final: bool = False) -> dict[str, int]:
    tables = ("endpoint_states", "auth_events", "drift_flags")
    return {table: count(client, table, tenant, final) for table in tables}


async def committed(bootstrap: str, group: str) -> dict[TopicPartition, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group)
        return {tp: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
    finally:
        await admin.close()


# ------------------------------------------------------------------------------------- tests


async def test_each_topic_lands_in_its_table(kafka_topics: Topics, dsn: str, kafka: str) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await kafka_topics.send_messages(
        [snapshot(tenant, n) for n in range(4)]
        + [auth_event(tenant, n) for n in range(3)]
        + [flag(tenant, n) for n in range(2)]
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_sink(kafka, dsn, stop=stop, options=kafka_topics.options()))
    client = connect(dsn)  # same chdb path as the sink's own client: allowed in one process
    try:
        expected = {"endpoint_states": 4, "auth_events": 3, "drift_flags": 2}
        await eventually(lambda: _migrated(client) and counts(client, tenant) == expected)
        rows = client.query(
            "SELECT endpoint_id, app_version FROM endpoints_latest WHERE tenant_id = {t:String}"
            " ORDER BY endpoint_id",
            parameters={"t": tenant},
        ).result_rows
        assert rows == [(f"{tenant}/SN{n}", "2.0.1") for n in range(4)]
        drift = client.query(
            "SELECT flag_id FROM drift_current WHERE tenant_id = {t:String} ORDER BY flag_id",
            parameters={"t": tenant},
        ).result_rows
        assert drift == [(f"{tenant}-f0",), (f"{tenant}-f1",)]
    finally:
        stop.set()
        stats = await asyncio.wait_for(task, 30)
        client.close()
    assert (stats.consumed, stats.skipped) == (9, 0)
    group = kafka_topics.options().group_id
    assert sum((await committed(kafka, group)).values()) == 9  # everything written is committed


def _migrated(client: Client) -> bool:
    names = {row[0] for row in client.query("SHOW TABLES").result_rows}
    return "drift_flags" in names


async def test_poison_messages_are_skipped_and_counted(
    kafka_topics: Topics, store: Client, kafka: str
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    names = kafka_topics.names
    await kafka_topics.send_messages([snapshot(tenant, 1)])
    await kafka_topics.send(names.snapshots, f"{tenant}/SN2", b"\xff\xfe not json")
    await kafka_topics.send(names.auth_events, f"{tenant}/SN3", b'{"tenant_id": "x"}')
    await kafka_topics.send(names.flags, f"{tenant}/SN4", b"[1, 2, 3]")
    await kafka_topics.send(names.flags, f"{tenant}/SN5", None)  # a tombstone
    await kafka_topics.send_messages([snapshot(tenant, 6), auth_event(tenant, 7), flag(tenant, 8)])

    sink = Sink(kafka, store, kafka_topics.options())
    async with running(sink):
        await eventually(lambda: sink.stats.consumed == 8)
        await eventually(
            lambda: (
                counts(store, tenant) == {"endpoint_states": 2, "auth_events": 1, "drift_flags": 1}
            )
        )
    assert sink.stats.skipped == 4
    assert sum((await committed(kafka, sink.options.group_id)).values()) == 8


async def test_restart_does_not_duplicate_rows(
    kafka_topics: Topics, store: Client, kafka: str
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    first: list[Message] = [snapshot(tenant, n) for n in range(5)]
    first += [auth_event(tenant, n) for n in range(5)] + [flag(tenant, n) for n in range(5)]
    second: list[Message] = [snapshot(tenant, n, "2.0.9") for n in range(5)]
    second += [auth_event(tenant, 10)] + [flag(tenant, n, FlagState.RESOLVED) for n in range(5)]
    options = kafka_topics.options()

    await kafka_topics.send_messages(first)
    sink = Sink(kafka, store, options)
    async with running(sink):
        await eventually(lambda: counts(store, tenant) == dict.fromkeys(counts(store, tenant), 5))

    # a clean restart continues after the committed offsets: exactly the new rows arrive
    await kafka_topics.send_messages(second)
    sink = Sink(kafka, store, options)
    async with running(sink):
        await eventually(lambda: sink.stats.consumed == len(second), state=lambda: sink.stats)
        await eventually(lambda: count(store, "drift_flags", tenant) == 10)
    assert sink.stats.consumed == len(second)
    expected = {"endpoint_states": 10, "auth_events": 6, "drift_flags": 10}
    assert counts(store, tenant) == expected
    assert counts(store, tenant, final=True) == expected

    # a crash before any commit re-delivers everything: every table collapses under FINAL
    await _rewind(kafka, options.group_id, kafka_topics.names)
    sink = Sink(kafka, store, options)
    async with running(sink):
        await eventually(
            lambda: sink.stats.consumed == len(first) + len(second), state=lambda: sink.stats
        )
        await eventually(lambda: count(store, "auth_events", tenant) == 12)
    assert counts(store, tenant, final=True) == expected


async def _rewind(bootstrap: str, group: str, names: TopicNames) -> None:
    """What a sink that crashed before its first commit leaves: offsets at the beginning."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(topic, partition)
            for topic in (names.snapshots, names.auth_events, names.flags)
            for partition in range(3)
        ]
        consumer.assign(tps)
        await consumer.commit(dict.fromkeys(tps, 0))  # the group is empty: a plain commit
    finally:
        await consumer.stop()


class FlakyStore:
    """A client whose inserts fail while ``down``: a ClickHouse outage, as the writer sees it."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.down = True
        self.refused = 0

    def insert(self, *args: Any, **kwargs: Any) -> Any:
        if self.down:
            self.refused += 1
            raise ConnectionError("clickhouse is down")
        return self.client.insert(*args, **kwargs)

    def close(self) -> None:
        return None  # the test owns the real client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


async def test_store_outage_holds_commits_until_rows_are_written(
    kafka_topics: Topics, store: Client, kafka: str
) -> None:
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    flaky = FlakyStore(store)
    sink = Sink(kafka, lambda: flaky, kafka_topics.options())  # type: ignore[arg-type,return-value]
    sink.writer.backoff_initial = sink.writer.backoff_max = 0.1
    await kafka_topics.send_messages([flag(tenant, n) for n in range(3)])
    async with running(sink):
        await eventually(lambda: flaky.refused >= 3)
        assert await committed(kafka, sink.options.group_id) == {}
        assert count(store, "drift_flags", tenant) == 0
        flaky.down = False
        await eventually(lambda: count(store, "drift_flags", tenant) == 3)
        await eventually(lambda: sink.stats.commits > 0)
    assert sum((await committed(kafka, sink.options.group_id)).values()) == 3
    assert sink.writer.retries >= 3


async def test_serve_stops_cleanly_on_sigterm(kafka_topics: Topics, dsn: str, kafka: str) -> None:
    """The CLI entry point: its own process owns the chdb path; SIGTERM writes and commits."""
    tenant = f"t-{uuid.uuid4().hex[:8]}"
    await kafka_topics.send_messages([snapshot(tenant, 1), auth_event(tenant, 2), flag(tenant, 3)])
    options = kafka_topics.options()
    code = (
        "import logging, sys; from store.sink import serve, SinkOptions;"
        "logging.basicConfig(level=logging.INFO);"
        f"serve({kafka!r}, {dsn!r}, SinkOptions(group_id={options.group_id!r},"
        f" topic_prefix={options.topic_prefix!r}))"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO)
    try:
        deadline = time.monotonic() + 60
        while sum((await committed(kafka, options.group_id)).values()) < 3:
            assert time.monotonic() < deadline, "sink did not commit"
            await asyncio.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
    client = connect(dsn)
    try:
        assert counts(client, tenant) == {"endpoint_states": 1, "auth_events": 1, "drift_flags": 1}
    finally:
        client.close()
