"""Run one processors worker (a Faust worker) in this process, for ``driftline processors worker``.

Start as many as needed, on any machines, with the same ``app_id``: they share the partitions,
and a survivor takes over a dead worker's partitions by replaying its changelog.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
from pathlib import Path
from typing import Any, Final

import faust
import uvloop

from processors.faust_app import APP_ID, Processors, build
from processors.topology import TopicNames, ensure_topics

log = logging.getLogger(__name__)

RECOVERY_STALLED_EXIT: Final = 75  # EX_TEMPFAIL: start me again


def run_worker(
    bootstrap: str,
    data_dir: Path,
    *,
    app_id: str = APP_ID,
    partitions: int = 12,
    topic_prefix: str = "",
    replication_factor: int = 1,
    loglevel: str = "info",
    recovery_stall: float = 120.0,
    **options: Any,
) -> None:
    """Create missing topics, then run the worker until SIGINT/SIGTERM (exits the process).

    ``options`` go to ``processors.faust_app.build`` (commit cadence, timeouts, …). A table
    recovery that reads nothing for ``recovery_stall`` seconds ends the process with exit code
    75, for its supervisor to restart it (0: wait forever, as Faust does).
    """
    # Young-generation collections every 50,000 net allocations instead of Python's 700:
    # Faust and aiokafka allocate hundreds of short-lived objects per event, and at the
    # default the collector ran thousands of times a second. The worker drains a fifth more
    # snapshots per second (bench-pipeline: 3,400 → 4,100 a second).
    gc.set_threshold(50_000, 20, 20)
    data_dir.mkdir(parents=True, exist_ok=True)
    names = TopicNames.with_prefix(topic_prefix)
    # A fresh loop of our own: Faust and mode pick up the current loop when they are built.
    # uvloop for it and for the consumer thread Faust starts (a third less latency at load).
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(ensure_topics(bootstrap, names, partitions, replication_factor))
    processors = build(
        bootstrap,
        app_id=app_id,
        data_dir=data_dir,
        partitions=partitions,
        topic_prefix=topic_prefix,
        replication_factor=replication_factor,
        **options,
    )
    log.info(
        "processors worker %s: %s → %s, %d partitions",
        app_id,
        ", ".join(names.copartitioned),
        names.flags,
        partitions,
    )
    worker = faust.Worker(processors.app, loop=loop, loglevel=loglevel, override_logging=False)
    watchdog = None  # referenced here while the worker runs: the loop keeps only weak ones
    if recovery_stall:
        watchdog = loop.create_task(_exit_when_recovery_stalls(processors, recovery_stall))
    worker.execute_from_commandline()
    del watchdog


async def _exit_when_recovery_stalls(processors: Processors, stall_after: float) -> None:
    remaining = await processors.recovery_stalled(stall_after, every=min(5.0, stall_after / 4))
    log.error(
        "table recovery read nothing for %.0f s with %d changelog records still to read "
        "(faust-streaming's recovery hang): exiting with %d so the worker is started again",
        stall_after,
        remaining,
        RECOVERY_STALLED_EXIT,
    )
    logging.shutdown()
    # at once, as kill -9 would: offsets are committed only for flags and states in Kafka, so
    # the next worker replays what this one had not finished (the kill -9 test shows it)
    os._exit(RECOVERY_STALLED_EXIT)
