"""Start-up of every `driftline mdm` and `actions` command: wall clock and CPU, over N runs.

CPU time is shown too because on a shared machine the wall clock mostly measures the others.

    python scripts/cli_timings.py DATA_DIR [RUNS]

Run it twice: with no `driftline run` on DATA_DIR (commands that need the store open the
embedded ClickHouse themselves), and with one running (they ask it over the admin port).
"""

from __future__ import annotations

import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commands(data: Path) -> list[list[str]]:
    secret = data / "secret.txt"
    secret.parent.mkdir(parents=True, exist_ok=True)
    secret.write_text("not-a-real-token")
    base = ["--data", str(data)]
    return [
        ["mdm", "connect", "--tenant", "acme", "--vendor", "iru", "--base-url",
         "http://127.0.0.1:9", *base],
        ["mdm", "credentials", "set", "--tenant", "acme", "--vendor", "iru",
         "--secret-file", str(secret), *base],
        ["mdm", "credentials", "status", *base],
        ["mdm", "import", str(REPO / "examples" / "compliance.csv"), "--vendor", "iru",
         "--tenant", "acme", *base],
        ["mdm", "pull", "--tenant", "beta", *base],
        ["actions", "run", "--tenant", "acme", *base],
        ["actions", "stop", *base],
        ["actions", "resume", *base],
        ["actions", "serve", "--help"],
    ]  # fmt: skip


def main(data: Path, runs: int) -> None:
    driftline = str(Path(sys.executable).with_name("driftline"))
    for argv in commands(data):
        times, cpu = [], []
        for _ in range(runs):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([driftline, *argv], capture_output=True, check=True)  # noqa: S603
            times.append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        name = " ".join(a for a in argv[:3] if not a.startswith(("-", "/")))
        print(
            f"{name:24} wall median {statistics.median(times):.2f} s, max {max(times):.2f} s;"
            f" CPU median {statistics.median(cpu):.2f} s"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5)
