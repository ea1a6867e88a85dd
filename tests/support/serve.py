"""An MDM emulator served from a background thread, for tests that drive real processes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from tests.emulators.base import Emulator

E = TypeVar("E", bound=Emulator)
T = TypeVar("T")


class Served:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the emulator's loop (emulator state is not thread-safe)."""

        async def wrapper() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=10)

    def run(self, coro: Awaitable[T]) -> T:
        async def wrapper() -> T:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapper(), self.loop).result(timeout=60)


@contextmanager
def in_thread(emulator: E) -> Iterator[Served]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    served = Served(loop)
    served.run(emulator.start())
    try:
        yield served
    finally:
        served.run(emulator.stop())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
