"""Run a `pip install` and show what it is doing, briefly: `make install`'s progress.

pip is either silent (``-q``: minutes without a word on a fresh machine) or far too loud (a
line per package, and setuptools' warning blocks). This prints the phase, the packages so far
and the elapsed time, at least every 15 s and at most every 5 s, and hides the rest; when pip
fails, its last lines are shown so the error is not hidden. Standard library only: it runs
before anything is installed.

    python scripts/install_progress.py PIP_EXECUTABLE install ARGS...
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections import deque

QUIET_AT_MOST = 15.0  # seconds without a line before a "still …" line
CHATTY_AT_MOST = 5.0  # seconds between two progress lines of the same phase

_COLLECTING = re.compile(r"^(?:Collecting|Obtaining)\s+(\S+)")
_DOWNLOADING = re.compile(r"^\s*Downloading\s+(\S+)\s+\(([\d.]+)\s*(kB|MB|GB)\)")
_INSTALLING = re.compile(r"^Installing collected packages: (.*)$")
_SUCCESS = re.compile(r"^Successfully installed (.*)$")
_UNIT = {"kB": 1e-3, "MB": 1.0, "GB": 1e3}


class Progress:
    """Turns pip's lines into a few progress lines; `heartbeat` fills the silences."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.last_print = 0.0
        self.phase = "resolving"
        self.collected = 0
        self.latest = ""
        self.downloaded_mb = 0.0
        self.lock = threading.Lock()

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.start
        print(f"  [{elapsed:4.0f} s] {text}", flush=True)
        self.last_print = time.monotonic()

    def status(self) -> str:
        if self.phase == "resolving":
            size = f", {self.downloaded_mb:.0f} MB downloaded" if self.downloaded_mb else ""
            return f"collecting packages: {self.collected} so far ({self.latest}{size})"
        return self.phase

    def line(self, text: str) -> None:
        with self.lock:
            if match := _COLLECTING.match(text):
                self.collected += 1
                self.latest = match.group(1)
                if time.monotonic() - self.last_print >= CHATTY_AT_MOST:
                    self.say(self.status())
            elif match := _DOWNLOADING.match(text):
                self.downloaded_mb += float(match.group(2)) * _UNIT[match.group(3)]
            elif text.startswith("Building ") and self.phase == "resolving":
                self.phase = "building the local package"
                self.say(f"{self.collected} packages collected; {self.phase}")
            elif match := _INSTALLING.match(text):
                names = [n.strip() for n in match.group(1).split(",")]
                self.phase = f"installing {_count(names)}"
                if "chdb" in names:
                    self.phase += " (the largest, chDB, takes a while)"
                self.say(self.phase)
            elif match := _SUCCESS.match(text):
                self.phase = "done"
                self.say(f"installed {_count(match.group(1).split())}")

    def heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            with self.lock:
                if time.monotonic() - self.last_print >= QUIET_AT_MOST:
                    self.say(f"still {self.status()}")


def _count(names: list[str]) -> str:
    return "1 package" if len(names) == 1 else f"{len(names)} packages"


def main(command: list[str]) -> int:
    if not command:
        print(__doc__, file=sys.stderr)
        return 2
    progress = Progress()
    recent: deque[str] = deque(maxlen=60)
    process = subprocess.Popen(  # noqa: S603 (the command is make's own pip)
        [*command, "--progress-bar", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    stop = threading.Event()
    beat = threading.Thread(target=progress.heartbeat, args=(stop,), daemon=True)
    beat.start()
    assert process.stdout is not None
    for text in process.stdout:
        recent.append(text.rstrip("\n"))
        progress.line(text)
    code = process.wait()
    stop.set()
    beat.join()
    if code != 0:
        print(f"pip failed (exit {code}); its last lines:", file=sys.stderr)
        print("\n".join(recent), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
