"""A test that fails (or forgets) with processes running leaves none behind the session."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LEAKY = """
import subprocess, sys
from pathlib import Path

def test_fails_with_processes_running(tmp_path_factory):
    out = Path({out!r})
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    # a grandchild whose parent is gone, as a killed `driftline ingest` leaves its workers
    orphan = subprocess.run(["sh", "-c", "sleep 600 >/dev/null 2>&1 & echo $!"],
                            capture_output=True, text=True, check=True).stdout.strip()
    out.write_text(f"{{child.pid}} {{orphan}}")
    assert False, "a failing test"
"""


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_the_session_stops_what_a_failing_test_left_running(tmp_path: Path) -> None:
    pids_file = tmp_path / "pids"
    (tmp_path / "test_leaky.py").write_text(LEAKY.format(out=str(pids_file)))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.support.leftovers",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", os.devnull,
         str(tmp_path / "test_leaky.py")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr  # the test failed…
    pids = [int(p) for p in pids_file.read_text().split()]
    deadline = time.monotonic() + 5
    while any(_running(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _running(p)]  # …and nothing it started is left
    assert "stopped 2 process(es) the tests left running" in result.stdout


def test_a_long_test_says_it_is_still_running(tmp_path: Path) -> None:
    (tmp_path / "test_slow.py").write_text(
        "import time\ndef test_slow():\n    print('captured')\n    time.sleep(2.6)\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.support.heartbeat",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), "-c", os.devnull,
         str(tmp_path / "test_slow.py")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTEST_HEARTBEAT_SECONDS": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "still running test_slow.py::test_slow (1 s)" in result.stdout
    assert "still running test_slow.py::test_slow (2 s)" in result.stdout
    assert "captured" not in result.stdout  # the test's own output stays captured
