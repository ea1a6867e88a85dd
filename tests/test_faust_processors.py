"""The processors: the table codec, then Faust workers (own OS processes) on the real broker.

Workers run as subprocesses (``tests.support.faust_worker``) so one can be killed with SIGKILL.
Topics are shared in the broker, so each group of tests has its own topic prefix and app id,
and each test its own tenants.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from processors import codec
from processors.detectors import apply
from processors.faust_app import Processors, Stale, build
from processors.policies import Policies, ReevaluateRequest, fingerprint
from processors.state import EndpointState, OpenFlag, Sighting, intern_keys
from processors.topology import TopicNames, ensure_topics
from schemas import AuthEvent, AuthReason, DriftFlag, EndpointSnapshot, FlagKind, FlagState, Signal
from schemas.policy import StaleTokenPolicy, TenantPolicy, ToolPolicy
from store import connect, migrate
from store.sink import Sink, SinkOptions

REPO = Path(__file__).resolve().parents[1]
T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
# Flags land in ClickHouse, which drops rows older than the TTL: kill-test times are recent.
NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
POLICY = {"claude-code": ToolPolicy(minimum_version="2.0.5")}


def at(seconds: float, base: datetime = T0) -> datetime:
    return base + timedelta(seconds=seconds)


def snap(
    tenant: str,
    serial: str,
    t: datetime,
    version: str | None = "2.0.9",
    *,
    team: str | None = "eng",
    service: str = "claude-code",
) -> EndpointSnapshot:
    attributes = {"host.name": serial}
    if team is not None:
        attributes["team.id"] = team
    return EndpointSnapshot(
        tenant_id=tenant,
        endpoint_id=f"{tenant}/{serial}",
        serial_number=serial,
        service_name=service,
        app_version=version,
        team_id=team,
        resource_attributes=attributes,
        signal=Signal.METRICS,
        observed_at=t,
        received_at=t,
    )


def rejected(tenant: str, serial: str, t: datetime) -> AuthEvent:
    return AuthEvent(
        tenant_id=tenant,
        endpoint_id=f"{tenant}/{serial}",
        identity=serial,
        token_id="old",
        reason=AuthReason.RETIRED,
        source="10.1.2.3",
        observed_at=t,
    )


# ------------------------------------------------------------------------------------- codec


def full_state() -> EndpointState:
    return EndpointState(
        tenant_id="acme",
        endpoint_id="acme/C02X",
        last_event_at=at(10.123456),
        snapshot_at=at(9),
        service_name="claude-code",
        app_version="2.0.1",
        attributes=intern_keys(["team.id", "host.name", "os.type"]),
        others=(
            Sighting("other-tool", "1.0", intern_keys(["host.name"]), at(8.5)),
            Sighting("ünïcode-tool", None, intern_keys([]), at(-3)),
        ),
        rejections=(at(1), at(2.5), at(3.000001)),
        open_flags=(
            OpenFlag(FlagKind.OUTDATED_CLIENT, "a" * 32, at(5), "2.0.1 < minimum 2.0.5"),
            OpenFlag(FlagKind.STALE_TOKEN, "b" * 32, at(6), 'quotes " and ünïcode ✓'),
        ),
    )


@pytest.mark.parametrize(
    "state",
    [
        full_state(),
        EndpointState(tenant_id="acme", endpoint_id="acme/only-auth", last_event_at=at(0)),
        EndpointState(
            tenant_id="t",
            endpoint_id="t/e",
            last_event_at=at(-1e9),  # before the epoch
            snapshot_at=at(-1e9),
            service_name="",
            app_version=None,
        ),
    ],
    ids=["full", "auth-only", "empty-strings-and-old-times"],
)
def test_state_round_trips_exactly(state: EndpointState) -> None:
    data = codec.encode(state, "f00d")
    assert codec.decode(data) == state
    assert codec.decode_stored(data) == codec.Stored(state, "f00d")
    assert codec.decode_stored(codec.encode(state)).policy == ""


def test_times_keep_microseconds_and_come_back_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    moment = datetime(2026, 3, 1, 14, 0, 0, 999999, tzinfo=plus_two)
    state = EndpointState(tenant_id="a", endpoint_id="a/b", last_event_at=moment)
    decoded = codec.decode(codec.encode(state))
    assert decoded.last_event_at == moment
    assert decoded.last_event_at.tzinfo is UTC
    assert decoded.last_event_at.microsecond == 999999


def test_decoded_states_share_interned_key_sets_and_strings() -> None:
    one = codec.decode(codec.encode(full_state()))
    two = codec.decode(codec.encode(full_state()))
    assert one.attributes is two.attributes
    assert one.attributes is intern_keys(["os.type", "host.name", "team.id"])
    assert one.service_name is two.service_name
    assert one.app_version is two.app_version


def test_encoding_is_compact() -> None:
    """Every table write is a changelog message: much smaller than the obvious JSON."""
    state = full_state()
    data = codec.encode(state, "0123456789abcdef")
    obvious = json.dumps(dataclasses.asdict(state), default=str).encode()
    assert len(data) < 0.7 * len(obvious), (len(data), len(obvious))
    assert b'": ' not in data and b'", "' not in data


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"v": 2, "t": "a", "e": "a/b", "l": 0}',
        b'{"v": 1, "t": "a", "e": "a/b"}',
        b'{"v": 1, "t": "a", "e": "a/b", "l": "0"}',
        b'{"v": 1, "t": "a", "e": "a/b", "l": 0, "f": [["nope", "x", 0, "d"]]}',
        b'{"v": 1, "t": "a", "e": "a/b", "l": 0, "f": [["stale_token", "x"]]}',
        b'{"v": 1, "t": "a", "e": "a/b", "l": 0, "k": [1]}',
        b'{"v": 1, "t": "a", "e": "a/b", "l": 1e300}',
        b'{"v": 1, "t": "a", "e": "a/b", "l": 99999999999999999999999}',
    ],
)
def test_malformed_values_are_one_error(data: bytes) -> None:
    with pytest.raises(codec.CodecError):
        codec.decode_stored(data)


_versions = st.sampled_from(["2.0.1", "2.0.5", "2.0.10", "1.x", None])
_events = st.lists(
    st.tuples(
        st.integers(0, 60),  # seconds: repeats and out-of-order times included
        st.booleans(),  # snapshot or rejected request
        _versions,
        st.sampled_from([None, "eng", " "]),
        st.sampled_from(["claude-code", "other-tool"]),
    ),
    max_size=25,
)


@settings(max_examples=150, deadline=None)
@given(_events)
def test_every_state_the_detectors_make_round_trips(events: list[Any]) -> None:
    policy = TenantPolicy(
        tenant="acme", tools=POLICY, token_rotated_at=T0, stale_token=StaleTokenPolicy(threshold=2)
    )
    state: EndpointState | None = None
    for seconds, is_snapshot, version, team, service in events:
        event = (
            snap("acme", "C02X", at(seconds), version, team=team, service=service)
            if is_snapshot
            else rejected("acme", "C02X", at(seconds))
        )
        state, _ = apply(state, event, policy)
        if state is not None:
            assert codec.decode(codec.encode(state, "p")) == state


def test_policy_updates_report_changes_and_tombstones_restore_the_default() -> None:
    policies = Policies()
    default = policies.get("acme")
    assert default.policy == TenantPolicy.default("acme") and default.at is None
    strict = TenantPolicy(tenant="acme", version=2, tools=POLICY)
    assert policies.update("acme", strict, at(1))
    assert not policies.update("acme", strict, at(2))  # republished as is: no change
    assert policies.get("acme").at == at(1)
    assert policies.get("acme").fingerprint == fingerprint(strict)
    assert policies.update("acme", None, at(3))
    assert policies.get("acme").fingerprint == default.fingerprint


def test_reevaluate_request_round_trips() -> None:
    request = ReevaluateRequest("acme", "acme/C02X", "f00d", at(1.5))
    assert ReevaluateRequest.from_json(request.to_json()) == request


# --------------------------------------------------------------------- offset guard (no Kafka)


class FakeConsumer:
    def __init__(self) -> None:
        self.seeks: list[tuple[Any, int]] = []
        self._read_offset: dict[Any, int | None] = {}

    async def seek_wait(self, offsets: dict[Any, int]) -> None:
        self.seeks += list(offsets.items())

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return dict.fromkeys(tps, self.earliest)

    earliest = 0


class FakeKafkaProducer:
    """aiokafka's producer as ``settle`` and ``_emit`` use it: records what was sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> Any:
        self.sent.append((topic, key, value))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class FakeProducer:
    def __init__(self) -> None:
        self.kafka = FakeKafkaProducer()

    def _ensure_producer(self) -> FakeKafkaProducer:
        return self.kafka


class FakeTable(dict[bytes, bytes]):
    """A table whose local store is itself, with a changelog topic name."""

    @property
    def data(self) -> FakeTable:
        return self

    class changelog_topic:  # Faust's attribute name
        @staticmethod
        def get_topic_name() -> str:
            return "endpoint-state-changelog"


@dataclass
class FakeApp:
    consumer: FakeConsumer = field(default_factory=FakeConsumer)
    consumer_generation_id: int = 3
    rebalancing: bool = False
    producer: FakeProducer = field(default_factory=FakeProducer)


@dataclass
class FakeMessage:
    tp: tuple[str, int]
    offset: int
    generation_id: int = 3
    topic: str = "snapshots"
    partition: int = 0


def guarded(next_offset: int) -> tuple[Processors, FakeApp]:
    app = FakeApp()
    processors = Processors(
        app=app,
        bootstrap="unused",
        names=TopicNames(),
        partitions=1,
        table=FakeTable(),
        flags_topic=None,
        reevaluate_topic=None,
    )
    processors.offsets.reset(3, {("snapshots", 0): next_offset})
    return processors, app


async def test_the_worker_fetches_and_produces_in_batches(tmp_path: Path) -> None:
    """Faust sets no fetch minimum and no linger; without ours the broker answered a fetch and
    a produce per record, and one worker fell seconds behind 2,000 snapshots/s (bench-pipeline).
    Guards the hook into Faust's consumer against an upgrade that bypasses it."""
    processors = build(
        "127.0.0.1:9",
        data_dir=tmp_path,
        fetch_min_bytes=12_345,
        fetch_max_wait=0.3,
        producer_linger=0.02,
    )
    app = processors.app
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    try:
        assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (12_345, 300)
    finally:
        await consumer.stop()
    assert app.conf.producer_linger == 0.02


def test_the_fetch_loop_replaces_the_faust_loop_it_was_copied_from(tmp_path: Path) -> None:
    """``_batching_consumer`` replaces Faust's fetch loop with a copy that skips a race of two
    tasks per record (half the worker's CPU, bench-faust). An upgrade that changes Faust's loop
    must be read again before the copy is trusted, and the hook must still be the one used."""
    import faust.transport.consumer as faust_consumer
    from faust.transport.drivers import aiokafka as aiokafka_driver

    consumer = build("127.0.0.1:9", data_dir=tmp_path).app.consumer
    assert type(consumer)._drain_messages is not aiokafka_driver.Consumer._drain_messages
    faust_loop = inspect.getsource(faust_consumer.Consumer._drain_messages)
    assert hashlib.sha256(faust_loop.encode()).hexdigest()[:16] == "44a2500309e83c63"
    fetcher = inspect.getsource(faust_consumer.Fetcher)
    assert "await consumer._drain_messages(self)" in fetcher


async def test_the_offset_guard_processes_each_offset_once_in_order() -> None:
    processors, app = guarded(10)
    tp = ("snapshots", 0)

    async def admitted(offset: int, generation: int = 3) -> bool:
        message = FakeMessage(tp, offset, generation)
        if await processors._admit(message):
            processors._advance(message)
            return True
        return False

    assert await admitted(10)
    assert not await admitted(10)  # delivered again: already processed
    assert not await admitted(9)
    # Faust dropped 11 and 12: rewind once, however many later offsets still arrive
    assert not await admitted(13)
    assert not await admitted(14)
    assert app.consumer.seeks == [(tp, 11)]
    assert app.consumer._read_offset[tp] == 11
    assert await admitted(11) and await admitted(12) and await admitted(13)
    assert not await admitted(14, generation=2)  # fetched before the rebalance
    assert processors.offsets.next[tp] == 14
    assert not await processors._admit(FakeMessage(("snapshots", 5), 0))  # not ours


async def test_a_partition_rewound_to_zero_accepts_everything_again() -> None:
    processors, app = guarded(0)
    tp = ("snapshots", 0)
    assert not await processors._admit(FakeMessage(tp, 4))
    assert app.consumer.seeks == [(tp, 0)]
    assert app.consumer._read_offset[tp] is None  # Faust drops records below a read offset


async def test_records_expired_before_processing_are_skipped_not_rewound_forever() -> None:
    processors, app = guarded(5)
    tp = ("snapshots", 0)
    app.consumer.earliest = 20  # retention deleted 5..19
    assert await processors._admit(FakeMessage(tp, 20))
    assert app.consumer.seeks == []
    app.consumer.earliest = 21
    assert not await processors._admit(FakeMessage(tp, 30))
    assert app.consumer.seeks == [(tp, 21)]


async def test_a_worker_losing_the_partition_does_not_write_state() -> None:
    processors, app = guarded(0)
    state = EndpointState(tenant_id="acme", endpoint_id="acme/A", last_event_at=T0)
    processors._store(b"acme/A", state, "p", generation=3)
    assert processors._load(b"acme/A") is not None  # later events see it before it settles
    assert list(processors.table) == []  # ... but it waits for its batch's flag acks
    await processors.settle()
    assert list(processors.table) == [b"acme/A"]
    # ... and its changelog record is sent (the new owner of the partition recovers from it)
    assert app.producer.kafka.sent == [
        ("endpoint-state-changelog", b"acme/A", processors.table[b"acme/A"])
    ]
    app.rebalancing = True
    with pytest.raises(Stale):
        processors._store(b"acme/B", state, "p", generation=3)
    app.rebalancing = False
    processors._store(b"acme/C", state, "p", generation=3)
    app.consumer_generation_id = 4  # the partition moved before the batch settled
    with pytest.raises(Stale):
        processors._store(b"acme/D", state, "p", generation=3)
    await processors.settle()
    assert list(processors.table) == [b"acme/A"]  # C was dropped: its new owner replays it
    assert processors._load(b"acme/C") is None
    assert len(app.producer.kafka.sent) == 1  # and no changelog record for it


async def test_a_batch_writes_each_endpoint_once_with_its_latest_state() -> None:
    processors, app = guarded(0)
    for minute in range(3):
        state = EndpointState(
            tenant_id="acme", endpoint_id="acme/A", last_event_at=T0 + timedelta(minutes=minute)
        )
        processors._store(b"acme/A", state, "p", generation=3)
    await processors.settle()
    assert [key for _, key, _ in app.producer.kafka.sent] == [b"acme/A"]
    stored = codec.decode_stored(processors.table[b"acme/A"])
    assert stored.state.last_event_at == T0 + timedelta(minutes=2)
    assert stored.policy == "p"
    assert processors.stats.state_writes == 1


async def test_a_state_replaced_in_the_table_is_read_afresh() -> None:
    """Decoded states are reused only while the table holds the bytes they came from: a
    changelog replay (a takeover, a recovery) writes new bytes, and those win."""
    processors, _ = guarded(0)
    old = EndpointState(tenant_id="acme", endpoint_id="acme/A", last_event_at=T0)
    processors._store(b"acme/A", old, "p", generation=3)
    await processors.settle()
    loaded = processors._load(b"acme/A")
    assert loaded is not None and loaded.state == old
    new = dataclasses.replace(old, last_event_at=T0 + timedelta(hours=1))
    processors.table[b"acme/A"] = codec.encode(new, "q")  # as a changelog replay writes it
    loaded = processors._load(b"acme/A")
    assert loaded == codec.Stored(new, "q")


async def test_offsets_are_committable_only_once_their_batch_settled() -> None:
    processors, _ = guarded(10)
    tp = ("snapshots", 0)
    for offset in (10, 11):
        message = FakeMessage(tp, offset)
        assert await processors._admit(message)
        processors._advance(message)
        processors._batch.messages.append(message)
    assert processors.offsets.next[tp] == 12  # the guard moves on at once
    assert processors.offsets.settled[tp] == 10  # nothing may be committed yet
    await processors.settle()
    assert processors.offsets.settled[tp] == 12


# ----------------------------------------------------------------------------- kafka helpers


@dataclass
class Worker:
    """One ``tests.support.faust_worker`` process and its log."""

    bootstrap: str
    app_id: str
    prefix: str
    directory: Path
    partitions: int
    name: str
    stats_interval: float = 2.0
    recovery_stall: float = 120.0
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def log_path(self) -> Path:
        return self.directory / f"{self.name}-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        self.directory.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.faust_worker",
                    "--bootstrap",
                    self.bootstrap,
                    "--app-id",
                    self.app_id,
                    "--prefix",
                    self.prefix,
                    "--data",
                    str(self.directory / self.name),
                    "--partitions",
                    str(self.partitions),
                    "--stats-interval",
                    str(self.stats_interval),
                    "--recovery-stall",
                    str(self.recovery_stall),
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def active_partitions(self) -> set[int] | None:
        """The partitions of its latest completed assignment (None before the first)."""
        found = re.findall(r"active partitions: ([\d,]+|none)", self.log())
        if not found:
            return None
        return set() if found[-1] == "none" else {int(p) for p in found[-1].split(",")}

    def processed(self) -> int:
        """Snapshots handled so far, as of its latest stats line."""
        found = re.findall(r"'snapshots': (\d+)", self.log())
        return int(found[-1]) if found else 0

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


async def eventually(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class FlagLog:
    """Every flag on a flags topic, read from the beginning in the background."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.flags: list[DriftFlag] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> FlagLog:
        consumer = AIOKafkaConsumer(
            self.topic, bootstrap_servers=self.bootstrap, auto_offset_reset="earliest"
        )
        await consumer.start()
        self._task = asyncio.create_task(self._read(consumer))
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _read(self, consumer: Any) -> None:
        try:
            while True:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    self.flags += [DriftFlag.from_json(record.value) for record in records]
        finally:
            await consumer.stop()

    def of(self, tenant: str) -> list[DriftFlag]:
        return [flag for flag in self.flags if flag.tenant_id == tenant]

    async def wait(self, tenant: str, count: int, within: float = 30.0) -> list[DriftFlag]:
        await eventually(lambda: len(self.of(tenant)) >= count, within, f"{count} flags")
        return self.of(tenant)


def summary(flags: list[DriftFlag]) -> list[tuple[str, str, str]]:
    return [(flag.endpoint_id.split("/")[-1], flag.kind.value, flag.state.value) for flag in flags]


@pytest.fixture
async def producer(kafka: str) -> AsyncIterator[Any]:
    producer = AIOKafkaProducer(bootstrap_servers=kafka, acks="all", enable_idempotence=True)
    await producer.start()
    yield producer
    await producer.stop()


async def publish(producer: Any, topic: str, message: EndpointSnapshot | AuthEvent) -> None:
    key = message.endpoint_id
    assert key is not None
    await producer.send_and_wait(topic, message.to_json(), key=key.encode())


async def publish_policy(producer: Any, names: TopicNames, policy: TenantPolicy) -> datetime:
    """Returns the record's timestamp: the policy's effective time for re-evaluations."""
    sent = await producer.send_and_wait(names.policy, policy.to_json(), key=policy.tenant.encode())
    return datetime.fromtimestamp(sent.timestamp / 1000, UTC)


# --------------------------------------------------------------------------------- one worker


@dataclass
class Deployment:
    names: TopicNames
    worker: Worker


@pytest.fixture(scope="module")
def one_worker(kafka: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    prefix = f"p{uuid.uuid4().hex[:10]}."
    names = TopicNames.with_prefix(prefix)
    asyncio.run(ensure_topics(kafka, names, partitions=4))
    worker = Worker(kafka, f"app-{prefix}", prefix, tmp_path_factory.mktemp("one"), 4, "w")
    worker.start()
    try:
        wait_for(lambda: worker.active_partitions() == {0, 1, 2, 3}, 60, "the worker's partitions")
        yield Deployment(names, worker)
    finally:
        worker.stop()


@pytest.mark.kafka
async def test_outdated_raises_current_resolves_replay_adds_nothing(
    one_worker: Deployment, kafka: str, producer: Any
) -> None:
    names, tenant = one_worker.names, f"t-{uuid.uuid4().hex[:8]}"
    await publish_policy(producer, names, TenantPolicy(tenant=tenant, version=1, tools=POLICY))
    outdated, current = snap(tenant, "A", at(0), "2.0.1"), snap(tenant, "A", at(60), "2.0.9")
    async with FlagLog(kafka, names.flags) as flags:
        await publish(producer, names.snapshots, outdated)
        [raised] = await flags.wait(tenant, 1)
        assert (raised.kind, raised.state) == (FlagKind.OUTDATED_CLIENT, FlagState.RAISED)
        assert raised.endpoint_id == f"{tenant}/A" and raised.policy_version == 1

        await publish(producer, names.snapshots, current)
        _, resolved = await flags.wait(tenant, 2)
        assert (resolved.flag_id, resolved.state) == (raised.flag_id, FlagState.RESOLVED)

        # the same telemetry again, then a marker behind it in the same partition: once the
        # marker's flag is out, the replays were processed, and they added nothing
        for event in (outdated, current, current):
            await publish(producer, names.snapshots, event)
        await publish(producer, names.snapshots, snap(tenant, "A", at(120), "2.0.9", team=None))
        found = await flags.wait(tenant, 3)
        await asyncio.sleep(0.5)
        assert summary(flags.of(tenant)) == [
            ("A", "outdated_client", "raised"),
            ("A", "outdated_client", "resolved"),
            ("A", "missing_policy", "raised"),
        ], found


@pytest.mark.kafka
async def test_policy_change_reevaluates_known_endpoints_without_telemetry(
    one_worker: Deployment, kafka: str, producer: Any
) -> None:
    names = one_worker.names
    tenant, other = f"t-{uuid.uuid4().hex[:8]}", f"t-{uuid.uuid4().hex[:8]}"
    lenient = {"claude-code": ToolPolicy(minimum_version="2.0.0")}
    for name in (tenant, other):
        await publish_policy(producer, names, TenantPolicy(tenant=name, version=1, tools=lenient))
    async with FlagLog(kafka, names.flags) as flags:
        # no team.id: each endpoint raises missing_policy, which shows it was processed
        for serial in ("A", "B", "C"):
            await publish(
                producer, names.snapshots, snap(tenant, serial, at(0), "2.0.3", team=None)
            )
        await publish(producer, names.snapshots, snap(other, "Z", at(0), "2.0.3", team=None))
        await flags.wait(tenant, 3)
        await flags.wait(other, 1)

        strict = TenantPolicy(
            tenant=tenant, version=2, tools={"claude-code": ToolPolicy(minimum_version="2.1.0")}
        )
        effective = await publish_policy(producer, names, strict)
        found = await flags.wait(tenant, 6)
        new = found[3:]
        assert sorted(summary(new)) == [
            (serial, "outdated_client", "raised") for serial in ("A", "B", "C")
        ]
        assert {(flag.policy_version, flag.first_seen) for flag in new} == {(2, effective)}

        # the other tenant's policy did not change: nothing for it; a policy republished
        # unchanged re-evaluates nothing either
        await publish_policy(producer, names, strict)
        await asyncio.sleep(2)
        assert len(flags.of(tenant)) == 6
        assert summary(flags.of(other)) == [("Z", "missing_policy", "raised")]


@pytest.mark.kafka
async def test_a_coalesced_auth_event_counts_every_rejected_request(
    one_worker: Deployment, kafka: str, producer: Any
) -> None:
    """The receiver coalesces a burst: 1 event at once, then one standing for 3 more. The
    Faust worker counts 4 rejected requests (threshold 3) and raises stale_token; a replay
    of the coalesced event counts nothing more."""
    names, tenant = one_worker.names, f"t-{uuid.uuid4().hex[:8]}"
    policy = TenantPolicy(
        tenant=tenant,
        version=1,
        tools=POLICY,
        token_rotated_at=T0,
        stale_token=StaleTokenPolicy(threshold=3),
    )
    await publish_policy(producer, names, policy)
    burst = rejected(tenant, "B", at(1.6)).model_copy(
        update={"count": 3, "first_observed_at": at(0.4)}
    )
    async with FlagLog(kafka, names.flags) as flags:
        await publish(producer, names.auth_events, rejected(tenant, "B", at(0)))
        await publish(producer, names.auth_events, burst)
        [raised] = await flags.wait(tenant, 1)
        assert (raised.kind, raised.state) == (FlagKind.STALE_TOKEN, FlagState.RAISED)
        assert raised.first_seen == at(1.6) and raised.detail.startswith("3 requests rejected")
        # one rejection on another endpoint, coalesced 2: below the threshold, no flag
        await publish(
            producer,
            names.auth_events,
            rejected(tenant, "C", at(1)).model_copy(update={"count": 2}),
        )
        await asyncio.sleep(2)
        assert summary(flags.of(tenant)) == [("B", "stale_token", "raised")]


@pytest.mark.kafka
async def test_poison_messages_are_skipped_and_the_worker_goes_on(
    one_worker: Deployment, kafka: str, producer: Any
) -> None:
    names, tenant = one_worker.names, f"t-{uuid.uuid4().hex[:8]}"
    key = f"{tenant}/A".encode()
    async with FlagLog(kafka, names.flags) as flags:
        await producer.send_and_wait(names.snapshots, b"\xff not json", key=key)
        await producer.send_and_wait(names.auth_events, b'{"reason": "retired"}', key=key)
        await producer.send_and_wait(names.reevaluate, b"{}", key=key)
        wrong_key = snap(tenant, "B", at(0), team=None).to_json()
        await producer.send_and_wait(names.snapshots, wrong_key, key=key)
        await publish(producer, names.snapshots, snap(tenant, "A", at(0), team=None))
        [flag] = await flags.wait(tenant, 1)
        assert summary([flag]) == [("A", "missing_policy", "raised")]
    assert one_worker.worker.process is not None and one_worker.worker.process.poll() is None
    wait_for(lambda: "skipped" in one_worker.worker.log(), 10, "skip log lines")
    assert one_worker.worker.log().count(f"skipped {names.snapshots}[") == 2


# ------------------------------------------------------------------------------ kill -9 test


@dataclass
class Fleet:
    """Snapshots of many endpoints, in the order they are produced, and what they must yield."""

    tenant: str
    policy: TenantPolicy
    events: list[EndpointSnapshot] = field(default_factory=list)

    @classmethod
    def generate(cls, endpoints: int, per_endpoint: int, seed: int = 7) -> Fleet:
        rng = random.Random(seed)
        tenant = f"t-{uuid.uuid4().hex[:8]}"
        fleet = cls(tenant, TenantPolicy(tenant=tenant, version=1, tools=POLICY))
        clocks = {n: 0.0 for n in range(endpoints)}
        for _ in range(per_endpoint * endpoints):
            n = rng.randrange(endpoints)
            clocks[n] += rng.uniform(0.5, 30)
            moment = clocks[n] - (rng.uniform(1, 60) if rng.random() < 0.05 else 0)  # late ones
            version = rng.choice(["2.0.1", "2.0.4", "2.0.5", "2.0.9", "2.0.9", "2.1.0"])
            team = None if rng.random() < 0.2 else "eng"
            when = NOW + timedelta(milliseconds=round(moment * 1000))
            fleet.events.append(snap(tenant, f"SN{n:04d}", when, version, team=team))
        return fleet

    def expected(self) -> set[tuple[str, str, str, str]]:
        """(flag_id, state, endpoint_id, kind) of the pure core run over each endpoint in order."""
        states: dict[str, EndpointState | None] = defaultdict(lambda: None)
        found = set()
        for event in self.events:
            states[event.endpoint_id], flags = apply(states[event.endpoint_id], event, self.policy)
            found |= {(f.flag_id, f.state.value, f.endpoint_id, f.kind.value) for f in flags}
        return found


async def raw_flag_count(
    bootstrap: str, topic: str, partitions: int, tenant: str
) -> tuple[int, int]:
    """(messages of the tenant on the topic, distinct (flag_id, state) among them)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(topic, partition) for partition in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        seen: list[tuple[str, str]] = []
        while [tp for tp in tps if await consumer.position(tp) < end[tp]]:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for record in records:
                    flag = DriftFlag.from_json(record.value)
                    if flag.tenant_id == tenant:
                        seen.append((flag.flag_id, flag.state.value))
        return len(seen), len(set(seen))
    finally:
        await consumer.stop()


class RecoveryHang(AssertionError):
    """A worker never took over: faust-streaming's table recovery did not finish."""


@pytest.mark.kafka
async def test_a_worker_whose_table_recovery_reads_nothing_exits_to_be_started_again(
    kafka: str, tmp_path: Path
) -> None:
    """The hang forced: a changelog partition that ends in a transaction marker, which no
    consumer ever receives, so Faust's recovery always has one record left and waits forever.
    The worker must exit with 75 (EX_TEMPFAIL) instead, and say why."""
    prefix = f"r{uuid.uuid4().hex[:10]}."
    await ensure_topics(kafka, TopicNames.with_prefix(prefix), 4)
    worker = Worker(kafka, f"app-{prefix}", prefix, tmp_path, 4, "w", 1.0, recovery_stall=4.0)
    try:
        worker.start()  # once, to make the table's changelog topic
        wait_for(lambda: worker.active_partitions() == {0, 1, 2, 3}, 60, "the worker's partitions")
        worker.stop()
        marker = AIOKafkaProducer(bootstrap_servers=kafka, transactional_id=f"tx-{prefix}")
        await marker.start()
        try:
            async with marker.transaction():
                changelog = f"{worker.app_id}-endpoint-state-changelog"
                await marker.send(changelog, b"{}", key=b"acme/x", partition=0)
        finally:
            await marker.stop()
        worker.start()
        assert worker.process is not None
        exited = await asyncio.to_thread(worker.process.wait, 90)
    finally:
        worker.stop()
    assert exited == 75, worker.log()[-3000:]
    assert "table recovery read nothing for 4 s" in worker.log()


@pytest.mark.kafka
@pytest.mark.slow
async def test_kill_9_a_worker_mid_stream_loses_and_duplicates_nothing(
    kafka: str, producer: Any, tmp_path: Path
) -> None:
    """No flag lost or duplicated when a worker is killed mid-stream and taken over.

    faust-streaming 0.15's table recovery sometimes never finishes after a rebalance: the
    worker's log repeats "No event received for active tp … since recovery start" and it
    processes nothing more (faust-streaming #155; 2 of 4 full CI runs on 2026-12-06, at the
    rebalance when the second worker joined, before the kill). That is a defect of its own: a
    worker exits when its recovery reads nothing for DRIFTLINE_RECOVERY_STALL seconds, for its
    supervisor to start it again (tested above); this test has no supervisor, so a run that
    hits the hang is run once more on fresh topics, and what this test asserts is asserted in
    full on the run that completes.
    """
    try:
        await _kill_9_scenario(kafka, producer, tmp_path / "first")
    except RecoveryHang as hang:
        print(f"\nkill -9 test: {hang}; running it once more on fresh topics")
        await _kill_9_scenario(kafka, producer, tmp_path / "second")


async def _kill_9_scenario(kafka: str, producer: Any, tmp_path: Path) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    partitions = 12
    prefix = f"k{uuid.uuid4().hex[:10]}."
    names = TopicNames.with_prefix(prefix)
    await ensure_topics(kafka, names, partitions)
    fleet = Fleet.generate(endpoints=200, per_endpoint=15)
    expected = fleet.expected()
    await publish_policy(producer, names, fleet.policy)

    workers = [
        Worker(kafka, f"app-{prefix}", prefix, tmp_path / "workers", partitions, name, 0.5)
        for name in ("a", "b")
    ]
    dsn = f"chdb://{tmp_path}/clickhouse"
    store = connect(dsn)
    migrate(store)
    stop_sink = asyncio.Event()
    sink = Sink(kafka, store, SinkOptions(group_id=f"sink-{prefix}", topic_prefix=prefix))
    sink_task = asyncio.create_task(sink.run(stop_sink))
    a, b = workers
    try:
        for worker in workers:
            worker.start()

        def split() -> bool:
            parts = [worker.active_partitions() for worker in workers]
            return all(parts) and set.union(*parts) == set(range(partitions))  # type: ignore[arg-type]

        await eventually(split, 60, "both workers to own partitions")
        started = time.monotonic()
        third = len(fleet.events) // 3
        for index, event in enumerate(fleet.events):
            if index == third:
                # b is busy with the stream (it reported progress) when it dies
                await eventually(lambda: b.processed() > 0, 30, "b to process snapshots")
                b_processed = b.processed()
                b.kill()
            await producer.send(names.snapshots, event.to_json(), key=event.endpoint_id.encode())
            if index % 25 == 0:
                await asyncio.sleep(0.05)  # ~500 snapshots/s: the kill lands mid-stream
        await producer.flush()
        produced = time.monotonic() - started

        # takeover = the broker noticing b (session timeout 10 s) + a rejoining (rebalance
        # timeout 30 s) + a recovering b's table partitions from their changelog: on a CI
        # machine running the whole suite that once took over 60 s (1 run in 11); what this
        # test asserts is that nothing is lost or duplicated, not how fast the takeover is
        try:
            await eventually(
                lambda: a.active_partitions() == set(range(partitions)), 150, "takeover"
            )
        except AssertionError as error:
            raise RecoveryHang(f"{error} (the surviving worker's recovery hung)") from error
        b.start()  # the killed worker comes back and takes half of the partitions again

        def stored() -> set[tuple[str, str, str, str]]:
            rows = store.query(
                "SELECT flag_id, state, endpoint_id, kind FROM drift_flags FINAL"
                " WHERE tenant_id = {t:String}",
                parameters={"t": fleet.tenant},
            ).result_rows
            return {tuple(row) for row in rows}

        await eventually(lambda: stored() >= expected, 120, "every expected flag in ClickHouse")
        await eventually(split, 60, "the restarted worker to share the partitions")
        await asyncio.sleep(3)  # anything extra would come now
        converged = time.monotonic() - started
        assert stored() == expected
        raw_rows = store.query(
            "SELECT count() FROM drift_flags WHERE tenant_id = {t:String}",
            parameters={"t": fleet.tenant},
        ).result_rows[0][0]
        messages, distinct = await raw_flag_count(kafka, names.flags, partitions, fleet.tenant)
        assert distinct == len(expected)
        print(
            f"\nkill -9 test: {len(fleet.events)} snapshots, 200 endpoints, b killed after "
            f"handling {b_processed}+ snapshots; "
            f"{len(expected)} expected flags; produced in {produced:.1f}s, converged after "
            f"{converged:.1f}s; flags topic: {messages} messages, {messages - distinct} "
            f"duplicates; drift_flags: {raw_rows} raw rows, {len(stored())} after FINAL"
        )
    finally:
        for worker in workers:
            worker.stop()
        stop_sink.set()
        await asyncio.wait_for(sink_task, 30)
        store.close()
