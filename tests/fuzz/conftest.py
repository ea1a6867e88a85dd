"""Fuzzing budgets, and one receiver on its own thread for the endpoint fuzzers.

`make test` runs every fuzzer briefly (profile ``short``); `make fuzz` runs them long
(``DRIFTLINE_FUZZ=long``). Hypothesis keeps failing examples in .hypothesis/ and replays
them first next time; the checked-in corpus (``corpus/``) is replayed on every run.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from bus import MemoryBus
from ingest.service import IngestOptions
from tests.conftest import RunningReceiver, start_receiver

settings.register_profile(
    "short", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "long", max_examples=5000, deadline=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(os.environ.get("DRIFTLINE_FUZZ", "short"))


@dataclass
class Served:
    running: RunningReceiver
    loop: asyncio.AbstractEventLoop

    @property
    def token(self) -> str:
        return self.running.token

    @property
    def http_port(self) -> int:
        return self.running.http_port

    @property
    def grpc_port(self) -> int:
        return self.running.grpc_port


@pytest.fixture(scope="session")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """A real receiver (MemoryBus) on a thread: the fuzzers are plain blocking clients."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    running = asyncio.run_coroutine_threadsafe(
        start_receiver(tmp, MemoryBus(), IngestOptions(shedding=None)), loop
    ).result(timeout=30)
    yield Served(running, loop)
    asyncio.run_coroutine_threadsafe(running.receiver.stop(grace=0), loop).result(timeout=30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)
