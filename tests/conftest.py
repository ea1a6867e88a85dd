from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bus import Bus, MemoryBus
from ingest.receiver import Receiver, ReceiverOptions
from ingest.service import IngestOptions, IngestService
from ingest.tokens import Authenticator, TokenStore

# no process a test started outlives the session; a long test says it is still running
pytest_plugins = ["tests.support.leftovers", "tests.support.heartbeat"]


@dataclass
class RunningReceiver:
    receiver: Receiver
    bus: Bus
    store: TokenStore
    token: str  # an active token of tenant "acme"

    @property
    def grpc_port(self) -> int:
        return self.receiver.grpc_port

    @property
    def http_port(self) -> int:
        return self.receiver.http_port


async def start_receiver(
    tmp: Path,
    bus: Bus,
    options: IngestOptions | None = None,
    receiver_options: ReceiverOptions | None = None,
) -> RunningReceiver:
    store = TokenStore(tmp / "tokens.db")
    _, token = store.create("acme")
    # refresh_every=0: tests rotate and revoke tokens and expect the very next request to see it
    # no shedding unless a test asks: the test's own clients share the receiver's event loop
    options = options or IngestOptions(shedding=None)
    service = IngestService(Authenticator(store.path, refresh_every=0), bus, options)
    receiver = Receiver(service, receiver_options or ReceiverOptions(grpc_port=0, http_port=0))
    await bus.start()
    await receiver.start()
    return RunningReceiver(receiver, bus, store, token)


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[RunningReceiver]:
    running = await start_receiver(tmp_path, MemoryBus())
    yield running
    await running.receiver.stop(grace=0)
    await running.bus.stop()


@pytest.fixture(scope="session")
def kafka() -> str:
    """A real broker's bootstrap address. Under CI a missing Kafka is an error, never a skip."""
    from tests.support.kafka import kafka_bootstrap

    try:
        return kafka_bootstrap()
    except Exception as error:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no Kafka available: {error}")
