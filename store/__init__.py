"""The ClickHouse store: one client factory, migrations, rows, the batch writer, queries, the sink.

One engine, two places: ``chdb://PATH`` runs ClickHouse in-process (embedded default, tests),
``http(s)://user:pass@host:8123/db`` talks to a server. Both give the same clickhouse-connect
``Client`` and the same SQL, so nothing above this package knows which one it has. The sink
(``store.sink``) is imported on its own: it pulls in the Kafka client.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from store.client import connect, query_dicts
from store.migrations import DEFAULT_TTL_DAYS, Migration, applied_versions, load_migrations, migrate
from store.queries import current_drift, latest_endpoints, optimize
from store.rows import TABLE_COLUMNS, Heartbeats, StoreMessage, insert_rows, row_for, state_hash
from store.writer import BatchWriter, WriterClosed

__all__ = [
    "DEFAULT_TTL_DAYS",
    "TABLE_COLUMNS",
    "BatchWriter",
    "Client",
    "Heartbeats",
    "Migration",
    "StoreMessage",
    "WriterClosed",
    "applied_versions",
    "connect",
    "current_drift",
    "insert_rows",
    "latest_endpoints",
    "load_migrations",
    "migrate",
    "optimize",
    "query_dicts",
    "row_for",
    "state_hash",
]
