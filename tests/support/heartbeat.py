"""A pytest plugin: a test that runs long says so, so `make test` is never silent for a minute.

`pytest -q` prints a dot per finished test; the Kafka, Faust and pipeline tests can take a minute
or more each, which on a terminal looks like a hang. Every ``EVERY`` seconds (30, or
``$PYTEST_HEARTBEAT_SECONDS``) a running test is named with its elapsed time.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator

import pytest

EVERY = float(os.environ.get("PYTEST_HEARTBEAT_SECONDS") or 30)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, None, None]:
    done = threading.Event()
    start = time.monotonic()
    plugins = item.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")

    def beat() -> None:
        while not done.wait(EVERY):
            if reporter is None or capture is None:
                return
            # past the test's own output capture, as pytest's live logging does
            with capture.global_and_fixture_disabled():
                elapsed = time.monotonic() - start
                reporter.write_line(f"\n  still running {item.nodeid} ({elapsed:.0f} s)")

    thread = threading.Thread(target=beat, daemon=True, name="test-heartbeat")
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
