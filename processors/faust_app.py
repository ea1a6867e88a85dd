"""The processors as a Faust app: per-endpoint state in a changelog-backed table, flags out.

One agent reads snapshots, auth events and re-evaluation requests as one co-partitioned stream
(keys = endpoint_id), so each endpoint's events are handled in order by the one worker owning its
partition, and table writes land in that partition's changelog. For each event it calls the pure
``apply`` and sends the resulting DriftFlags to ``driftline.flags``.

Per-event cost is kept to the event's own work; Faust's machinery around it cost more than the
work itself (bench-faust: 0.23 ms of worker CPU per snapshot, 0.07 ms without it). The agent takes
the events waiting in its stream's queue at once instead of through Faust's per-event stream
iterator (the inputs have ``acks=False``, so its ack bookkeeping had nothing to do); the fetch
loop hands each record to the conductor directly when nothing can block it, instead of racing it
in two tasks against a rebalance (``_batching_consumer``); flags and changelog records go
straight to aiokafka's producer; and a batch writes each endpoint it changed once, with its
latest state.

Delivery is at-least-once (DESIGN.md: Faust's exactly-once and GlobalTable are avoided):

- A state is written to the table only after its flags are acknowledged by Kafka. A worker
  killed at any point therefore leaves a changelog whose latest state never runs ahead of the
  flags it implies; the new owner replays the uncommitted events on that state and re-emits at
  most what may already have been sent. Flags go out at once; their acks are awaited per
  *batch* of events (``settle``: every ``settle_every`` events, before each commit, and at
  least every ``commit_interval``), and until then the batch's states wait (decoded) in an
  overlay that later events of the same endpoint read, and its offsets are not committed.
  Waiting per event made one produce round trip per flag the worker's pace when many endpoints
  drift at once. Settling writes each endpoint's latest state of the batch once: into the
  table's local store and, as the record ``table[key] = value`` would send, to the changelog
  (partitioned by key); a commit flushes the producer first, so every committed event's
  changelog record and flags are in Kafka.
  Flags are transitions with deterministic ids, so replays are duplicates of the same
  (flag_id, state), never new ones.
- Any unexpected error crashes the worker instead of skipping the event; a restart replays from
  the last commit. Only messages that can never be processed (undecodable, or whose key does not
  name the endpoint in the value) are logged, counted and skipped.

Offsets are ours, not Faust's. Faust 0.15 loses messages around rebalances (faust-streaming
issues #216, #221, #606): records fetched just before a rebalance are dropped without rewinding
the fetch position, and aiokafka's seek-to-committed skips partitions whose committed offset is
missing or 0; records skipped as "old generation" are acknowledged unprocessed, and a gap in
delivered offsets is acknowledged as a whole, so a commit can pass events nobody processed. (The
kill test lost 24 and 425 of 2160 flags this way before the guard below.) So the inputs are
declared with ``acks=False`` (Faust commits nothing for them) and the agent keeps, per partition,
the next offset it must process: it starts at the group's committed offset (else the earliest),
an event below it is a re-delivery and is skipped, one above it means records were dropped, and
the partition is rewound to it. Exactly those offsets are committed, after a producer flush (so
the changelog and flags of every committed event are in Kafka), periodically and when partitions
are revoked. A table write of an event from a previous consumer generation, or during a
rebalance, is refused, so a worker losing a partition mid-event cannot overwrite its new owner's
state; the event is processed again from the last commit.

Ordering holds per input topic: on a replay, snapshots and auth events of one endpoint may
interleave differently than the first time. Flags stay transitions (detectors ignore events older
than the state), but which of two near-simultaneous events "wins" can differ after a takeover.

Policy: every worker reads the whole compacted policy topic with its own group-less consumer
into memory, and waits for it before processing anything. A table value remembers the
fingerprint of the policy its state was last evaluated under; when a tenant's policy changes,
or partitions were taken over (the previous owner may have died mid-sweep), the worker sends a
re-evaluation request for every local endpoint whose fingerprint is not the current one. The
request travels through the co-partitioned ``driftline.reevaluate`` topic, so the re-evaluation
runs in stream context like any event. It carries the policy record's timestamp as the
effective time, so a replayed request yields the same flag ids.

This module is the wiring and the agent; its parts live next to it: ``topology`` (topic names,
creating topics), ``offsets`` (the per-partition offset record), ``policies`` (the policy cache,
fingerprints, re-evaluation requests), ``detectors`` and ``codec`` (what an event does to a
state, and how a state is stored).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import faust
from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from pydantic import ValidationError

from processors import codec
from processors.detectors import apply, reevaluate
from processors.offsets import Offsets, committed_offsets, highwater
from processors.policies import Policies, ReevaluateRequest
from processors.stall import RecoveryWatch
from processors.state import EndpointState
from processors.topology import TopicNames, partitions_of
from schemas.messages import AuthEvent, DriftFlag, EndpointSnapshot
from schemas.policy import TenantPolicy

log = logging.getLogger(__name__)

APP_ID: Final = "driftline-processors"
TABLE: Final = "endpoint-state"
_SWEEP_YIELD_EVERY: Final = 500  # keys between event-loop yields while sweeping a big table


@dataclass(slots=True)
class ProcessorStats:
    """Counters of one worker, logged periodically; ``skipped`` are unprocessable messages."""

    snapshots: int = 0
    auth_events: int = 0
    reevaluations: int = 0
    flags: int = 0
    skipped: int = 0
    state_writes: int = 0
    sweeps: int = 0
    reevaluate_requests: int = 0
    rewinds: int = 0  # partitions sent back over records Faust dropped

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class Skip(ValueError):
    """A message that can never be processed: logged, counted and acknowledged."""


class Stale(Exception):
    """The event's partition moved to another worker while it was being handled."""


# ---------------------------------------------------------------------------------- the app


@dataclass
class _Batch:
    """Events handled since the last settle: flag acks outstanding, state writes and offsets
    held until they arrive (the invariant above, per batch instead of per event)."""

    acks: list[asyncio.Future[Any]] = field(default_factory=list)
    # the latest state of each endpoint the batch changed, and the event's consumer generation
    stores: dict[bytes, tuple[codec.Stored, int]] = field(default_factory=dict)
    messages: list[Any] = field(default_factory=list)  # whose offsets may be committed after


@dataclass
class Processors:
    """The Faust app and the parts tests and the runner look at."""

    app: Any
    bootstrap: str
    names: TopicNames
    partitions: int
    table: Any
    flags_topic: Any
    reevaluate_topic: Any
    policies: Policies = field(default_factory=Policies)
    stats: ProcessorStats = field(default_factory=ProcessorStats)
    _dirty: set[str] = field(default_factory=set)
    _dirty_all: bool = False
    commit_interval: float = 1.0
    stall_after: float = 3.0
    offsets: Offsets = field(default_factory=Offsets)
    settle_every: int = 256
    _commit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _settle_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _batch: _Batch = field(default_factory=_Batch)
    _overlay: dict[bytes, codec.Stored] = field(default_factory=dict)  # not yet in the table
    # table values already decoded, valid while the table holds that very bytes object
    _decoded: dict[bytes, tuple[bytes, codec.Stored]] = field(default_factory=dict)
    _sweep_wanted: asyncio.Event = field(default_factory=asyncio.Event)
    _partitioner: DefaultPartitioner = field(default_factory=DefaultPartitioner)

    # -------------------------------------------------------------------------------- agent

    async def process(self, stream: Any) -> None:
        """The agent: events in partition order, taken from the stream's queue in batches.

        Faust's stream iterator costs more per event than handling the event (sensors,
        context variables, ack bookkeeping we do not use: the inputs have ``acks=False``), so
        the agent reads the queue the conductor fills, as many events as are waiting at once,
        and does itself the one thing the iterator did that matters here: events that arrive
        while flow is stopped for a rebalance are not processed (the guard in ``_admit``
        catches those of an old generation).
        """
        await self.policies.ready.wait()
        await self._learn_changelog_partitions()
        queue = stream.channel.queue  # what ``stream.events()`` reads, one event per step
        flow = self.app.flow_control
        while True:
            try:
                events = [await queue.get()]
            except StopAsyncIteration:
                return  # the channel closed: the worker is stopping (as ``events()`` ends)
            while len(events) < self.settle_every and not queue.empty():
                events.append(queue.get_nowait())
            for event in events:
                if not flow.is_active():
                    break  # a rebalance: what the new assignment needs is fetched again
                if not await self._consume(event):
                    return
            if len(self._batch.messages) >= self.settle_every and not await self._settled():
                return

    async def _consume(self, event: Any) -> bool:
        """Handle one event; False when the worker crashed."""
        message = event.message
        if not await self._admit(message):
            return True
        try:
            await self.handle(message.topic, event.key, event.value, message.generation_id)
        except Skip as reason:
            self.stats.skipped += 1
            log.warning(
                "skipped %s[%d]@%d: %s", message.topic, message.partition, message.offset, reason
            )
        except Stale:
            return True  # its new owner processes it again
        except Exception as error:
            # Kafka refusing our writes, or a bug: stop rather than pass an event whose
            # flags may be lost; the restart replays from the last commit.
            log.exception(
                "processing %s[%d]@%d failed", message.topic, message.partition, message.offset
            )
            await self.app.crash(error)
            return False
        self._advance(message)
        self._batch.messages.append(message)
        return True

    async def _learn_changelog_partitions(self) -> None:
        """Wait until the producer knows the changelog topic's partitions. Faust's key
        partitioner reads them from the producer's metadata cache without waiting, so a table
        write before the first metadata refresh that includes the (new) topic crashed the worker
        with a TypeError (faust-streaming 0.15, seen on fresh brokers)."""
        producer = self.app.producer._ensure_producer()  # aiokafka's; private in Faust
        await producer.partitions_for(self.table.changelog_topic.get_topic_name())

    async def _settled(self) -> bool:
        """Settle the batch; on failure crash the worker (the restart replays) and say so."""
        try:
            await self.settle()
        except Exception as error:
            log.exception("flags were not acknowledged")
            await self.app.crash(error)
            return False
        return True

    async def settle(self) -> None:
        """Await the batch's flag acks, then write its states and let its offsets be committed.

        Batches settle one at a time and in order, so an endpoint's table value only moves
        forward. States of a previous consumer generation are dropped, not written: their
        partition moved, and the new owner replays those events.
        """
        async with self._settle_lock:
            batch, self._batch = self._batch, _Batch()
            if batch.acks:
                await asyncio.gather(*batch.acks)
            generation = self.app.consumer_generation_id
            if batch.stores:
                producer = self.app.producer._ensure_producer()  # aiokafka's; private in Faust
                changelog = self.table.changelog_topic.get_topic_name()
                store = self.table.data
            for key, (stored, stored_generation) in batch.stores.items():
                # the generation, not ``rebalancing``: a revoke settles events handled before
                # it, as their writes would have been made before it had they not waited
                if stored_generation == generation:
                    # what ``table[key] = value`` does, without Faust's per-write machinery:
                    # the local store, and the changelog record (partitioned by its key, as
                    # the table's ``use_partitioner``), flushed before the next commit. Faust's
                    # callback on a sent changelog record records the offset for persistent
                    # stores; the memory store keeps none (``build``), so nothing is skipped
                    value = codec.encode(stored.state, stored.policy)
                    store[key] = value
                    self._decoded[key] = (value, stored)
                    await producer.send(changelog, value, key=key)
                    self.stats.state_writes += 1
                if self._overlay.get(key) is stored:
                    del self._overlay[key]
            offsets = self.offsets
            for message in batch.messages:
                if message.generation_id == offsets.generation:
                    offsets.settled[message.tp] = message.offset + 1

    async def _admit(self, message: Any) -> bool:
        """Whether ``message`` is the next one of its partition; rewinds over lost ones."""
        offsets = self.offsets
        expected = offsets.next.get(message.tp)
        if (
            expected is None
            or message.generation_id != offsets.generation
            or offsets.generation != self.app.consumer_generation_id
        ):
            return False  # a partition (or generation) this worker is not processing now
        if message.offset < expected:
            return False  # delivered again after a seek: already processed
        if message.offset > expected:
            if offsets.rewound_to.get(message.tp) == expected:
                return False  # rewound already; the missing records are on their way
            earliest = (await self.app.consumer.earliest_offsets(message.tp)).get(message.tp, 0)
            if earliest > expected:  # deleted by retention before anyone processed them
                log.error(
                    "%s[%d]: offsets %d..%d expired unprocessed",
                    message.topic,
                    message.partition,
                    expected,
                    earliest - 1,
                )
                offsets.next[message.tp] = expected = earliest
                if message.offset == expected:
                    return True
            log.warning(
                "%s[%d]: got offset %d, expected %d: rewinding",
                message.topic,
                message.partition,
                message.offset,
                expected,
            )
            await self._rewind(message.tp, expected)
            return False
        return True

    def _advance(self, message: Any) -> None:
        offsets = self.offsets
        if message.generation_id == offsets.generation:
            offsets.next[message.tp] = message.offset + 1
            offsets.moved_at[message.tp] = time.monotonic()
            offsets.rewound_to.pop(message.tp, None)

    async def _rewind(self, tp: Any, offset: int) -> None:
        self.stats.rewinds += 1
        self.offsets.rewound_to[tp] = offset
        self.offsets.moved_at[tp] = time.monotonic()
        consumer = self.app.consumer
        await consumer.seek_wait({tp: offset})
        # Faust drops fetched records below its "read offset"; seek_wait only resets it for
        # offsets above 0 (private attribute, faust-streaming 0.15)
        consumer._read_offset[tp] = offset if offset > 0 else None

    async def handle(
        self, topic: str, key: bytes | None, value: bytes | None, generation: int
    ) -> None:
        if not key or value is None:
            raise Skip("no key or no value")
        if topic == self.names.reevaluate:
            await self._reevaluate(key, value, generation)
            return
        event: EndpointSnapshot | AuthEvent
        try:
            if topic == self.names.snapshots:
                event = EndpointSnapshot.from_json(value)
                self.stats.snapshots += 1
            else:
                event = AuthEvent.from_json(value)
                self.stats.auth_events += 1
        except ValidationError as error:
            raise Skip(
                f"undecodable: {error.error_count()} errors, first {_first(error)}"
            ) from None
        if event.tenant_id is None or event.endpoint_id is None:
            return  # an AuthEvent no tenant or endpoint can be named for: nothing to track
        if event.endpoint_id.encode() != key:
            raise Skip(f"key {key!r} is not the endpoint {event.endpoint_id!r} of the value")
        entry = self.policies.get(event.tenant_id)
        stored = self._load(key)
        old = stored.state if stored is not None else None
        try:
            state, flags = apply(old, event, entry.policy)
        except ValueError as error:  # a state of another tenant under this key
            raise Skip(str(error)) from None
        await self._emit(key, flags)
        if state is not None and state is not old:
            self._store(key, state, entry.fingerprint, generation)

    async def _reevaluate(self, key: bytes, value: bytes, generation: int) -> None:
        try:
            request = ReevaluateRequest.from_json(value)
        except (ValueError, KeyError, TypeError) as error:
            raise Skip(f"undecodable re-evaluation request: {error!r}") from None
        entry = self.policies.get(request.tenant_id)
        if request.policy != entry.fingerprint:
            return  # made for a policy since replaced: the sweep for the current one follows
        stored = self._load(key)
        if stored is None or stored.policy == entry.fingerprint:
            return  # unknown here, or already evaluated under this policy (replays end here)
        if stored.state.tenant_id != request.tenant_id:
            raise Skip(f"re-evaluation for tenant {request.tenant_id!r} of another's endpoint")
        self.stats.reevaluations += 1
        state, flags = reevaluate(stored.state, entry.policy, request.at)
        await self._emit(key, flags)
        self._store(key, state, entry.fingerprint, generation)

    async def _emit(self, key: bytes, flags: list[DriftFlag]) -> None:
        """Send flags; their acks are awaited by ``settle``, before the state is written."""
        producer = self.app.producer._ensure_producer()  # aiokafka's: Faust's buffer skipped
        topic = self.flags_topic.get_topic_name()
        for flag in flags:
            self._batch.acks.append(await producer.send(topic, flag.to_json(), key=key))
        self.stats.flags += len(flags)

    def _load(self, key: bytes) -> codec.Stored | None:
        """The endpoint's latest state: pending in the batch, else the table's.

        Decoding the table value was an eighth of the worker's CPU, so the decoded value is
        kept next to it (a state object per endpoint, as the embedded engine keeps) and used
        while the table holds the very bytes it was decoded from: a changelog replay puts new
        bytes there, and those are decoded afresh.
        """
        pending = self._overlay.get(key)
        if pending is not None:
            return pending
        value = self.table.data.get(key)  # the store: Faust's table layer adds nothing here
        if value is None:
            return None
        known = self._decoded.get(key)
        if known is not None and known[0] is value:
            return known[1]
        try:
            stored = codec.decode_stored(value)
            self._decoded[key] = (value, stored)
            return stored
        except codec.CodecError:
            # Only a bug writes these. Starting afresh re-raises open flags under new ids, but
            # refusing would stop the endpoint for good.
            log.exception("unreadable state of %r; starting afresh", key)
            return None

    def _store(self, key: bytes, state: EndpointState, policy: str, generation: int) -> None:
        if generation != self.app.consumer_generation_id or self.app.rebalancing:
            raise Stale  # a worker losing the partition must not write its changelog
        stored = codec.Stored(state, policy)  # encoded once per batch, by ``settle``
        self._overlay[key] = stored  # what later events of this endpoint see until settled
        self._batch.stores[key] = (stored, generation)

    # -------------------------------------------------------------------------------- policy

    async def read_policies(self) -> None:
        """Follow the whole policy topic for the worker's lifetime (no group, no commits)."""
        delay = 0.5
        while True:
            consumer = AIOKafkaConsumer(
                bootstrap_servers=self.bootstrap,
                group_id=None,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                client_id=f"{self.app.conf.id}-policy",
            )
            try:
                await consumer.start()
                await self._follow_policies(consumer)
            except KafkaError as error:
                log.warning("policy topic %s: %s; reading it again", self.names.policy, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            finally:
                await consumer.stop()

    async def _follow_policies(self, consumer: Any) -> None:
        partitions = await partitions_of(self.bootstrap, self.names.policy)
        tps = [TopicPartition(self.names.policy, partition) for partition in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end: dict[Any, int] = await consumer.end_offsets(tps)
        while True:
            batches = await consumer.getmany(timeout_ms=500)
            for records in batches.values():
                for record in records:
                    self._on_policy_record(record)
            if not self.policies.ready.is_set():
                positions = [await consumer.position(tp) for tp in tps]
                if all(position >= end[tp] for position, tp in zip(positions, tps, strict=True)):
                    log.info("policies loaded: %d tenants", len(self.policies))
                    self.policies.ready.set()

    def _on_policy_record(self, record: Any) -> None:
        if record.key is None:
            log.error("policy record without a tenant key at offset %d: ignored", record.offset)
            return
        tenant = record.key.decode(errors="replace")
        policy: TenantPolicy | None = None
        if record.value is not None:
            try:
                policy = TenantPolicy.from_json(record.value)
            except ValidationError as error:
                log.error("invalid policy of tenant %s ignored: %s", tenant, _first(error))
                return
            if policy.tenant != tenant:
                log.error(
                    "policy of tenant %r published under key %r: ignored", policy.tenant, tenant
                )
                return
        at = datetime.fromtimestamp(record.timestamp / 1000, UTC)
        if self.policies.update(tenant, policy, at):
            log.info(
                "tenant %s: policy version %d", tenant, self.policies.get(tenant).policy.version
            )
            self._dirty.add(tenant)
            self._sweep_wanted.set()

    # --------------------------------------------------------------------------------- sweep

    async def on_recovered(self) -> None:
        """After a rebalance: set where each partition resumes, and sweep (the previous owners
        may not have finished theirs)."""
        generation = self.app.consumer_generation_id
        sources = set(self.names.copartitioned)
        tps = {tp for tp in self.app.consumer.assignment() if tp.topic in sources}
        try:
            committed = await committed_offsets(self.bootstrap, self.app.conf.id, tps)
            missing = [tp for tp in tps if not committed.get(tp)]
            earliest = await self.app.consumer.earliest_offsets(*missing) if missing else {}
        except Exception as error:
            log.exception("cannot read the committed offsets")
            await self.app.crash(error)
            return
        starts = {tp: committed.get(tp) or earliest.get(tp) or 0 for tp in tps}
        self.offsets.reset(generation, starts)
        for tp in missing:  # aiokafka's seek-to-committed leaves these wherever they were
            await self._rewind(tp, starts[tp])
        if missing:
            log.info("%d partitions without a committed offset start at the earliest", len(missing))
        log.info("active partitions: %s", _ranges(self.active_partitions()))
        self._dirty_all = True
        self._sweep_wanted.set()

    async def on_revoked(self, *_: Any, **__: Any) -> None:
        """Commit what this worker processed before its partitions move."""
        await self.commit()

    async def commit(self) -> None:
        """Settle, flush the producer, then commit the offsets after every settled event."""
        async with self._commit_lock:
            if not await self._settled():
                return
            offsets = self.offsets
            generation = offsets.generation
            pending = {
                tp: offset
                for tp, offset in offsets.settled.items()
                if offsets.committed.get(tp) != offset
            }
            if not pending:
                return
            await self.app.producer.flush()  # flags and changelog of those events are in Kafka
            if generation != self.app.consumer_generation_id or generation != offsets.generation:
                return  # rebalanced meanwhile: the next owner starts from the last commit
            # Faust's own commit call (private in faust-streaming 0.15): our offsets, its consumer
            if await self.app.consumer._commit(pending):
                offsets.committed.update(pending)

    async def commit_forever(self) -> None:
        """Commit periodically, and rewind partitions that stopped moving with records left
        (Faust dropped records after which nothing arrived to reveal the gap)."""
        while True:
            await asyncio.sleep(self.commit_interval)
            await self.commit()
            await self._unstall()

    async def _unstall(self) -> None:
        app, offsets = self.app, self.offsets
        if app.rebalancing or offsets.generation != app.consumer_generation_id:
            return
        now = time.monotonic()
        for tp, expected in list(offsets.next.items()):
            end = highwater(app.consumer, tp)
            if end is None or end <= expected:
                continue
            if now - offsets.moved_at.get(tp, now) > self.stall_after:
                log.warning("%s[%d] stalled at %d of %d: rewinding", *tp, expected, end)
                await self._rewind(tp, expected)

    def active_partitions(self) -> set[int]:
        return {
            tp.partition
            for tp in self.app.assignor.assigned_actives()
            if tp.topic == self.names.snapshots
        }

    def partition_of(self, key: bytes) -> int:
        """Kafka's default (murmur2) partitioner, which ingest's producer uses too."""
        every = list(range(self.partitions))
        return int(self._partitioner(key, every, every))

    async def sweep_forever(self) -> None:
        while True:
            await self._sweep_wanted.wait()
            await self.policies.ready.wait()
            self._sweep_wanted.clear()
            tenants = None if self._dirty_all else set(self._dirty)
            self._dirty_all = False
            self._dirty.clear()
            await self.sweep(tenants)

    async def sweep(self, tenants: set[str] | None) -> int:
        """Request re-evaluation of local endpoints (of ``tenants``; None: all) whose state was
        evaluated under another policy than the current one; returns how many."""
        active = self.active_partitions()
        sent = 0
        # states still waiting to settle count too: a policy may change in between
        keys = list(dict.fromkeys([*self._overlay, *self.table.keys()]))
        for index, key in enumerate(keys):
            if index % _SWEEP_YIELD_EVERY == 0:
                await asyncio.sleep(0)
                active = self.active_partitions()
            partition = self.partition_of(key)
            if partition not in active:
                continue  # memory stores keep keys of partitions taken away: not ours
            stored = self._overlay.get(key)
            if stored is None:
                value = self.table.get(key)
                if value is None:
                    continue
                try:
                    stored = codec.decode_stored(value)
                except codec.CodecError:
                    continue
            tenant = stored.state.tenant_id
            if tenants is not None and tenant not in tenants:
                continue
            entry = self.policies.get(tenant)
            if stored.policy == entry.fingerprint:
                continue
            request = ReevaluateRequest(
                tenant, stored.state.endpoint_id, entry.fingerprint, entry.at or datetime.now(UTC)
            )
            await self.reevaluate_topic.send(key=key, value=request.to_json(), partition=partition)
            sent += 1
        self.stats.sweeps += 1
        self.stats.reevaluate_requests += sent
        if sent:
            log.info("requested re-evaluation of %d endpoints", sent)
        return sent

    async def log_stats(self) -> None:
        log.info("processor stats: %s", self.stats.as_dict())

    async def recovery_stalled(self, stall_after: float, every: float) -> int:
        """Return the changelog records still to read once table recovery has made no progress
        for ``stall_after`` seconds (``processors.stall``); until then, keep looking.

        A task of its own on the worker's loop: Faust starts its timers only after recovery.
        """
        watch = RecoveryWatch(stall_after)
        recovery = self.app.tables.recovery
        while True:
            await asyncio.sleep(every)
            remaining: int = recovery.active_remaining_total()
            if watch.stalled(time.monotonic(), recovery.in_recovery, remaining):
                return remaining


def build(
    bootstrap: str,
    *,
    app_id: str = APP_ID,
    data_dir: Path,
    partitions: int = 12,
    topic_prefix: str = "",
    replication_factor: int = 1,
    commit_interval: float = 1.0,
    stall_after: float = 3.0,
    session_timeout: float = 10.0,
    heartbeat_interval: float = 1.0,
    rebalance_timeout: float = 30.0,
    stream_buffer_maxsize: int = 1024,
    stats_interval: float = 30.0,
    producer_linger: float = 0.05,
    fetch_min_bytes: int = 256 * 1024,
    fetch_max_wait: float = 0.25,
) -> Processors:
    """The processors app and its parts (see ``make_app``).

    ``producer_linger`` and ``fetch_min_bytes``/``fetch_max_wait`` trade up to 50 and 250 ms
    for batches. Every request is work for both ends (and a wake-up across cores): with
    Faust's defaults (no linger, a fetch per record) one worker could not keep up with 2,000
    snapshots/s on two cores shared with the broker, the receiver and the sink; with these it
    needs a quarter less CPU per snapshot than with a 10 ms linger and 64 KiB fetches.
    """
    names = TopicNames.with_prefix(topic_prefix)
    app = faust.App(
        app_id,
        broker=[f"kafka://{host.strip()}" for host in bootstrap.split(",") if host.strip()],
        datadir=str(data_dir),
        autodiscover=False,
        store="memory://",  # the changelog is the store; a takeover replays it
        processing_guarantee="at_least_once",
        topic_partitions=partitions,
        topic_replication_factor=replication_factor,
        topic_disable_leader=True,
        table_standby_replicas=0,  # memory stores drop standby data after recovery anyway
        producer_acks=-1,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=commit_interval,  # Faust commits nothing of ours (acks=False)
        broker_session_timeout=session_timeout,
        broker_heartbeat_interval=heartbeat_interval,
        broker_rebalance_timeout=rebalance_timeout,
        stream_buffer_maxsize=stream_buffer_maxsize,
        stream_wait_empty=True,
        stream_ack_exceptions=False,
        web_enabled=False,
        producer_linger=producer_linger,
    )
    # this app's transport only (a class variable in Faust, replaced for this instance)
    app.transport.Consumer = _batching_consumer(fetch_min_bytes, fetch_max_wait)  # type: ignore[misc]
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    source = app.topic(*names.copartitioned, partitions=partitions, acks=False, **raw)
    # use_partitioner: a changelog record's partition comes from its key (murmur2, as ingest
    # produces the inputs), not from the event being processed, so ``settle`` can write states
    # of a batch after their flags are acked; the partitions are the same either way
    table = app.Table(
        TABLE, partitions=partitions, key_type=bytes, value_type=bytes, use_partitioner=True
    )  # raw
    processors = Processors(
        app=app,
        bootstrap=bootstrap,
        names=names,
        partitions=partitions,
        table=table,
        flags_topic=app.topic(names.flags, **raw),
        reevaluate_topic=app.topic(names.reevaluate, partitions=partitions, **raw),
        commit_interval=commit_interval,
        stall_after=stall_after,
    )

    # Faust decorates plain functions (venusian marks them), not bound methods.
    async def process(stream: Any) -> None:
        await processors.process(stream)

    async def read_policies() -> None:
        await processors.read_policies()

    async def sweep_forever() -> None:
        await processors.sweep_forever()

    async def log_stats() -> None:
        await processors.log_stats()

    async def on_recovered() -> None:
        await processors.on_recovered()

    async def commit_forever() -> None:
        await processors.commit_forever()

    async def on_revoked(*args: Any, **kwargs: Any) -> None:
        await processors.on_revoked(*args, **kwargs)

    async def on_shutdown(*args: Any, **kwargs: Any) -> None:
        await processors.commit()  # a clean stop leaves nothing to replay

    app.agent(source, name="driftline-processor")(process)
    app.task(read_policies)
    app.task(sweep_forever)
    app.task(commit_forever)
    app.on_partitions_revoked.connect(on_revoked)
    app.on_before_shutdown.connect(on_shutdown)
    app.timer(interval=stats_interval)(log_stats)
    table.on_recover(on_recovered)
    return processors


def make_app(
    bootstrap: str,
    *,
    app_id: str = APP_ID,
    data_dir: Path,
    partitions: int = 12,
    **options: Any,
) -> Any:
    """The Faust app (``faust.App``); options as for ``build``. Workers with the same ``app_id``
    share the partitions. Create the topics first (``topology.ensure_topics``)."""
    return build(bootstrap, app_id=app_id, data_dir=data_dir, partitions=partitions, **options).app


def _batching_consumer(min_bytes: int, max_wait: float) -> type[Any]:
    """Faust's aiokafka consumer, with fetches that wait for ``min_bytes`` (at most
    ``max_wait`` seconds): Faust sets neither, so the broker answers a fetch per record."""

    class Thread(aiokafka_driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
            consumer = super()._create_worker_consumer(transport)
            # read by AIOKafkaConsumer.start(), which has not run yet
            consumer._fetch_min_bytes = min_bytes
            consumer._fetch_max_wait_ms = int(max_wait * 1000)
            return consumer

    class Consumer(aiokafka_driver.Consumer):
        def _new_consumer_thread(self) -> Thread:
            return Thread(self, loop=self.loop, beacon=self.beacon)

        async def _drain_messages(self, fetcher: Any) -> None:
            """Faust's fetch loop (faust-streaming 0.15.3, ``Consumer._drain_messages``),
            with a cheaper hand-over of each record to the conductor.

            Faust runs every record's callback as a task raced against the suspension of
            flow (``wait_first``: two tasks and an ``asyncio.wait`` per record, the largest
            single cost of a draining worker), so a callback blocked on a full stream queue
            or on stopped flow is abandoned when a rebalance starts. When flow runs and every
            queue the record goes to has room, the callback cannot block, so it is awaited
            directly; otherwise it is raced as before. Offsets and gaps as in Faust's loop.
            """
            callback = self.callback
            getmany = self.getmany
            consumer_stopped = self._stopped.is_set
            fetcher_stopped = fetcher._stopped.is_set
            get_read_offset = self._read_offset.__getitem__
            set_read_offset = self._read_offset.__setitem__
            acks_enabled_for = self.app.topics.acks_enabled_for
            flow_active = self.app.flow_control.is_active
            suspended = self.suspend_flow.is_set
            conductor: Any = self.app.topics
            channels_of = conductor._tp_index  # the conductor's, by partition (private)
            commit_every = self._commit_every
            set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
            since_yield = 0
            try:
                while not (consumer_stopped() or fetcher_stopped()):
                    set_flag(CONSUMER_FETCHING)
                    records = getmany(timeout=1.0)
                    await asyncio.sleep(0)  # getmany may return at once, again and again
                    if self.should_stop:
                        continue
                    async for tp, message in records:
                        since_yield += 1
                        if since_yield > 100:
                            await asyncio.sleep(0)
                            since_yield = 0
                        offset = message.offset
                        read = get_read_offset(tp)
                        if read is not None and offset < read:
                            continue  # Faust drops records below its read offset
                        if read and offset - read > 1 and acks_enabled_for(message.topic):
                            await self._add_gap(tp, read + 1, offset)
                        if commit_every is not None and self._n_acked >= commit_every:
                            self._n_acked = 0
                            await self.commit()
                        if (
                            flow_active()
                            and not suspended()
                            and not any(channel.queue.full() for channel in channels_of.get(tp, ()))
                        ):
                            await callback(message)
                        else:
                            await self.wait_first(callback(message), self.suspend_flow.wait())
                        set_read_offset(tp, offset)
                    unset_flag(CONSUMER_FETCHING)
            except self.consumer_stopped_errors:
                if self.transport.app.should_stop:
                    return
                raise
            except asyncio.CancelledError:
                if self.transport.app.should_stop:
                    return
                raise
            finally:
                unset_flag(CONSUMER_FETCHING)

    return Consumer


def _first(error: ValidationError) -> str:
    problem = error.errors()[0]
    where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
    return f"{where}: {problem['msg']}"


def _ranges(partitions: Iterable[int]) -> str:
    return ",".join(str(partition) for partition in sorted(partitions)) or "none"
