"""Driftline commands as real processes on real ports, for tests and benchmarks."""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def cli(
    data: Path, *args: str, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """One `driftline` command as its own process over the data directory ``data``."""
    return subprocess.run(
        [sys.executable, "-m", "driftline.cli", *args, "--data", str(data)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(
    admin_port: int, process: subprocess.Popen[bytes], timeout: float = 60, host: str = "127.0.0.1"
) -> None:
    """Until the admin port answers /readyz with 200; fails at once if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited during start-up with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://{host}:{admin_port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("not ready in time")


_PROBE = """
import sys, contextlib, io
from driftline.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
    main(sys.argv[1:])
heavy = {"clickhouse_connect", "chdb", "aiohttp", "httpx", "grpc", "faust", "aiokafka"}
print(sorted({m.split(".")[0] for m in sys.modules} & heavy))
"""


def heavy_imports(*argv: str) -> list[str]:
    """The heavy libraries a `driftline` command loads (the store, servers, HTTP clients)."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, check=True
    )
    imported: list[str] = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    return imported
