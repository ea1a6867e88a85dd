"""Kafka → ClickHouse: snapshots, auth events and flags into their tables, at least once.

One consumer group (``driftline-sink``; run more processes with the same group to share the
partitions). Offsets are committed by hand and only after ``BatchWriter.flush`` has written every
row fetched before them, so a crash or a ClickHouse outage costs a re-delivery, never a row.
Re-delivered rows collapse in ClickHouse (endpoint_states aggregates by state, drift_flags
replaces by (flag_id, state), auth_events by (tenant, endpoint, time, reason, source)).

Memory stays bounded: ``getmany`` takes at most ``max_records`` at a time and ``BatchWriter.add``
waits while ClickHouse is behind, so the sink stops fetching instead of growing. A message that
does not decode is logged, counted and skipped (its offset is committed like any other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import uvloop
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import TopicPartition
from pydantic import ValidationError

from schemas import topics
from schemas.messages import AuthEvent, DriftFlag, EndpointSnapshot
from store import BatchWriter, Client, Heartbeats, StoreMessage, connect, migrate

log = logging.getLogger(__name__)

GROUP_ID: Final = "driftline-sink"


@dataclass(frozen=True, slots=True)
class SinkOptions:
    group_id: str = GROUP_ID
    topic_prefix: str = ""  # tests and shared clusters: "<prefix>driftline.snapshots", …
    max_records: int = 2000  # per fetch
    poll_timeout: float = 0.5  # seconds; also how quickly a stop request is seen
    # A fetch waits for this much data or fetch_max_wait. Fetching per record as records
    # trickled in kept the sink at 28% of a core at 1,000 snapshots/s (12% with these)
    fetch_min_bytes: int = 256 * 1024
    fetch_max_wait: float = 0.25  # seconds
    commit_interval: float = 2.0  # flush + commit at least this often while rows arrive
    commit_rows: int = 20_000  # … and whenever this many rows wait for a commit
    max_rows: int = 5000  # BatchWriter batch size
    # BatchWriter: the oldest buffered row waits at most this long. Each batch is a part per
    # table, which ClickHouse merges later: 0.25 s cost the sink a third more CPU at load
    max_delay: float = 0.5
    # … but flags, which security teams wait for, this long: with the fetch wait above it
    # took a flag's p50 from Kafka to ClickHouse from 0.8 s to 0.3 s, for the same sink CPU
    flag_delay: float = 0.1
    max_pending_rows: int = 50_000  # BatchWriter backpressure
    dead_letter: Path | None = None  # BatchWriter: JSON lines of rows ClickHouse refused
    last_seen_resolution: float = 60.0  # store.Heartbeats: unchanged snapshots, at most this often
    revoke_flush_timeout: float = 10.0  # on rebalance: commit what can be written by then
    client_id: str = "driftline-sink"

    def topic_models(self) -> dict[str, type[StoreMessage]]:
        prefix = self.topic_prefix
        return {
            prefix + topics.SNAPSHOTS: EndpointSnapshot,
            prefix + topics.AUTH_EVENTS: AuthEvent,
            prefix + topics.FLAGS: DriftFlag,
        }


@dataclass(slots=True)
class SinkStats:
    consumed: int = 0
    skipped: int = 0  # undecodable messages
    commits: int = 0
    failed_commits: int = 0  # lost the partitions first: their rows come again (deduplicated)
    inserts: int = 0  # batches written to ClickHouse (each one a part per table)


class Sink:
    """One consumer and one BatchWriter; ``run`` until ``stop`` is set (or cancelled)."""

    def __init__(
        self,
        bootstrap: str,
        store: Client | Callable[[], Client],
        options: SinkOptions | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.options = options or SinkOptions()
        self.models = self.options.topic_models()
        self.stats = SinkStats()
        self.writer = BatchWriter(
            store,
            max_rows=self.options.max_rows,
            max_delay=self.options.max_delay,
            delays={"drift_flags": self.options.flag_delay},
            max_pending_rows=self.options.max_pending_rows,
            dead_letter=self.options.dead_letter,
        )
        self.heartbeats = Heartbeats(self.options.last_seen_resolution)
        self._consumer: Any = None
        self._uncommitted: dict[TopicPartition, int] = {}  # next offset to read, per partition
        self._uncommitted_rows = 0
        self._last_commit = time.monotonic()
        self._commit_lock = asyncio.Lock()

    async def run(self, stop: asyncio.Event | None = None) -> SinkStats:
        stop = stop or asyncio.Event()
        options = self.options
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=options.group_id,
            client_id=options.client_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            metadata_max_age_ms=10_000,  # see topics created after start soon
            fetch_min_bytes=options.fetch_min_bytes,
            fetch_max_wait_ms=int(options.fetch_max_wait * 1000),
        )
        self._consumer.subscribe(list(self.models), listener=_Revoked(self))
        await self._consumer.start()
        self.writer.start()
        clean = False
        try:
            while not stop.is_set():
                batches = await self._consumer.getmany(
                    timeout_ms=int(options.poll_timeout * 1000), max_records=options.max_records
                )
                for tp, records in batches.items():
                    for record in records:
                        await self._add(record)
                    self._uncommitted[tp] = records[-1].offset + 1
                if self._commit_due():
                    await self.commit()
            clean = True
        finally:
            await self._shutdown(clean)
            self.stats.inserts = self.writer.batches_written
        return self.stats

    async def _add(self, record: Any) -> None:
        self.stats.consumed += 1
        model = self.models[record.topic]
        try:
            if record.value is None:
                raise ValueError("no value")
            message = model.from_json(record.value)
        except (ValidationError, ValueError) as error:
            self.stats.skipped += 1
            log.warning(
                "skipped undecodable %s[%d]@%d: %s",
                record.topic,
                record.partition,
                record.offset,
                _short(error),
            )
            return
        if isinstance(message, EndpointSnapshot):
            if not self.heartbeats.needed(message):
                return  # its offset is committed with the rest: nothing of it is missing
            self.heartbeats.stored(message)
        await self.writer.add(message)
        self._uncommitted_rows += 1

    def _commit_due(self) -> bool:
        if not self._uncommitted:
            return False
        waited = time.monotonic() - self._last_commit
        return (
            self._uncommitted_rows >= self.options.commit_rows
            or waited >= self.options.commit_interval
        )

    async def commit(self, only: set[TopicPartition] | None = None) -> None:
        """Write everything fetched so far, then commit the offsets after it."""
        async with self._commit_lock:
            offsets = {
                tp: offset for tp, offset in self._uncommitted.items() if only is None or tp in only
            }
            if not offsets:
                return
            await self.writer.flush()
            assigned = self._consumer.assignment()
            mine = {tp: offset for tp, offset in offsets.items() if tp in assigned}
            try:
                if mine:
                    await self._consumer.commit(mine)
                    self.stats.commits += 1
            except (CommitFailedError, KafkaError) as error:
                self.stats.failed_commits += 1
                log.warning("offset commit failed (rows will be re-delivered): %s", error)
            for tp, offset in offsets.items():
                if self._uncommitted.get(tp) == offset:  # not fetched further meanwhile
                    del self._uncommitted[tp]
            if only is None:
                self._uncommitted_rows = 0
                self._last_commit = time.monotonic()

    async def _shutdown(self, clean: bool) -> None:
        """On a clean stop write and commit everything; when cancelled, write what can be
        written in the writer's grace time and leave the offsets (the rows come again)."""
        try:
            if clean:
                await self.commit()
        finally:
            lost = await self.writer.close()
            if lost:
                log.error("sink stopped with %d rows unwritten; they will be re-delivered", lost)
            with contextlib.suppress(KafkaError):
                await self._consumer.stop()


class _Revoked(ConsumerRebalanceListener):  # type: ignore[misc]
    """Commit what was fetched from partitions about to move, so the next owner starts there."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        try:
            async with asyncio.timeout(self.sink.options.revoke_flush_timeout):
                await self.sink.commit(set(revoked))
        except TimeoutError:
            log.warning("store too slow to commit before the rebalance; rows will come again")

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        return None


async def run_sink(
    bootstrap: str,
    dsn: str,
    *,
    stop: asyncio.Event | None = None,
    options: SinkOptions | None = None,
) -> SinkStats:
    """Migrate the store at ``dsn``, then sink until ``stop`` is set; returns the counters."""
    client = await _connect_and_migrate(dsn, stop)
    if client is None:
        return SinkStats()
    try:
        return await Sink(bootstrap, client, options).run(stop)
    finally:
        await asyncio.to_thread(client.close)


def serve(bootstrap: str, dsn: str, options: SinkOptions | None = None) -> SinkStats:
    """Run the sink in this process until SIGINT/SIGTERM, then stop cleanly (write, commit)."""

    async def main() -> SinkStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        stats = await run_sink(bootstrap, dsn, stop=stop, options=options)
        log.info("sink stopped: %s", stats)
        return stats

    return uvloop.run(main())


async def _connect_and_migrate(dsn: str, stop: asyncio.Event | None) -> Client | None:
    """Wait out a store that is down at start-up, like the writer does later."""
    delay = 0.5
    while stop is None or not stop.is_set():
        client: Client | None = None
        try:
            client = await asyncio.to_thread(connect, dsn)
            await asyncio.to_thread(migrate, client)
            return client
        except ValueError:
            raise  # a DSN that can never work
        except Exception as error:
            log.warning("store %s not ready (retry in %.1fs): %s", _safe(dsn), delay, error)
            if client is not None:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(client.close)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
    return None


def _safe(dsn: str) -> str:
    """The DSN without credentials, for logs."""
    scheme, _, rest = dsn.partition("://")
    return f"{scheme}://{rest.rpartition('@')[2]}" if rest else dsn


def _short(error: Exception) -> str:
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "(top level)"
        return f"{error.error_count()} errors, first {where}: {first['msg']}"
    return str(error)
