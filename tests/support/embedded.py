"""`driftline run` as a real process on free ports, driven the way an admin would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.processes import free_port, wait_ready


class Run:
    """A `driftline run` process on free ports over one data directory."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *flags: str, **env_overrides: str) -> None:
        env = {**os.environ, **env_overrides}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "driftline.cli", "run", "--data", str(self.data),
             "--grpc-port", str(self.ports["grpc"]), "--http-port", str(self.ports["http"]),
             "--admin-port", str(self.ports["admin"]), *flags],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        host = flags[flags.index("--host") + 1] if "--host" in flags else "127.0.0.1"
        try:
            wait_ready(self.ports["admin"], self.process, timeout=60, host=host)
        except BaseException as error:  # never leave a half-started pipeline behind
            self.process.kill()
            output = self.process.communicate(timeout=30)[0].decode(errors="replace")
            self.process = None
            if isinstance(error, Exception):
                raise RuntimeError(f"driftline run did not become ready:\n{output}") from error
            raise

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> str:
        assert self.process is not None
        self.process.send_signal(sig)
        output = self.process.communicate(timeout=60)[0].decode()
        self.process = None
        return output

    def cli(self, *args: str) -> str:
        return self.attempt(*args, check=True).stdout

    def attempt(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        """A CLI command over this data directory, its rc and output, failing or not."""
        return subprocess.run(
            [sys.executable, "-m", "driftline.cli", *args, "--data", str(self.data)],
            capture_output=True, text=True, check=check, timeout=120,
        )  # fmt: skip

    def drift(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = json.loads(self.cli("drift", "--tenant", "acme", "--json"))
        return rows

    def open_flags(self) -> set[tuple[str, str]]:
        return {(row["endpoint_id"], row["kind"]) for row in self.drift()}


def until(predicate: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")
