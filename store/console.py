"""What the console, `driftline report` and the Prometheus gauges ask the store.

Every query is aggregated or paginated in ClickHouse (a page never pulls a tenant's fleet into
Python) and scoped to a set of tenants: ``tenants=None`` is an administrator's "all tenants",
reachable only from an administrator's session. Every value is a bound parameter; the SQL is
assembled only from the constants here, which is why the S608 warnings are silenced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from clickhouse_connect.driver.client import Client

from store.client import query_dicts

Tenants = Sequence[str] | None  # None: all tenants (administrators only)

_SCOPE: Final = "({all_tenants:Bool} OR {column} IN {tenants:Array(String)})"
PAGE_SIZE: Final = 50


def scope(column: str = "tenant_id") -> str:
    """The tenant filter for one column; its values come from `scope_params`."""
    return _SCOPE.replace("{column}", column)


def scope_params(tenants: Tenants) -> dict[str, Any]:
    return {"all_tenants": tenants is None, "tenants": list(tenants or [])}


def _rows(client: Client, sql: str, tenants: Tenants, **params: Any) -> list[dict[str, Any]]:
    return query_dicts(client, sql, {**scope_params(tenants), **params})


def known_tenants(client: Client) -> list[str]:
    """Tenants the store has heard of (endpoints, flags or rejections)."""
    rows = query_dicts(
        client,
        "SELECT DISTINCT tenant_id FROM (SELECT DISTINCT tenant_id FROM endpoint_states "
        "UNION ALL SELECT DISTINCT tenant_id FROM drift_flags UNION ALL "
        "SELECT DISTINCT tenant_id FROM auth_events) WHERE tenant_id != '' ORDER BY tenant_id",
    )
    return [r["tenant_id"] for r in rows]


@dataclass(frozen=True, slots=True)
class Fleet:
    endpoints: int
    drifting: int
    by_kind: list[dict[str, Any]]
    by_team: list[dict[str, Any]]
    by_version: list[dict[str, Any]]
    series: list[tuple[datetime, int]]
    remediation: dict[str, Any]
    resolve: dict[str, Any]

    @property
    def compliant_percent(self) -> float | None:
        """Endpoints with no open drift, of those reporting; None when there are none."""
        if self.endpoints == 0:
            return None
        return round(100.0 * (self.endpoints - self.drifting) / self.endpoints, 1)


# Each endpoint's latest tool, version, team and serial, straight from endpoint_states: no
# FINAL (a duplicate cannot change an argMax) and not the attribute map, which is what makes
# endpoints_latest slow over a whole fleet. @WHERE@ narrows the rows before they are grouped
# (conditions on tenant_id / endpoint_id only, which are group keys). The tuple keeps NULLs.
_LATEST: Final = (
    "(SELECT tenant_id, endpoint_id, latest.1 AS service_name, latest.2 AS app_version, "
    "latest.3 AS team_id, latest.4 AS serial_number, seen AS last_seen, received AS last_received "
    "FROM (SELECT tenant_id, endpoint_id, argMax((service_name, app_version, team_id, "
    "serial_number), (last_seen, last_received, state_hash)) AS latest, max(last_seen) AS seen, "
    "max(last_received) AS received FROM endpoint_states WHERE @SCOPE@ @WHERE@ "
    "GROUP BY tenant_id, endpoint_id))"
)
_OPEN_KINDS: Final = (
    "(SELECT tenant_id, endpoint_id, groupUniqArray(kind) AS kinds FROM drift_open "
    "WHERE @SCOPE@ GROUP BY tenant_id, endpoint_id)"
)


def _latest(where: str = "") -> str:
    return _LATEST.replace("@SCOPE@", scope()).replace("@WHERE@", where)


def _open_kinds() -> str:
    return _OPEN_KINDS.replace("@SCOPE@", scope())


def fleet(client: Client, tenants: Tenants, days: int = 30, now: datetime | None = None) -> Fleet:
    """The Fleet page and `driftline report`: totals, breakdowns, the series, time to fix.

    One pass over the endpoints, grouped by tool, version and team with their open drift
    kinds; totals, versions and teams are sums of it."""
    groups = _rows(
        client,
        "SELECT e.service_name AS service, coalesce(e.app_version, '(none)') AS version, "  # noqa: S608
        "coalesce(e.team_id, '(no team)') AS team, count() AS endpoints, "
        "countIf(notEmpty(d.kinds)) AS drifting, "
        "countIf(has(d.kinds, 'outdated_client')) AS outdated_client, "
        "countIf(has(d.kinds, 'missing_policy')) AS missing_policy, "
        "countIf(has(d.kinds, 'stale_token')) AS stale_token "
        f"FROM {_latest()} AS e LEFT JOIN {_open_kinds()} AS d "
        "ON d.tenant_id = e.tenant_id AND d.endpoint_id = e.endpoint_id "
        "GROUP BY service, version, team",
        tenants,
    )
    by_kind = _rows(
        client,
        "SELECT kind, count() AS flags, uniqExact(tenant_id, endpoint_id) AS endpoints, "  # noqa: S608
        f"min(first_seen) AS oldest FROM drift_open WHERE {scope()} "
        "GROUP BY kind ORDER BY flags DESC, kind",
        tenants,
    )
    return Fleet(
        endpoints=sum(int(g["endpoints"]) for g in groups),
        drifting=sum(int(g["drifting"]) for g in groups),
        by_kind=by_kind,
        by_team=teams_of(groups),
        by_version=versions_of(groups),
        series=open_drift_series(client, tenants, days, now),
        remediation=remediation_summary(client, tenants),
        resolve=time_to_resolve(client, tenants, days),
    )


KINDS: Final = ("outdated_client", "missing_policy", "stale_token")


def teams_of(groups: list[dict[str, Any]], top: int = 100) -> list[dict[str, Any]]:
    """Endpoints with open drift per team and kind, largest first (pure)."""
    counts: dict[tuple[str, str], int] = {}
    for g in groups:
        for kind in KINDS:
            if g[kind]:
                counts[(g["team"], kind)] = counts.get((g["team"], kind), 0) + int(g[kind])
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"team": team, "kind": kind, "flags": n} for (team, kind), n in ranked]


def versions_of(groups: list[dict[str, Any]], top: int = 100) -> list[dict[str, Any]]:
    """Endpoints per tool and version, and how many of them are outdated (pure)."""
    counts: dict[tuple[str, str], list[int]] = {}
    for g in groups:
        row = counts.setdefault((g["service"], g["version"]), [0, 0])
        row[0] += int(g["endpoints"])
        row[1] += int(g["outdated_client"])
    ranked = sorted(counts.items(), key=lambda kv: (kv[0][0], -kv[1][0], kv[0][1]))[:top]
    return [
        {"service": service, "version": version, "endpoints": n, "outdated": outdated}
        for (service, version), (n, outdated) in ranked
    ]


def series_points(days: int, now: datetime) -> list[datetime]:
    """The ends of the last `days` days, the last one being now (pure)."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return [today - timedelta(days=i) for i in range(days - 1, 0, -1)] + [now]


def open_drift_series(
    client: Client, tenants: Tenants, days: int = 30, now: datetime | None = None
) -> list[tuple[datetime, int]]:
    """Open flags at the end of each of the last `days` days (each flag's latest episode)."""
    points = series_points(days, now or datetime.now(UTC))
    rows = _rows(
        client,
        "SELECT p AS at, countIf(opened_at <= p AND (closed_at IS NULL OR closed_at > p)) "  # noqa: S608
        f"AS open FROM drift_episodes ARRAY JOIN {{points:Array(DateTime64(3, 'UTC'))}} AS p "
        f"WHERE {scope()} GROUP BY p ORDER BY p",
        tenants,
        points=points,
    )
    counts = {r["at"].replace(tzinfo=UTC): int(r["open"]) for r in rows}
    return [(p, counts.get(p.replace(microsecond=p.microsecond // 1000 * 1000), 0)) for p in points]


def remediation_summary(client: Client, tenants: Tenants) -> dict[str, Any]:
    """Force-syncs sent, remediated and pending; mean and p90 time to remediate (seconds)."""
    return _rows(
        client,
        "SELECT count() AS synced, countIf(remediated_at IS NOT NULL) AS remediated, "  # noqa: S608
        "countIf(remediated_at IS NULL) AS pending, "
        "avgOrNull(time_to_remediate_s) AS mean_s, "
        "quantileOrNull(0.9)(time_to_remediate_s) AS p90_s "
        f"FROM remediation_outcomes WHERE {scope()}",
        tenants,
    )[0]


def time_to_resolve(client: Client, tenants: Tenants, days: int = 30) -> dict[str, Any]:
    """Flags resolved in the last `days` days and how long they had been open (seconds)."""
    return _rows(
        client,
        "SELECT count() AS resolved, "  # noqa: S608
        "avgOrNull(dateDiff('second', opened_at, closed_at)) AS mean_s "
        f"FROM drift_episodes WHERE {scope()} AND closed_at IS NOT NULL "
        "AND closed_at >= now64(3) - toIntervalDay({days:UInt32})",
        tenants,
        days=days,
    )[0]


@dataclass(frozen=True, slots=True)
class EndpointFilter:
    """The Endpoints page's search and filters; empty strings mean "any"."""

    search: str = ""
    team: str = ""
    kind: str = ""
    version: str = ""
    status: str = ""  # "", "drifting" or "compliant"
    tenant: str = ""

    def params(self) -> dict[str, str]:
        return {
            "q": self.search,
            "team": self.team,
            "kind": self.kind,
            "version": self.version,
            "status": self.status,
            "tenant": self.tenant,
        }


_ENDPOINTS_FROM: Final = (
    "FROM @LATEST@ AS e LEFT JOIN @OPEN@ AS d "
    "ON d.tenant_id = e.tenant_id AND d.endpoint_id = e.endpoint_id "
    "WHERE ({team:String} = '' OR coalesce(e.team_id, '(no team)') = {team:String}) "
    "AND ({version:String} = '' OR coalesce(e.app_version, '(none)') = {version:String}) "
    "AND ({kind:String} = '' OR has(d.kinds, {kind:String})) "
    "AND ({status:String} = '' OR ({status:String} = 'drifting' AND notEmpty(d.kinds)) "
    "     OR ({status:String} = 'compliant' AND empty(d.kinds))) "
)
# before grouping: the tenant picked and the search, on endpoint_id or any serial it reported
_ENDPOINTS_NARROW: Final = (
    "AND ({tenant:String} = '' OR tenant_id = {tenant:String}) "
    "AND ({q:String} = '' OR positionCaseInsensitive(endpoint_id, {q:String}) > 0 "
    "     OR positionCaseInsensitive(coalesce(serial_number, ''), {q:String}) > 0) "
)


def endpoints(
    client: Client, tenants: Tenants, where: EndpointFilter, page: int = 1, size: int = PAGE_SIZE
) -> tuple[int, list[dict[str, Any]]]:
    """One page of endpoints matching the filter, and how many match in all (one query: the
    count rides along as a window over the matches)."""
    params = {**where.params(), "limit": size, "offset": (max(page, 1) - 1) * size}
    body = _ENDPOINTS_FROM.replace("@LATEST@", _latest(_ENDPOINTS_NARROW)).replace(
        "@OPEN@", _open_kinds()
    )
    rows = _rows(
        client,
        "SELECT e.tenant_id AS tenant_id, e.endpoint_id AS endpoint_id, "
        "e.serial_number AS serial_number, e.team_id AS team_id, "
        "e.service_name AS service_name, e.app_version AS app_version, "
        "e.last_seen AS last_seen, d.kinds AS kinds, count() OVER () AS total "
        + body
        + "ORDER BY e.tenant_id, e.endpoint_id LIMIT {limit:UInt32} OFFSET {offset:UInt64}",
        tenants,
        **params,
    )
    if rows:
        return int(rows[0]["total"]), rows
    if params["offset"] == 0:
        return 0, []
    total = _rows(client, "SELECT count() AS n " + body, tenants, **params)[0]["n"]
    return int(total), []


def filter_choices(client: Client, tenants: Tenants) -> dict[str, list[str]]:
    """Values for the Endpoints page's drop-downs: teams and versions ever reported (at most
    200 each; cheap, from the state table's columns, not from each endpoint's latest)."""
    rows = _rows(
        client,
        "SELECT groupUniqArray(200)(coalesce(team_id, '(no team)')) AS teams, "  # noqa: S608
        "groupUniqArray(200)(coalesce(app_version, '(none)')) AS versions "
        f"FROM endpoint_states WHERE {scope()}",
        tenants,
    )[0]
    return {"teams": sorted(rows["teams"]), "versions": sorted(rows["versions"])}


def endpoint(client: Client, tenants: Tenants, endpoint_id: str) -> dict[str, Any] | None:
    """One endpoint's story, or None when it is unknown or outside the caller's tenants."""
    where = f"{scope()} AND endpoint_id = {{endpoint:String}}"
    states = _rows(
        client,
        "SELECT tenant_id, service_name, app_version, team_id, serial_number, "  # noqa: S608
        "resource_attributes, min(first_seen) AS first_seen, max(last_seen) AS last_seen "
        f"FROM endpoint_states FINAL WHERE {where} GROUP BY tenant_id, state_hash, "
        "service_name, app_version, team_id, serial_number, resource_attributes "
        "ORDER BY first_seen LIMIT 500",
        tenants,
        endpoint=endpoint_id,
    )
    flags = _rows(
        client,
        "SELECT tenant_id, kind, state, detail, first_seen, last_seen, policy_version "  # noqa: S608
        f"FROM drift_flags FINAL WHERE {where} ORDER BY last_seen DESC, state LIMIT 500",
        tenants,
        endpoint=endpoint_id,
    )
    rejections = _rows(
        client,
        "SELECT tenant_id, reason, token_id, source, observed_at, count, first_observed_at "  # noqa: S608
        "FROM auth_events FINAL "
        f"WHERE {where} ORDER BY observed_at DESC LIMIT 50",
        tenants,
        endpoint=endpoint_id,
    )
    if not states and not flags and not rejections:
        return None
    tenant = (states or flags or rejections)[0]["tenant_id"]
    serial = next((s["serial_number"] for s in reversed(states) if s["serial_number"]), None)
    devices = _rows(
        client,
        "SELECT vendor, device_id, status, reason, reported_at, imported_at "
        "FROM compliance_records FINAL WHERE tenant_id = {tenant:String} "
        "AND serial_number = {serial:String} ORDER BY reported_at DESC LIMIT 20",
        None,
        tenant=tenant,
        serial=serial or "",
    )
    actions = _rows(
        client,
        "SELECT at, action_id, attempt, state, vendor, device_id, action, reason, detail, "
        "dry_run, request, response_status FROM remediation_audit FINAL "
        "WHERE tenant_id = {tenant:String} AND endpoint_id = {endpoint:String} "
        "ORDER BY at DESC LIMIT 100",
        None,
        tenant=tenant,
        endpoint=endpoint_id,
    )
    open_kinds = _rows(
        client,
        "SELECT kind FROM drift_open WHERE tenant_id = {tenant:String} "
        "AND endpoint_id = {endpoint:String} ORDER BY kind",
        None,
        tenant=tenant,
        endpoint=endpoint_id,
    )
    return {
        "tenant_id": tenant,
        "endpoint_id": endpoint_id,
        "serial_number": serial,
        "states": states,
        "flags": flags,
        "open_kinds": [r["kind"] for r in open_kinds],
        "rejections": rejections,
        "devices": devices,
        "actions": actions,
    }


def remediation_log(
    client: Client, tenants: Tenants, page: int = 1, size: int = PAGE_SIZE
) -> tuple[int, list[dict[str, Any]]]:
    """The action log, newest first, one page of it."""
    total = _rows(
        client,
        f"SELECT count() AS n FROM remediation_audit FINAL WHERE {scope()}",  # noqa: S608
        tenants,
    )[0]["n"]
    rows = _rows(
        client,
        "SELECT tenant_id, at, endpoint_id, vendor, device_id, action, state, dry_run, "  # noqa: S608
        "reason, detail, request, response_status FROM remediation_audit FINAL "
        f"WHERE {scope()} ORDER BY at DESC, action_id, attempt "
        "LIMIT {limit:UInt32} OFFSET {offset:UInt64}",
        tenants,
        limit=size,
        offset=(max(page, 1) - 1) * size,
    )
    return int(total), rows


def audit_counts(client: Client, tenants: Tenants) -> list[dict[str, Any]]:
    """Audit steps counted by state and mode, and the latest force-syncs with their outcome."""
    return _rows(
        client,
        "SELECT state, dry_run, count() AS n FROM remediation_audit FINAL "  # noqa: S608
        f"WHERE {scope()} GROUP BY state, dry_run ORDER BY dry_run, state",
        tenants,
    )


def recent_syncs(client: Client, tenants: Tenants, limit: int = 50) -> list[dict[str, Any]]:
    return _rows(
        client,
        "SELECT tenant_id, vendor, device_id, endpoint_id, synced_at, remediated_at, "  # noqa: S608
        f"time_to_remediate_s FROM remediation_outcomes WHERE {scope()} "
        "ORDER BY synced_at DESC LIMIT {limit:UInt32}",
        tenants,
        limit=limit,
    )


def rejected_tokens(client: Client, tenants: Tenants) -> list[dict[str, Any]]:
    """Rejected requests per tenant, token and reason: which old tokens are still sent."""
    return _rows(
        client,
        "SELECT tenant_id, token_id, reason, uniqExact(endpoint_id) AS endpoints, "  # noqa: S608
        "sum(count) AS rejections, max(observed_at) AS last_rejected FROM auth_events FINAL "
        f"WHERE {scope()} AND tenant_id != '' GROUP BY tenant_id, token_id, reason "
        "ORDER BY last_rejected DESC LIMIT 200",
        tenants,
    )


def still_on_old_token(
    client: Client, tenants: Tenants, page: int = 1, size: int = PAGE_SIZE
) -> tuple[int, list[dict[str, Any]]]:
    """Endpoints whose latest word is a retired or revoked token: rejected, and no accepted
    snapshot since. An endpoint that switched to the new token drops out by itself."""
    body = (
        "FROM (SELECT tenant_id, endpoint_id, any(identity) AS identity, "  # noqa: S608
        "groupUniqArray(token_id) AS tokens, sum(count) AS rejections, "
        "max(observed_at) AS last_rejected FROM auth_events FINAL "
        f"WHERE {scope()} AND reason IN ('retired', 'revoked') AND endpoint_id != '' "
        "GROUP BY tenant_id, endpoint_id) AS a "
        "LEFT JOIN (SELECT tenant_id, endpoint_id, max(last_received) AS last_received "
        f"FROM endpoint_states WHERE {scope()} AND endpoint_id IN (SELECT endpoint_id "
        f"FROM auth_events WHERE {scope()} AND reason IN ('retired', 'revoked')) "
        "GROUP BY tenant_id, endpoint_id) AS e "
        "ON e.tenant_id = a.tenant_id AND e.endpoint_id = a.endpoint_id "
        "WHERE e.last_received IS NULL OR e.last_received < a.last_rejected "
    )
    settings = " SETTINGS join_use_nulls = 1"
    total = _rows(client, "SELECT count() AS n " + body + settings, tenants)[0]["n"]
    rows = _rows(
        client,
        "SELECT a.tenant_id AS tenant_id, a.endpoint_id AS endpoint_id, identity, tokens, "
        "rejections, last_rejected, e.last_received AS last_accepted "
        + body
        + "ORDER BY last_rejected DESC LIMIT {limit:UInt32} OFFSET {offset:UInt64}"
        + settings,
        tenants,
        limit=size,
        offset=(max(page, 1) - 1) * size,
    )
    return int(total), rows


def latest_tokens(
    client: Client, tenants: Tenants, rotating: Sequence[str]
) -> list[dict[str, Any]]:
    """Per endpoint of the rotating tenants (within scope): the token id of its latest accepted
    request and when. The registry says which ids are retiring (`driftline.rotation`). One row
    per endpoint, aggregated here, and asked only for tenants in a rotation's grace window."""
    return _rows(
        client,
        "SELECT endpoint_id, argMax(token_id, seen) AS token_id, max(seen) AS last_seen "  # noqa: S608
        "FROM (SELECT endpoint_id, token_id, max(last_seen) AS seen FROM endpoint_tokens "
        f"WHERE {scope()} AND tenant_id IN {{rotating:Array(String)}} "
        "GROUP BY endpoint_id, token_id) GROUP BY endpoint_id",
        tenants,
        rotating=list(rotating),
    )


def policy_changelog(client: Client, tenants: Tenants, limit: int = 100) -> list[dict[str, Any]]:
    return _rows(
        client,
        "SELECT tenant_id, at, vendor, policy_version, outcome, digest, detail "  # noqa: S608
        f"FROM policy_changelog FINAL WHERE {scope()} ORDER BY at DESC LIMIT {{limit:UInt32}}",
        tenants,
        limit=limit,
    )


def gauges(client: Client) -> dict[str, list[dict[str, Any]]]:
    """Low-cardinality aggregates for Prometheus: per tenant and kind / state / vendor, never
    per endpoint. Every tenant (the scrape is the operator's)."""
    return {
        "open_drift": query_dicts(
            client, "SELECT tenant_id, kind, count() AS n FROM drift_open GROUP BY tenant_id, kind"
        ),
        "remediation": query_dicts(
            client,
            "SELECT tenant_id, state, dry_run, count() AS n FROM remediation_audit FINAL "
            "GROUP BY tenant_id, state, dry_run",
        ),
        "last_import": query_dicts(
            client,
            "SELECT tenant_id, vendor, max(imported_at) AS at FROM compliance_records "
            "GROUP BY tenant_id, vendor",
        ),
        "rejections": query_dicts(
            client,
            "SELECT tenant_id, reason, count() AS n FROM auth_events "
            "WHERE observed_at >= now64(3) - INTERVAL 1 DAY GROUP BY tenant_id, reason",
        ),
    }
