"""Debian's Chromium for the browser tests, installed when missing and possible.

Playwright drives the system's /usr/bin/chromium; it never downloads a browser of its own
(`playwright install` is not used). When Chromium is missing, the set-up installs the
`chromium` apt package if it runs as root on a Debian-like system; otherwise it says what is
needed. Under CI a missing browser is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / ".cache" / "screenshots"


def ensure_chromium() -> Path:
    """The path of a usable Chromium, or RuntimeError naming what to install."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update"], check=True, capture_output=True, env=env, timeout=600)
        subprocess.run(
            [apt, "install", "-y", "--no-install-recommends", "chromium"],
            check=True,
            capture_output=True,
            env=env,
            timeout=1200,
        )
        if CHROMIUM.exists():
            return CHROMIUM
    raise RuntimeError(
        "the browser tests need Debian's Chromium at /usr/bin/chromium: "
        "run `sudo apt-get install -y chromium` (or run the tests as root on Debian, "
        "which installs it)"
    )
