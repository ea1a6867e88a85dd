"""`driftline actions serve`: the remediation stage of the Kafka deployment.

New drift arrives on ``driftline.flags``; a raised flag wakes a remediation pass (and one runs
every ``actions_interval`` anyway, for MDM-only reasons and retries). The pass reads its picture
from ClickHouse, where the sink writes flags, so it waits ``settle`` seconds after a wake-up for
the sink's batch to land. The flags topic is only a doorbell: a missed message delays a pass by
at most one interval, it loses nothing. Audit rows go to ClickHouse and ``driftline.actions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

import store
from actions import operations
from actions.executor import Progress
from actions.integrations import IntegrationStore
from driftline.policies import PolicyDirectory
from driftline.settings import Settings
from schemas import topics
from schemas.messages import DriftFlag, FlagState

if TYPE_CHECKING:  # the Kafka client and the receiver's runner load only for `serve`: the
    # CLI's one-off operations (`run_local`) start in a fraction of the time without them
    from aiokafka import AIOKafkaConsumer

log = logging.getLogger(__name__)


async def _doorbell(consumer: AIOKafkaConsumer, wake: asyncio.Event) -> None:
    async for message in consumer:
        try:
            flag = DriftFlag.from_json(message.value)
        except ValidationError:
            log.warning("unreadable message on %s at offset %d", message.topic, message.offset)
            continue
        if flag.state is FlagState.RAISED:
            wake.set()


async def serve(settings: Settings, dsn: str, group: str, settle: float = 2.0) -> None:
    from aiokafka import AIOKafkaConsumer

    from bus import KafkaBus, KafkaOptions
    from driftline.ingest_runner import until_signalled

    client = await asyncio.to_thread(store.connect, dsn)
    await asyncio.to_thread(store.migrate, client)
    bus = KafkaBus(KafkaOptions(settings.bootstrap, client_id="driftline-actions"))
    await bus.start()
    consumer = AIOKafkaConsumer(
        topics.FLAGS,
        bootstrap_servers=settings.bootstrap,
        group_id=group,
        client_id="driftline-actions",
        auto_offset_reset="latest",
        enable_auto_commit=True,
        metadata_max_age_ms=10_000,
    )
    await consumer.start()
    wake = asyncio.Event()
    wake.set()  # one pass at start: catch up with whatever happened while we were down
    dead_letter = settings.data / "dead-letter.jsonl"
    async with store.BatchWriter(client, max_delay=0.2, dead_letter=dead_letter) as writer:
        ctx = operations.Context(
            store=client,
            writer=writer,
            data=settings.data,
            integrations=IntegrationStore(settings.integrations_file),
            policies=PolicyDirectory(settings.data / "policies").get,
            bus=bus,
        )
        tasks = [
            asyncio.create_task(_doorbell(consumer, wake)),
            asyncio.create_task(
                operations.remediate_forever(ctx, settings.schedule(settle=settle), wake)
            ),
        ]
        log.info(
            "actions serving (%s), flags from %s",
            "LIVE" if settings.actions_live else "dry-run",
            settings.bootstrap,
        )
        try:
            await until_signalled()
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await consumer.stop()
            await bus.stop()
    client.close()


async def run_local(
    dsn: str,
    data: Path,
    integrations: Path,
    name: str,
    args: dict[str, Any],
    progress: Progress | None = None,
) -> Any:
    """Run one operation in this process, owning the store for its duration."""
    client = await asyncio.to_thread(store.connect, dsn)
    try:
        await asyncio.to_thread(store.migrate, client)
        async with store.BatchWriter(
            client, max_delay=0.05, dead_letter=data / "dead-letter.jsonl"
        ) as writer:
            ctx = operations.Context(
                store=client,
                writer=writer,
                data=data,
                integrations=IntegrationStore(integrations),
                policies=PolicyDirectory(data / "policies").get,
                progress=progress,
            )
            return await operations.run_operation(ctx, name, args)
    finally:
        client.close()
