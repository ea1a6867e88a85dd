"""Where each input partition stands: our offsets, kept instead of Faust's.

Faust 0.15 can acknowledge records nobody processed around rebalances (see ``faust_app``), so
the inputs are declared without Faust acks and ``Processors`` tracks, per partition of the
current consumer generation, the next offset it must process (``Offsets``). It starts at the
group's committed offset (``committed_offsets``), moves one event at a time, and is compared
with the partition's end (``highwater``) to find partitions that stopped short. What gets
committed trails it: ``settled`` moves once a batch of events is settled.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition


@dataclass(slots=True)
class Offsets:
    """Per input partition of the current consumer generation: the next offset to process,
    and the next one whose predecessors are *settled* (flags acked, states written): only
    those may be committed."""

    generation: int = -1
    next: dict[Any, int] = field(default_factory=dict)
    settled: dict[Any, int] = field(default_factory=dict)
    committed: dict[Any, int] = field(default_factory=dict)
    rewound_to: dict[Any, int] = field(default_factory=dict)
    moved_at: dict[Any, float] = field(default_factory=dict)

    def reset(self, generation: int, starts: dict[Any, int]) -> None:
        now = time.monotonic()
        self.generation = generation
        self.next = dict(starts)
        self.settled = dict(starts)
        self.committed = dict(starts)
        self.rewound_to = {}
        self.moved_at = dict.fromkeys(starts, now)


async def committed_offsets(bootstrap: str, group: str, tps: set[Any]) -> dict[Any, int]:
    """The committed offset of each of ``tps`` that has one in consumer group ``group``."""
    from aiokafka.admin import AIOKafkaAdminClient

    if not tps:
        return {}
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        found = await admin.list_consumer_group_offsets(
            group, partitions=[TopicPartition(tp.topic, tp.partition) for tp in tps]
        )
    finally:
        await admin.close()
    by_name = {(tp.topic, tp.partition): meta.offset for tp, meta in found.items()}
    return {
        tp: by_name[(tp.topic, tp.partition)]
        for tp in tps
        if by_name.get((tp.topic, tp.partition), -1) >= 0
    }


def highwater(consumer: Any, tp: Any) -> int | None:
    """The partition's end as the consumer last saw it; None once it is no longer assigned."""
    try:
        return consumer.highwater(tp)  # type: ignore[no-any-return]
    except KafkaError:  # IllegalStateError: not assigned any more
        return None
