"""The one ClickHouse client factory, and the one way to read rows.

One engine, two places: ``chdb://PATH`` runs ClickHouse in-process (embedded default, tests),
``http(s)://user:pass@host:8123/db`` talks to a server. Both give the same clickhouse-connect
``Client`` and the same SQL, so nothing above this module knows which one it has.

chdb is in-process, and that has rules (checked against chdb 4.4 / ClickHouse 26.9):

- One engine path per process. Any number of clients on the *same* path work (each has its own
  session; they share the data, and can be used from different threads). A client on a
  *different* path raises ``ProgrammingError`` while any client of the first path is still open;
  once all are closed, another path can be opened. Close clients you are done with.
- One process per path. A second process opening a path that another process holds fails at
  ``connect`` ("Cannot lock file …/status. Another server instance in same directory is already
  running"). Several processes (e.g. one ingest worker per core) must use a server, or hand their
  rows to the one process that owns the chdb path.
- A chdb client serialises its own calls with a lock, so one client used from a writer thread and
  from the event loop is safe, just not parallel.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import clickhouse_connect
from clickhouse_connect.driver.client import Client

log = logging.getLogger(__name__)


_CHDB: Final = "chdb://"


def connect(dsn: str) -> Client:
    """The one client factory: ``chdb://PATH`` (directory created) or ``http(s)://…``.

    Everything after ``chdb://`` is the path, so ``chdb:///var/lib/driftline`` is absolute and
    ``chdb://.driftline/clickhouse`` is relative (clickhouse-connect's own parsing would read the
    first segment of the latter as a host). ``chdb://:memory:`` is an in-memory engine.
    Timestamps come back timezone-aware; HTTP clients get no session id, so one client can be
    shared by threads (a session would serialise them and reject concurrent queries).
    """
    if dsn.startswith(_CHDB):
        location = dsn[len(_CHDB) :]
        if not location or location == ":memory:":
            return clickhouse_connect.get_client(interface="chdb", tz_mode="aware")
        path = Path(location).expanduser()
        path.mkdir(parents=True, exist_ok=True)
        return clickhouse_connect.get_client(interface="chdb", path=str(path), tz_mode="aware")
    if dsn.startswith(("http://", "https://")):
        return clickhouse_connect.get_client(
            dsn=dsn, tz_mode="aware", autogenerate_session_id=False
        )
    scheme = dsn.split("://", 1)[0] if "://" in dsn else "(none)"
    raise ValueError(
        f"unsupported store DSN scheme {scheme!r}: use chdb://PATH, http://… or https://…"
    )


def query_dicts(
    client: Client, sql: str, parameters: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows as dicts. Values travel as bound ``{name:Type}`` parameters, never inside the SQL."""
    result = client.query(sql, parameters=dict(parameters or {}))
    return [dict(row) for row in result.named_results()]
