"""What lives where in the data directory, and the rules for touching it.

Light on purpose (stdlib only): every CLI command imports it, and `driftline --help` and a
query against a running pipeline must stay fast.

The directory is owner-only (0700) and so is every file in it (0600): the token registry, the
store, the MDM credentials, the policies, the admin token. Commands that only read never
create it: a missing directory is an error ("no Driftline data at PATH"), never an empty answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from driftline.errors import NoData

DEFAULT = Path(".driftline")


def data_of(flag: Path | None) -> Path:
    """``--data``, else ``DRIFTLINE_DATA``, else ``./.driftline`` (the same rule as Settings)."""
    if flag is not None:
        return flag
    return Path(os.environ.get("DRIFTLINE_DATA") or DEFAULT)


def store_path(data: Path) -> Path:
    return data / "clickhouse"


def dead_letter_path(data: Path) -> Path:
    """Rows ClickHouse refused for their values, one JSON object a line (see BatchWriter)."""
    return data / "dead-letter.jsonl"


def run_file(data: Path) -> Path:
    """Where a running `driftline run` says how to reach it (it holds the chdb lock)."""
    return data / "run.json"


# any of these makes a directory a Driftline data directory
_MARKERS = ("tokens.db", "clickhouse", "policies", "mdm", "run.json", "admin.token")


def require(data: Path) -> Path:
    """The data directory of a read command, which must exist already and hold Driftline's
    files; nothing is created when it does not (an empty answer would read as "all clear")."""
    if not data.is_dir() or not any((data / marker).exists() for marker in _MARKERS):
        raise NoData(f"no Driftline data at {data.absolute()} (use --data)")
    return data


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) owner-only, and make an existing one owner-only too."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def owner_only() -> None:
    """Everything this process creates from now on is owner-only (files 0600, dirs 0700),
    including what libraries create for us (chDB's store files, SQLite's journals)."""
    os.umask(0o077)


def write_private(path: Path, text: str) -> None:
    """Replace a file atomically with owner-only content."""
    temporary = path.with_name(f".{path.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(text)
    temporary.replace(path)


def pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def running(data: Path) -> dict[str, Any] | None:
    """What run.json says about the `driftline run` holding this directory, if it is alive.

    A run.json whose process is gone (``kill -9``, a crash) is stale: None, and the caller
    reads the store itself.
    """
    try:
        info = json.loads(run_file(data).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # half-written or garbage: no process to talk to
    if not isinstance(info, dict) or not pid_alive(info.get("pid")):
        return None
    return info


def store_holder(store: Path) -> int | None:
    """The pid of the process holding a chDB store's lock, if one does (ClickHouse flocks
    ``status`` and writes its pid there), so the CLI can say so instead of crashing."""
    import fcntl

    status = store / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        first = status.read_text(errors="replace").split("\n", 1)[0]
        pid = first.removeprefix("PID:").strip()
        return int(pid) if pid.isdigit() else -1
    finally:
        os.close(fd)  # closing drops our own lock, if we got it
    return None
