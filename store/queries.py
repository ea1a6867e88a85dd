"""The questions the CLI and the stages ask the store, as bound-parameter SQL; saved SQL files.

Every query is scoped to one tenant; `tenant=None` (all tenants) is for administrators and only
reachable through an explicit `--all-tenants` flag.
"""

from __future__ import annotations

from typing import Any

from clickhouse_connect.driver.client import Client

from store.client import query_dicts
from store.rows import TABLE_COLUMNS

# SQL here is assembled only from these constants; every value is a bound parameter, which is
# why the S608 (SQL built from strings) warnings below are silenced.
_OPTIONAL = "({name:Nullable(String)} IS NULL OR {column} = {name:Nullable(String)})"


def _where(**filters: str) -> str:
    return " AND ".join(
        _OPTIONAL.replace("{name", "{" + name).replace("{column}", column)
        for name, column in filters.items()
    )


def current_drift(client: Client, tenant_id: str) -> list[dict[str, Any]]:
    """A tenant's open drift flags with their endpoint's team, service and version."""
    return query_dicts(
        client,
        "SELECT * FROM drift_current WHERE tenant_id = {tenant_id:String} "
        "ORDER BY endpoint_id, kind, flag_id",
        {"tenant_id": tenant_id},
    )


def latest_endpoints(client: Client, tenant_id: str) -> list[dict[str, Any]]:
    """A tenant's endpoints, each in its latest known state."""
    return query_dicts(
        client,
        "SELECT * FROM endpoints_latest WHERE tenant_id = {tenant_id:String} ORDER BY endpoint_id",
        {"tenant_id": tenant_id},
    )


def optimize(client: Client, table: str) -> None:
    """Merge a table's parts now (tests, maintenance); queries never depend on it."""
    if table not in TABLE_COLUMNS:
        raise ValueError(f"unknown table {table!r}")
    client.command("OPTIMIZE TABLE {table:Identifier} FINAL", parameters={"table": table})


def drift(
    client: Client,
    tenant: str | None,
    kind: str | None = None,
    team: str | None = None,
    service: str | None = None,
) -> list[dict[str, Any]]:
    """Open drift flags with the endpoint's team, service and version."""
    sql = (
        "SELECT tenant_id, endpoint_id, kind, detail, team_id, service_name, app_version, "  # noqa: S608
        "first_seen, last_seen, policy_version, flag_id FROM drift_current WHERE "
        + _where(tenant="tenant_id", kind="kind", team="team_id", service="service_name")
        + " ORDER BY tenant_id, endpoint_id, kind"
    )
    return query_dicts(
        client, sql, {"tenant": tenant, "kind": kind, "team": team, "service": service}
    )


def endpoint_history(client: Client, tenant: str | None, endpoint_id: str) -> dict[str, Any]:
    """One endpoint: each distinct state it reported, every flag transition, recent rejections."""
    scope = _where(tenant="tenant_id") + " AND endpoint_id = {endpoint:String}"
    parameters = {"tenant": tenant, "endpoint": endpoint_id}
    states = query_dicts(
        client,
        "SELECT service_name, app_version, team_id, serial_number, resource_attributes, "  # noqa: S608
        "min(first_seen) AS first_seen, max(last_seen) AS last_seen FROM endpoint_states FINAL "
        f"WHERE {scope} GROUP BY state_hash, service_name, app_version, team_id, "
        "serial_number, resource_attributes ORDER BY first_seen",
        parameters,
    )
    flags = query_dicts(
        client,
        "SELECT kind, state, detail, first_seen, last_seen, policy_version, flag_id "  # noqa: S608
        f"FROM drift_flags FINAL WHERE {scope} ORDER BY last_seen, state DESC",
        parameters,
    )
    rejections = query_dicts(
        client,
        "SELECT reason, token_id, source, observed_at FROM auth_events FINAL "  # noqa: S608
        f"WHERE {scope} ORDER BY observed_at DESC LIMIT 50",
        parameters,
    )
    return {"endpoint_id": endpoint_id, "states": states, "flags": flags, "rejections": rejections}


def flag_transitions(client: Client, tenant: str) -> list[dict[str, Any]]:
    """Every flag transition of one tenant, with when the store recorded it: what a load test
    compares with its ground truth (and times flags by)."""
    return query_dicts(
        client,
        "SELECT endpoint_id, kind, state, flag_id, first_seen, last_seen, recorded_at "
        "FROM drift_flags FINAL WHERE tenant_id = {tenant:String} "
        "ORDER BY endpoint_id, kind, first_seen, state DESC",
        {"tenant": tenant},
    )
