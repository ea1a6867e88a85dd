"""`make install`'s progress: phases and counts shown, setuptools' warning blocks hidden,
pip's own words shown when it fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install_progress.py"

PIP_OUTPUT = """\
Obtaining file:///src/driftline
Collecting aiohttp<4,>=3.10
  Downloading aiohttp-3.12.0-cp311-cp311-manylinux_x86_64.whl (1.7 MB)
Collecting chdb<5,>=3
  Downloading chdb-3.6.0-cp38-abi3-manylinux_x86_64.whl (120.5 MB)
Building wheels for collected packages: driftline
  /tmp/pip-build-env/setuptools/editable_wheel.py:354: BuildBackendWarning: Editable install.
  !!
          Please be careful with folders in your working directory with the same
  !!
Installing collected packages: aiohttp, chdb, driftline
Successfully installed aiohttp-3.12.0 chdb-3.6.0 driftline-0.1.0
"""


def fake_pip(tmp_path: Path, exit_code: int) -> list[str]:
    (tmp_path / "pip.txt").write_text(PIP_OUTPUT)
    text = str(tmp_path / "pip.txt")
    code = f"print(open({text!r}).read(), end=''); raise SystemExit({exit_code})"
    return [sys.executable, str(SCRIPT), sys.executable, "-c", code]


def test_shows_phases_and_counts_and_hides_warning_blocks(tmp_path: Path) -> None:
    result = subprocess.run(fake_pip(tmp_path, 0), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    out = result.stdout
    assert "3 packages collected; building the local package" in out
    assert "installing 3 packages (the largest, chDB, takes a while)" in out
    assert "installed 3 packages" in out
    assert "BuildBackendWarning" not in out + result.stderr
    assert "!!" not in out + result.stderr


def test_a_failing_pip_is_shown_with_its_exit_code(tmp_path: Path) -> None:
    result = subprocess.run(fake_pip(tmp_path, 3), capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert "pip failed (exit 3)" in result.stderr
    assert "Successfully installed aiohttp" in result.stderr  # pip's own last lines
