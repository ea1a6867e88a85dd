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
    """One endpoint: each distinct state it reported (with when it was received), every flag
    transition, recent rejections."""
    scope = _where(tenant="tenant_id") + " AND endpoint_id = {endpoint:String}"
    parameters = {"tenant": tenant, "endpoint": endpoint_id}
    # first_seen/last_seen are when Driftline received the state (our clock); the endpoint's
    # own timestamps are a detail (telemetry_first/telemetry_last): a laptop's clock may be off
    states = query_dicts(
        client,
        "SELECT service_name, app_version, team_id, serial_number, resource_attributes, "  # noqa: S608
        "min(first_received) AS received_first, max(last_received) AS received_last, "
        "min(first_seen) AS telemetry_first, max(last_seen) AS telemetry_last "
        f"FROM endpoint_states FINAL WHERE {scope} GROUP BY state_hash, service_name, "
        "app_version, team_id, serial_number, resource_attributes "
        "ORDER BY coalesce(received_first, received_last), telemetry_first",
        parameters,
    )
    for state in states:
        state["first_seen"] = state.pop("received_first")
        state["last_seen"] = state.pop("received_last")
    flags = query_dicts(
        client,
        "SELECT kind, state, detail, first_seen, last_seen, policy_version, flag_id "  # noqa: S608
        f"FROM drift_flags FINAL WHERE {scope} ORDER BY last_seen, state DESC",
        parameters,
    )
    rejections = query_dicts(
        client,
        "SELECT reason, token_id, source, count, first_observed_at, observed_at "  # noqa: S608
        "FROM auth_events FINAL "
        f"WHERE {scope} ORDER BY observed_at DESC LIMIT 50",
        parameters,
    )
    serials = sorted({str(s["serial_number"]).lower() for s in states if s["serial_number"]})
    # Remediation of this endpoint: actions sent for its flags, and those an MDM's own report
    # caused for the device with its serial (no endpoint on those), each with its last step.
    actions = query_dicts(
        client,
        "SELECT argMax(state, at) AS last_state, max(at) AS last_at, any(vendor) AS vendor, "  # noqa: S608
        "any(device_id) AS device_id, any(action) AS action, any(reason) AS reason, "
        "argMax(detail, at) AS detail, dry_run, action_id FROM remediation_audit FINAL "
        f"WHERE {_where(tenant='tenant_id')} AND (endpoint_id = {{endpoint:String}} "
        "OR has({serials:Array(String)}, lower(ifNull(serial_number, '')))) "
        "GROUP BY action_id, dry_run ORDER BY last_at",
        {**parameters, "serials": serials},
    )
    return {
        "endpoint_id": endpoint_id,
        "states": states,
        "flags": flags,
        "rejections": rejections,
        "actions": actions,
    }


def endpoint_tokens(client: Client, tenant: str) -> list[dict[str, Any]]:
    """Per endpoint of the tenant and ingest token id: first and last accepted request."""
    return query_dicts(
        client,
        "SELECT endpoint_id, token_id, min(first_seen) AS first_seen, max(last_seen) AS last_seen "
        "FROM endpoint_tokens WHERE tenant_id = {tenant:String} "
        "GROUP BY endpoint_id, token_id ORDER BY endpoint_id, last_seen",
        {"tenant": tenant},
    )


# tables that name a tenant once it has sent anything or been acted on
_TENANT_TABLES = (
    "endpoint_states",
    "auth_events",
    "drift_flags",
    "compliance_records",
    "remediation_audit",
    "policy_changelog",
)


def tenant_seen(client: Client, tenant: str) -> bool:
    """Whether the store holds any row of the tenant (so an empty answer about it is true)."""
    sql = " UNION ALL ".join(
        f"(SELECT 1 FROM {table} WHERE tenant_id = {{tenant:String}} LIMIT 1)"  # noqa: S608
        for table in _TENANT_TABLES
    )
    rows = query_dicts(client, f"SELECT count() AS n FROM ({sql})", {"tenant": tenant})  # noqa: S608
    return bool(rows[0]["n"])


def find_endpoints(client: Client, tenant: str | None, given: str) -> list[str]:
    """Endpoint ids matching ``given``: the id itself, or its identity part (a bare serial).

    An endpoint id is ``tenant/identity`` and a tenant id has no ``/``, so the identity is
    everything after the first ``/``.
    """
    match = (
        "({tenant:Nullable(String)} IS NULL OR tenant_id = {tenant:Nullable(String)}) AND "
        "(endpoint_id = {given:String} OR "
        "substring(endpoint_id, position(endpoint_id, '/') + 1) = {given:String})"
    )
    rows = query_dicts(
        client,
        f"SELECT DISTINCT endpoint_id FROM (SELECT endpoint_id FROM endpoint_states WHERE {match} "  # noqa: S608
        f"UNION ALL SELECT endpoint_id FROM auth_events WHERE endpoint_id != '' AND {match}) "
        "ORDER BY endpoint_id",
        {"tenant": tenant, "given": given},
    )
    return [row["endpoint_id"] for row in rows]


def service_names(client: Client, tenant: str) -> list[str]:
    """The `service.name`s a tenant's endpoints have reported, for checking policy tool names."""
    rows = query_dicts(
        client,
        "SELECT DISTINCT service_name FROM endpoint_states WHERE tenant_id = {tenant:String} "
        "ORDER BY service_name",
        {"tenant": tenant},
    )
    return [row["service_name"] for row in rows]


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
