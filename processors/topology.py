"""The Kafka topics of one processors deployment: their names, and creating them.

The agent's inputs (snapshots, auth events, re-evaluation requests) must be co-partitioned with
the state table, so ``ensure_topics`` refuses inputs whose partition counts differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from schemas import topics

log = logging.getLogger(__name__)

REEVALUATE: Final = "driftline.reevaluate"


@dataclass(frozen=True, slots=True)
class TopicNames:
    """The topics one deployment uses; a prefix gives tests (or environments) their own set."""

    snapshots: str = topics.SNAPSHOTS
    auth_events: str = topics.AUTH_EVENTS
    policy: str = topics.POLICY
    flags: str = topics.FLAGS
    reevaluate: str = REEVALUATE

    @classmethod
    def with_prefix(cls, prefix: str) -> TopicNames:
        return cls(
            snapshots=prefix + topics.SNAPSHOTS,
            auth_events=prefix + topics.AUTH_EVENTS,
            policy=prefix + topics.POLICY,
            flags=prefix + topics.FLAGS,
            reevaluate=prefix + REEVALUATE,
        )

    @property
    def copartitioned(self) -> tuple[str, str, str]:
        """The agent's inputs: they must have the table's partition count."""
        return (self.snapshots, self.auth_events, self.reevaluate)


async def ensure_topics(
    bootstrap: str, names: TopicNames, partitions: int, replication_factor: int = 1
) -> None:
    """Create missing topics; refuse to run on inputs whose partition count differs, because
    co-partitioning (same key → same partition number in every input) is what keeps an
    endpoint's events and state on one worker."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        wanted = (names.snapshots, names.auth_events, names.reevaluate, names.flags, names.policy)
        existing = set(await admin.list_topics())
        missing = [
            NewTopic(
                name,
                partitions,
                replication_factor,
                topic_configs={"cleanup.policy": "compact"} if name == names.policy else {},
            )
            for name in wanted
            if name not in existing
        ]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):  # another worker won the race
                await admin.create_topics(missing)
        counts = await _partition_counts(admin, names.copartitioned)
        wrong = {name: count for name, count in counts.items() if count != partitions}
        if wrong:
            raise ValueError(
                f"topics {wrong} do not have {partitions} partitions: the processors need the "
                "same partition count on every input (set --partitions to match)"
            )
    finally:
        await admin.close()


async def _partition_counts(admin: Any, names: Iterable[str]) -> dict[str, int]:
    """Partition counts; a topic created a moment ago may show none for a while."""
    for _ in range(50):
        described = await admin.describe_topics(list(names))
        counts = {topic["topic"]: len(topic["partitions"]) for topic in described}
        if all(counts.values()):
            break
        await asyncio.sleep(0.1)
    return counts


async def partitions_of(bootstrap: str, topic: str) -> list[int]:
    """A topic's partitions, waiting for it to exist (listing first: describing a missing topic
    may auto-create it with the broker's defaults)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        while topic not in await admin.list_topics():
            log.info("waiting for topic %s", topic)
            await asyncio.sleep(1.0)
        [described] = await admin.describe_topics([topic])
        return sorted(partition["partition"] for partition in described["partitions"])
    finally:
        await admin.close()
