"""One bus interface, two implementations: Kafka in production, in-process for `driftline run`.

`publish` returns only once every record is durable (Kafka: acknowledged by all in-sync
replicas), so a receiver can answer OK without risking accepted data. When the bus cannot take
records in time it raises BusUnavailable and the caller answers with a retryable status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from schemas import topics
from schemas.messages import Message

if TYPE_CHECKING:
    from bus.batching import PartitionBatches

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    key: str
    value: bytes
    # the message ``value`` encodes, when the publisher has it: in-process listeners use it
    # instead of decoding ``value`` again; Kafka sends ``value`` only
    message: Message | None = field(default=None, compare=False, repr=False)


class BusUnavailable(Exception):
    """The bus could not take the records now; the sender should retry later."""


class Bus(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def publish(self, records: Sequence[Record]) -> None: ...

    def ready(self) -> bool: ...


Listener = Callable[[Record], Awaitable[None] | None]


class MemoryBus:
    """In-process bus: delivers to listeners synchronously and keeps a bounded tail per topic."""

    def __init__(self, keep: int = 10_000) -> None:
        self._keep = keep
        self._tails: dict[str, deque[Record]] = {}
        self._listeners: list[Listener] = []
        self.published = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def ready(self) -> bool:
        return True

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def tail(self, topic: str) -> list[Record]:
        return list(self._tails.get(topic, ()))

    async def publish(self, records: Sequence[Record]) -> None:
        for record in records:
            self._tails.setdefault(record.topic, deque(maxlen=self._keep)).append(record)
            for listener in self._listeners:
                result = listener(record)
                if result is not None:
                    await result
        self.published += len(records)


@dataclass(frozen=True, slots=True)
class KafkaOptions:
    """Producer settings tuned for throughput without giving up durability."""

    bootstrap: str
    client_id: str = "driftline"
    # A batch waits this long for more records. Keys spread records over every partition, so
    # batches are small; 20 ms against 5 ms took the receiver from 0.39-0.43 to 0.37-0.38 ms of
    # CPU per export at 2,000/s (three runs each), for ~12 ms more before an export's answer
    linger_ms: int = 20
    max_batch_size: int = 256 * 1024
    compression: str | None = "lz4"
    publish_timeout: float = 5.0
    topic_partitions: int = 12
    replication_factor: int = 1


class KafkaBus:
    """aiokafka producer with acks=all and idempotence; keeps retrying to connect in the
    background so a receiver can start (and report not-ready) while Kafka is down."""

    def __init__(self, options: KafkaOptions) -> None:
        self.options = options
        self._producer: Any = None
        self._batches: PartitionBatches | None = None
        self._connector: asyncio.Task[None] | None = None
        self._ready = False

    async def start(self) -> None:
        self._connector = asyncio.create_task(self._connect_forever())

    async def _connect_forever(self) -> None:
        from aiokafka import AIOKafkaProducer
        from aiokafka.errors import KafkaError

        from bus.batching import PartitionBatches

        delay = 0.5
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.options.bootstrap,
                client_id=self.options.client_id,
                acks="all",
                enable_idempotence=True,
                linger_ms=self.options.linger_ms,
                max_batch_size=self.options.max_batch_size,
                compression_type=self.options.compression,
                request_timeout_ms=int(max(self.options.publish_timeout * 2, 10) * 1000),
            )
            try:
                await producer.start()
            except (KafkaError, OSError) as error:
                log.warning("kafka not reachable at %s: %s", self.options.bootstrap, error)
                with contextlib.suppress(Exception):
                    await producer.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            await self._ensure_topics()
            self._producer = producer
            self._batches = PartitionBatches(producer, self.options.linger_ms / 1000)
            self._ready = True
            log.info("kafka producer connected to %s", self.options.bootstrap)
            return

    async def _ensure_topics(self) -> None:
        """Create Driftline's topics with our partitioning; an existing topic is left alone."""
        from aiokafka.admin import AIOKafkaAdminClient, NewTopic
        from aiokafka.errors import KafkaError

        admin = AIOKafkaAdminClient(bootstrap_servers=self.options.bootstrap)
        try:
            await admin.start()
            existing = set(await admin.list_topics())
            missing = [
                NewTopic(
                    name,
                    self.options.topic_partitions,
                    self.options.replication_factor,
                    topic_configs={"cleanup.policy": "compact"} if name in topics.COMPACTED else {},
                )
                for name in topics.ALL
                if name not in existing
            ]
            if missing:
                await admin.create_topics(missing)
        except KafkaError as error:  # another receiver may have won the race
            log.info("topic creation: %s", error)
        finally:
            await admin.close()

    def ready(self) -> bool:
        return self._ready

    async def wait_ready(self, within: float) -> None:
        """For one-shot publishers (CLI commands), which have nothing to do until connected."""
        if self._connector is None:
            raise BusUnavailable("bus not started")
        try:
            await asyncio.wait_for(asyncio.shield(self._connector), within)
        except TimeoutError as error:
            raise BusUnavailable(f"kafka not reachable at {self.options.bootstrap}") from error

    async def stop(self) -> None:
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._batches is not None:
            await self._batches.drain()
        if self._producer is not None:
            await self._producer.stop()
        self._ready = False

    async def publish(self, records: Sequence[Record]) -> None:
        from aiokafka.errors import KafkaError

        batches = self._batches
        if batches is None:
            raise BusUnavailable("kafka is not connected")
        try:
            async with asyncio.timeout(self.options.publish_timeout):
                await batches.send([(r.topic, r.key.encode(), r.value) for r in records])
        except TimeoutError as error:
            raise BusUnavailable(
                f"kafka did not acknowledge within {self.options.publish_timeout}s"
            ) from error
        except KafkaError as error:
            raise BusUnavailable(f"kafka: {error}") from error
