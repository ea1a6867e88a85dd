"""A person's own SQL over one tenant's rows: read-only, and unable to see another tenant.

Three locks, each enough alone for what it covers:

1. ClickHouse's ``readonly = 1``: no writes, no DDL, no table functions, and no changing a
   setting from inside the query (so the next two cannot be switched off by the query).
2. ``additional_table_filters``: ClickHouse adds ``tenant_id IN (…)`` to every read of each of
   our tables, whether the query names it directly, through a view (drift_current, …), a CTE
   or a subquery.
3. An allowlist checked on ClickHouse's own parse (``EXPLAIN QUERY TREE``): the query may read
   only our tables and views, never ``system.*``, another database or a table function such
   as ``merge()``, which would read a table without the filter.

chDB keeps a session's ``readonly`` for good (it cannot be set back), so every query gets a
client of its own from ``connect``, closed afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from store.rows import TABLE_COLUMNS

# tables whose rows carry tenant_id (the filter) and the views over them
TENANT_TABLES: Final = tuple(TABLE_COLUMNS)
VIEWS: Final = (
    "endpoints_latest",
    "drift_current",
    "remediation_outcomes",
    "drift_open",
    "drift_episodes",
)
SAFE_TABLE_FUNCTIONS: Final = frozenset({"numbers", "one", "zeros"})
TENANT_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_TABLE: Final = re.compile(r"\bTABLE id: \d+.*?\btable_name: (\S+)")
_TABLE_FUNCTION: Final = re.compile(r"\bTABLE_FUNCTION id: \d+.*?\btable_function_name: (\S+)")


class Refused(ValueError):
    """The query reads something outside the tenant's tables, or writes."""


def check_tenants(tenants: Sequence[str]) -> list[str]:
    if not tenants:
        raise ValueError("name a tenant")
    for tenant in tenants:
        if not TENANT_NAME.match(tenant):
            raise ValueError(f"not a tenant name: {tenant!r}")
    return list(tenants)


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def table_filters(tenants: Sequence[str], database: str) -> str:
    """The ``additional_table_filters`` map: each table and view, bare and qualified."""
    condition = "tenant_id IN (" + ", ".join(_quote(t) for t in check_tenants(tenants)) + ")"
    entries = [
        f"{_quote(name)}: {_quote(condition)}"
        for table in (*TENANT_TABLES, *VIEWS)
        for name in (table, f"{database}.{table}")
    ]
    return "{" + ", ".join(entries) + "}"


def reads_of(query_tree: str) -> tuple[set[str], set[str]]:
    """Tables and table functions in an ``EXPLAIN QUERY TREE`` text (pure).

    A string constant could only add lines of its own, which can make the check stricter but
    never hide a real node."""
    tables = {m.group(1).rstrip(",") for m in _TABLE.finditer(query_tree)}
    functions = {m.group(1).rstrip(",") for m in _TABLE_FUNCTION.finditer(query_tree)}
    return tables, functions


def check_reads(tables: set[str], functions: set[str], database: str) -> None:
    allowed = {f"{database}.{name}" for name in (*TENANT_TABLES, *VIEWS)}
    if outside := sorted(tables - allowed):
        raise Refused(
            f"the query reads {', '.join(outside)}; only these may be read: "
            + ", ".join(sorted(n.split(".", 1)[1] for n in allowed))
        )
    if banned := sorted(functions - SAFE_TABLE_FUNCTIONS):
        raise Refused(f"table functions are not allowed here: {', '.join(banned)}")


def run(
    connect: Callable[[], Client],
    sql: str,
    tenants: Sequence[str],
    parameters: Mapping[str, Any] | None = None,
    max_rows: int = 10_000,
    timeout_s: int = 30,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of `sql` over `tenants`' rows only; raises Refused or the
    store's own error (which says what is wrong with the SQL)."""
    tenants = check_tenants(tenants)
    client = connect()
    try:
        database = str(client.command("SELECT currentDatabase()"))
        params = dict(parameters or {})
        # the filter first: once readonly is on, no setting may change. The EXPLAIN runs under
        # the same settings: analysis may evaluate a scalar subquery.
        settings: dict[str, Any] = {
            "additional_table_filters": table_filters(tenants, database),
            "max_execution_time": timeout_s,
            "max_result_rows": max_rows,
            "result_overflow_mode": "throw",
            "readonly": 1,
        }
        tree = client.query("EXPLAIN QUERY TREE " + sql, parameters=params, settings=settings)
        check_reads(*reads_of("\n".join(str(r[0]) for r in tree.result_rows)), database)
        result = client.query(sql, parameters=params, settings=settings)
        return list(result.column_names), [tuple(row) for row in result.result_rows]
    finally:
        client.close()
