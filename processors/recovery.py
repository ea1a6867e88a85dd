"""Rebuild endpoint states from the store after a restart of the embedded runner.

The store holds what detectors need: each endpoint's latest state per tool (endpoint_states),
its open flags (drift_current) and its recent rejected requests (auth_events). A request is
acknowledged only after its rows are written, so everything acknowledged is recovered.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from datetime import datetime

from clickhouse_connect.driver.client import Client

from processors.state import (
    MAX_SIGHTINGS,
    SIGHTING_TTL,
    EndpointState,
    OpenFlag,
    Sighting,
    intern_text,
    present_attributes,
    utc,
)
from schemas import FlagKind
from schemas.policy import MAX_STALE_THRESHOLD
from store import query_dicts

_KIND_ORDER = {kind: index for index, kind in enumerate(FlagKind)}


def load_states(client: Client) -> dict[str, EndpointState]:
    states: dict[str, EndpointState] = {}
    for (tenant_id, endpoint_id), sightings in _sightings(client).items():
        current, *others = sorted(
            sightings, key=lambda s: (s.seen_at, s.service_name), reverse=True
        )
        fresh = [o for o in others if o.seen_at >= current.seen_at - SIGHTING_TTL]
        states[endpoint_id] = EndpointState(
            tenant_id=tenant_id,
            endpoint_id=endpoint_id,
            last_event_at=current.seen_at,
            snapshot_at=current.seen_at,
            service_name=current.service_name,
            app_version=current.app_version,
            attributes=current.attributes,
            others=tuple(sorted(fresh[:MAX_SIGHTINGS], key=lambda o: o.service_name)),
        )
    rejections = _recent_rejections(client, states)
    for endpoint_id, (tenant_id, times) in rejections.items():
        state = states.get(endpoint_id) or EndpointState(
            tenant_id=tenant_id, endpoint_id=endpoint_id, last_event_at=times[-1]
        )
        states[endpoint_id] = replace(
            state, rejections=tuple(times), last_event_at=max(state.last_event_at, times[-1])
        )
    flags: defaultdict[str, list[OpenFlag]] = defaultdict(list)
    for row in query_dicts(client, "SELECT * FROM drift_current"):
        flags[row["endpoint_id"]].append(
            OpenFlag(FlagKind(row["kind"]), row["flag_id"], utc(row["first_seen"]), row["detail"])
        )
    for endpoint_id, open_flags in flags.items():
        if endpoint_id in states:
            ordered = tuple(sorted(open_flags, key=lambda flag: _KIND_ORDER[flag.kind]))
            states[endpoint_id] = replace(states[endpoint_id], open_flags=ordered)
    return states


def _sightings(client: Client) -> dict[tuple[str, str], list[Sighting]]:
    """Each endpoint's latest snapshot per tool (service.name), as the detectors keep them."""
    rows = query_dicts(
        client,
        "SELECT tenant_id, endpoint_id, service_name, latest.1 AS app_version, "
        "latest.2 AS team_id, latest.3 AS resource_attributes, received FROM ("
        "SELECT tenant_id, endpoint_id, service_name, "
        "argMax((app_version, team_id, resource_attributes), "
        "(last_seen, last_received, state_hash)) AS latest, max(last_received) AS received "
        "FROM endpoint_states GROUP BY tenant_id, endpoint_id, service_name)",
    )
    out: dict[tuple[str, str], list[Sighting]] = defaultdict(list)
    for row in rows:
        out[(row["tenant_id"], row["endpoint_id"])].append(
            Sighting(
                intern_text(row["service_name"]) or "",
                intern_text(row["app_version"]),
                present_attributes(row["resource_attributes"], row["team_id"]),
                utc(row["received"]),
            )
        )
    return out


def _recent_rejections(
    client: Client, states: dict[str, EndpointState]
) -> dict[str, tuple[str, list[datetime]]]:
    """Retired/revoked rejections after each endpoint's last snapshot (the ones still counting)."""
    # A row is a coalesced run of `count` rejections (first_observed_at … observed_at): the
    # latest MAX_STALE_THRESHOLD rows hold at least as many requests as any threshold needs.
    rows = query_dicts(
        client,
        "SELECT tenant_id, endpoint_id, "
        "groupArray({limit:UInt32})((first_observed_at, observed_at, count)) AS runs "
        "FROM (SELECT DISTINCT tenant_id, endpoint_id, first_observed_at, observed_at, count "
        "FROM auth_events WHERE endpoint_id != '' AND tenant_id != '' "
        "AND reason IN ('retired', 'revoked') ORDER BY observed_at DESC) "
        "GROUP BY tenant_id, endpoint_id",
        {"limit": MAX_STALE_THRESHOLD},
    )
    out: dict[str, tuple[str, list[datetime]]] = {}
    for row in rows:
        state = states.get(row["endpoint_id"])
        since = state.snapshot_at if state is not None else None
        times: list[datetime] = []
        for first, last, count in row["runs"]:
            run = [utc(first), *[utc(last)] * (min(int(count), MAX_STALE_THRESHOLD) - 1)]
            times += [t for t in run if since is None or t > since]
        if times:
            out[row["endpoint_id"]] = (row["tenant_id"], sorted(times)[-MAX_STALE_THRESHOLD:])
    return out
