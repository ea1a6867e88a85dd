"""A pytest plugin: no process a test started outlives the session, even when the test fails.

Tests start real processes (`driftline run`, receivers, Faust workers, sinks) and each stops its
own in a ``finally``; this is the net under them. The session marks its environment with an id
that every descendant inherits (a `driftline ingest` worker whose parent was killed included),
and at the end stops each process still carrying it, naming it: a leak is a bug to fix. The
local Kafka broker is spared on purpose (the next run reuses it; `make test` stops it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import uuid
from pathlib import Path

import pytest

MARK = "DRIFTLINE_TEST_SESSION"
GRACE = 5.0  # seconds between SIGTERM and SIGKILL


def pytest_configure(config: pytest.Config) -> None:
    os.environ[MARK] = uuid.uuid4().hex


def _spared() -> set[int]:
    from tests.support.kafka import LOCAL_DATA_DIR

    pid_file = LOCAL_DATA_DIR / "kafka.pid"
    try:
        return {int(pid_file.read_text().split()[0])}
    except (OSError, ValueError, IndexError):
        return set()


def marked_processes(mark: str) -> dict[int, str]:
    """Processes (other than this one) started with ``MARK=mark``: pid → command line."""
    needle = f"{MARK}={mark}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if command:  # a zombie has none: it is only waiting to be reaped
            found[int(entry.name)] = command.strip()
    return found


def stop(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL whatever is still there after the grace."""
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE
    while time.monotonic() < deadline and any(_alive(pid) for pid in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            _signal(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    mark = os.environ.get(MARK)
    if not mark or not Path("/proc").is_dir():
        return
    spared = _spared()
    leftovers = {p: c for p, c in marked_processes(mark).items() if p not in spared}
    if not leftovers:
        return
    stop(list(leftovers))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    lines = [f"stopped {len(leftovers)} process(es) the tests left running:"]
    lines += [f"  {pid}: {command[:200]}" for pid, command in sorted(leftovers.items())]
    if reporter is not None:
        reporter.write_line("\n".join(lines), yellow=True)
    else:
        print("\n".join(lines))
