"""The drift detectors: pure functions from (endpoint state, event, policy) to (state, flags).

No I/O and no clock: time comes from the events (the receiver's clock) or, for a policy change,
from the caller. Delivery is at-least-once, so everything here is built to be replayed:

- Flags are transitions only. A ``raised`` flag when a condition starts, a ``resolved`` one with
  the same ``flag_id`` when it ends, nothing while it persists (a changed reason, e.g. 2.0.3 →
  2.0.5 still outdated, only updates the open flag's detail in the state).
- ``flag_id`` hashes (tenant, endpoint, kind, first_seen), so a redelivered transition carries
  the id of the original and consumers can deduplicate on (flag_id, state).
- An event older than the endpoint's last event is ignored; one at the same time is applied.
  Snapshots with the same event time are ordered by their content (service, version, attribute
  keys): the greatest one wins whatever the arrival order, so replaying them changes nothing.
- Every applied event re-checks every rule against the given policy, so a state built under an
  older policy converges without waiting for ``reevaluate``.
"""

from __future__ import annotations

import functools
import hashlib
import sys
from collections.abc import Sequence, Set
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Final, NamedTuple

from packaging.version import InvalidVersion, Version

from processors.state import (
    MAX_SIGHTINGS,
    SIGHTING_TTL,
    EndpointState,
    OpenFlag,
    Sighting,
    intern_text,
    snapshot_attributes,
    utc,
)
from schemas.messages import (
    AuthEvent,
    AuthReason,
    DriftFlag,
    EndpointSnapshot,
    FlagKind,
    FlagState,
)
from schemas.policy import TenantPolicy

# Only tokens we issued and then retired or revoked say "this endpoint missed a rotation";
# missing/malformed/unknown tokens carry no tenant and are someone else's problem.
STALE_REASONS: Final = frozenset({AuthReason.RETIRED, AuthReason.REVOKED})

_KIND_ORDER: Final = {kind: index for index, kind in enumerate(FlagKind)}


class Verdict(NamedTuple):
    """Whether a rule finds drift, and the human-readable reason either way."""

    drifted: bool
    detail: str


# ---------------------------------------------------------------------------------------- rules


@functools.lru_cache(maxsize=4096)
def parse_version(text: str) -> Version | None:
    """Cached: a fleet reports a handful of distinct versions, millions of times."""
    try:
        return Version(text)
    except InvalidVersion:
        return None


def outdated_client(service_name: str, app_version: str | None, policy: TenantPolicy) -> Verdict:
    """``app_version`` below the tenant's minimum for ``service_name``; unparseable is drift too."""
    minimum_text = policy.minimum_version(service_name)
    if minimum_text is None:
        return Verdict(False, f"no minimum version for {service_name}")
    minimum = parse_version(minimum_text)
    if minimum is None:  # policy validation rules this out; never crash on a hand-built one
        return Verdict(False, f"minimum {minimum_text!r} for {service_name} does not parse")
    if app_version is None:
        return Verdict(True, f"no version reported; minimum {minimum_text} for {service_name}")
    version = parse_version(app_version)
    if version is None:
        return Verdict(
            True,
            f"app_version {app_version!r} does not parse;"
            f" minimum {minimum_text} for {service_name}",
        )
    if version < minimum:
        return Verdict(True, f"{app_version} < minimum {minimum_text} for {service_name}")
    return Verdict(False, f"{app_version} >= minimum {minimum_text} for {service_name}")


def missing_policy(present: Set[str], policy: TenantPolicy) -> Verdict:
    """Required attributes absent from the endpoint's latest non-blank attribute keys."""
    missing = sorted(name for name in policy.required_attributes if name not in present)
    if missing:
        return Verdict(True, f"missing required attributes: {', '.join(missing)}")
    return Verdict(False, "all required attributes present")


def stale_token(rejections: Sequence[datetime], policy: TenantPolicy) -> Verdict:
    """The most recent ``threshold`` rejections since the rotation lie within ``window``.

    ``rejections`` are sorted distinct times; the window is inclusive at both ends.
    """
    rule = policy.stale_token
    rotated = policy.token_rotated_at
    window = format_duration(rule.window)
    if rotated is None:
        return Verdict(False, "no token rotation recorded")
    since = [moment for moment in rejections if moment >= rotated][-rule.threshold :]
    if len(since) >= rule.threshold and since[-1] - since[0] <= rule.window:
        return Verdict(
            True,
            f"{len(since)} requests rejected with a retired or revoked token within {window}"
            f" after the token rotation at {_iso(rotated)}; last at {_iso(since[-1])}",
        )
    return Verdict(
        False,
        f"fewer than {rule.threshold} rejections within {window}"
        f" after the token rotation at {_iso(rotated)}",
    )


def format_duration(duration: timedelta) -> str:
    """The policy-file spelling back: 600 s → "10m", 90 s → "90s"."""
    seconds = duration.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _iso(moment: datetime) -> str:
    return utc(moment).isoformat()


# ----------------------------------------------------------------------------------- identities


def flag_id(tenant_id: str, endpoint_id: str, kind: FlagKind, first_seen: datetime) -> str:
    """Deterministic, so a redelivered raise/resolve carries the same id as the original."""
    key = f"{tenant_id}|{endpoint_id}|{kind.value}|{_iso(first_seen)}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def event_time(event: EndpointSnapshot | AuthEvent) -> datetime:
    """Both streams are stamped by the receiver's clock, so their times are comparable."""
    if isinstance(event, EndpointSnapshot):
        return utc(event.received_at)
    return utc(event.observed_at)


# ---------------------------------------------------------------------------------- transitions


def apply(
    state: EndpointState | None, event: EndpointSnapshot | AuthEvent, policy: TenantPolicy
) -> tuple[EndpointState | None, list[DriftFlag]]:
    """Fold one event into the endpoint's state; returns the new state and any transitions.

    Ignored events (older than the state, AuthEvents without tenant/endpoint or with a reason
    that is not retired/revoked) return ``state`` itself and no flags.
    """
    if isinstance(event, EndpointSnapshot):
        return _apply_snapshot(state, event, policy)
    return _apply_auth_event(state, event, policy)


def reevaluate(
    state: EndpointState, policy: TenantPolicy, now: datetime
) -> tuple[EndpointState, list[DriftFlag]]:
    """Re-check a known endpoint under a new policy, without new telemetry.

    ``now`` is the policy's effective time: first_seen of raised flags, last_seen of all. A stale
    token flag can be raised here (a rotation recorded after the rejections arrived) but is only
    ever resolved by an authenticated request, never by a policy change.
    """
    _check_policy(state.tenant_id, policy)
    threshold = policy.stale_token.threshold
    if len(state.rejections) > threshold:
        state = replace(state, rejections=state.rejections[-threshold:])
    return _evaluate(state, policy, utc(now), stale_resolution=None)


def _apply_snapshot(
    state: EndpointState | None, snapshot: EndpointSnapshot, policy: TenantPolicy
) -> tuple[EndpointState | None, list[DriftFlag]]:
    _check_policy(snapshot.tenant_id, policy)
    at = event_time(snapshot)
    service = intern_text(snapshot.service_name)
    version = intern_text(snapshot.app_version)
    attributes = snapshot_attributes(snapshot)
    if state is None:
        state = _new_state(snapshot.tenant_id, snapshot.endpoint_id, at)
    else:
        _check_endpoint(state, snapshot.tenant_id, snapshot.endpoint_id)
        if at < state.last_event_at:
            return state, []
        sighting = Sighting(service or "", version, attributes, at)
        if at == state.snapshot_at and _rank(sighting) < _rank(
            Sighting(state.service_name or "", state.app_version, state.attributes, at)
        ):
            if service == state.service_name or service is None:
                return state, []
            # another tool's snapshot at the same instant: kept beside the current one
            return _evaluate(
                replace(state, others=_others(state, sighting)),
                policy,
                at,
                stale_resolution=None,
            )
    resolution = _stale_resolution(state, at) if state.open_flag(FlagKind.STALE_TOKEN) else None
    others = state.others
    if service is not None and state.service_name not in (None, service):
        assert state.snapshot_at is not None
        previous = Sighting(
            state.service_name or "", state.app_version, state.attributes, state.snapshot_at
        )
        others = _others(state, previous, drop=service, now=at)
    elif service is not None:
        others = _others(state, None, drop=service, now=at)
    state = replace(
        state,
        service_name=service,
        app_version=version,
        attributes=attributes,
        others=others,
        last_event_at=at,
        snapshot_at=at,
        # An authenticated request proves the endpoint holds a valid token: count afresh.
        rejections=tuple(moment for moment in state.rejections if moment >= at),
    )
    return _evaluate(state, policy, at, stale_resolution=resolution)


def _others(
    state: EndpointState,
    add: Sighting | None,
    drop: str | None = None,
    now: datetime | None = None,
) -> tuple[Sighting, ...]:
    """The other tools' sightings with ``add`` merged (newest per service wins), the service
    ``drop`` removed (it is current now), stale ones pruned; sorted by service name."""
    by_service = {other.service_name: other for other in state.others}
    if add is not None:
        kept = by_service.get(add.service_name)
        if kept is None or _rank(add) > _rank(kept):
            by_service[add.service_name] = add
    by_service.pop(drop or "", None)
    latest = now or state.snapshot_at
    fresh = [
        other
        for other in by_service.values()
        if latest is None or other.seen_at >= latest - SIGHTING_TTL
    ]
    newest = sorted(fresh, key=_rank, reverse=True)[:MAX_SIGHTINGS]
    return tuple(sorted(newest, key=lambda other: other.service_name))


def _stale_resolution(state: EndpointState, at: datetime) -> str | None:
    """Why an authenticated request at ``at`` ends a stale token, or None if it does not."""
    if not state.rejections:
        return f"authenticated request at {_iso(at)}"
    last = state.rejections[-1]
    if at > last:
        return f"authenticated request at {_iso(at)} after the last rejection at {_iso(last)}"
    return None


def _apply_auth_event(
    state: EndpointState | None, event: AuthEvent, policy: TenantPolicy
) -> tuple[EndpointState | None, list[DriftFlag]]:
    if event.tenant_id is None or event.endpoint_id is None or event.reason not in STALE_REASONS:
        return state, []
    _check_policy(event.tenant_id, policy)
    at = event_time(event)
    if state is None:
        state = _new_state(event.tenant_id, event.endpoint_id, at)
    else:
        _check_endpoint(state, event.tenant_id, event.endpoint_id)
        if at < state.last_event_at:
            return state, []
    threshold = policy.stale_token.threshold
    rejections = state.rejections
    if not rejections or rejections[-1] != at:  # one event per instant: replays count once
        rejections = tuple(sorted((*rejections, *rejection_times(event, threshold))))
    state = replace(state, last_event_at=at, rejections=rejections[-threshold:])
    return _evaluate(state, policy, at, stale_resolution=None)


def rejection_times(event: AuthEvent, limit: int) -> tuple[datetime, ...]:
    """The times of the rejected requests one (coalesced) AuthEvent stands for, at most
    ``limit`` of the latest: the first at ``first_observed_at``, the others at ``observed_at``
    (the receiver knows only the first and the last of a coalesced run).

    The rule needs ``threshold`` requests within ``window``; a run lasts at most the
    receiver's coalescing interval (about a second), far shorter than any window, so placing
    the middle ones at the last time changes no verdict.
    """
    last = utc(event.observed_at)
    count = max(1, event.count)
    if count == 1:
        return (last,)
    first = utc(event.first_at)
    return ((first,) + (last,) * (count - 1))[-limit:]


def _evaluate(
    state: EndpointState, policy: TenantPolicy, at: datetime, stale_resolution: str | None
) -> tuple[EndpointState, list[DriftFlag]]:
    """Compare every rule's verdict with the open flags; emit only what changed."""
    open_flags = state.flags_by_kind
    flags: list[DriftFlag] = []
    if state.snapshot_at is not None and state.service_name is not None:
        sightings = state.sightings()
        outdated = _combined(
            [
                (s.service_name, outdated_client(s.service_name, s.app_version, policy))
                for s in sightings
            ]
        )
        _transition(state, policy, at, FlagKind.OUTDATED_CLIENT, outdated, open_flags, flags)
        missing = _combined(
            [(s.service_name, missing_policy(s.attributes, policy)) for s in sightings]
        )
        _transition(state, policy, at, FlagKind.MISSING_POLICY, missing, open_flags, flags)
    stale = stale_token(state.rejections, policy)
    if FlagKind.STALE_TOKEN in open_flags and stale_resolution is not None:
        stale = Verdict(False, stale_resolution)
    if stale.drifted or stale_resolution is not None:  # latched: only a request resolves it
        _transition(state, policy, at, FlagKind.STALE_TOKEN, stale, open_flags, flags)
    ordered = tuple(sorted(open_flags.values(), key=lambda flag: _KIND_ORDER[flag.kind]))
    if ordered != state.open_flags:
        state = replace(state, open_flags=ordered)
    return state, flags


def _transition(
    state: EndpointState,
    policy: TenantPolicy,
    at: datetime,
    kind: FlagKind,
    verdict: Verdict,
    open_flags: dict[FlagKind, OpenFlag],
    flags: list[DriftFlag],
) -> None:
    """Update ``open_flags`` for one rule and append the flag of its transition, if any."""
    current = open_flags.get(kind)
    if verdict.drifted:
        if current is None:
            opened = OpenFlag(
                kind, flag_id(state.tenant_id, state.endpoint_id, kind, at), at, verdict.detail
            )
            open_flags[kind] = opened
            flags.append(_flag(state, policy, opened, FlagState.RAISED, verdict.detail, at))
        elif current.detail != verdict.detail:
            open_flags[kind] = replace(current, detail=verdict.detail)
    elif current is not None:
        del open_flags[kind]
        last_seen = max(at, current.first_seen)
        flags.append(_flag(state, policy, current, FlagState.RESOLVED, verdict.detail, last_seen))


def _flag(
    state: EndpointState,
    policy: TenantPolicy,
    opened: OpenFlag,
    flag_state: FlagState,
    detail: str,
    last_seen: datetime,
) -> DriftFlag:
    return DriftFlag(
        flag_id=opened.flag_id,
        tenant_id=state.tenant_id,
        endpoint_id=state.endpoint_id,
        kind=opened.kind,
        state=flag_state,
        detail=detail,
        first_seen=opened.first_seen,
        last_seen=last_seen,
        policy_version=policy.version,
    )


def _new_state(tenant_id: str, endpoint_id: str, at: datetime) -> EndpointState:
    return EndpointState(tenant_id=sys.intern(tenant_id), endpoint_id=endpoint_id, last_event_at=at)


def _rank(sighting: Sighting) -> tuple[datetime, str, bool, str, tuple[str, ...]]:
    """Total order of snapshots: newest first, then (same instant) by what detection reads."""
    version = sighting.app_version
    attributes = tuple(sorted(sighting.attributes))
    return (sighting.seen_at, sighting.service_name, version is not None, version or "", attributes)


def _combined(verdicts: list[tuple[str, Verdict]]) -> Verdict:
    """One verdict for an endpoint's tools: drifted if any is. A lone tool's words are kept
    as they are; with several, each drifted tool's reason is named after it."""
    if len(verdicts) == 1:
        return verdicts[0][1]
    drifted = [(service, verdict) for service, verdict in verdicts if verdict.drifted]
    shown = drifted or verdicts
    detail = "; ".join(
        verdict.detail if service in verdict.detail else f"{service}: {verdict.detail}"
        for service, verdict in sorted(shown)
    )
    return Verdict(bool(drifted), detail)


def _check_policy(tenant_id: str, policy: TenantPolicy) -> None:
    if policy.tenant != tenant_id:
        raise ValueError(f"policy of tenant {policy.tenant!r} applied to tenant {tenant_id!r}")


def _check_endpoint(state: EndpointState, tenant_id: str, endpoint_id: str) -> None:
    if (state.tenant_id, state.endpoint_id) != (tenant_id, endpoint_id):
        raise ValueError(
            f"event of endpoint {endpoint_id!r} (tenant {tenant_id!r}) applied to the state of"
            f" {state.endpoint_id!r} (tenant {state.tenant_id!r})"
        )
