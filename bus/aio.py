"""asyncio helpers shared by the long-running loops."""

from __future__ import annotations

import asyncio


async def wait_at_most(event: asyncio.Event, seconds: float | None) -> bool:
    """Whether ``event`` was set within ``seconds`` (None: however long it takes).

    Not ``asyncio.wait_for``: in Python 3.11 it returns the result and drops a cancellation
    that arrives as the event is set, so a loop cancelled at that instant runs on (`driftline
    run` hung on SIGTERM that way when a flag woke its remediation loop).
    """
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
