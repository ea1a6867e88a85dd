"""What the processors remember about one endpoint between events.

Kept deliberately small (a few hundred bytes per endpoint): a fleet has 100k+ endpoints per
processor, and most of them share the same handful of attribute key sets, versions and service
names, so those are interned and shared instead of copied per endpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from schemas.identity import TEAM_ID
from schemas.messages import EndpointSnapshot, FlagKind

# Beyond this many distinct key sets (a misbehaving client inventing attribute names), new sets
# are simply not shared: correctness does not depend on the cache, only memory does.
MAX_INTERNED_KEY_SETS: Final = 4096

_KEY_SETS: dict[frozenset[str], frozenset[str]] = {}
EMPTY_KEYS: Final[frozenset[str]] = frozenset()


def intern_keys(keys: Iterable[str]) -> frozenset[str]:
    """The shared frozenset equal to ``keys``, so equal key sets cost one object in total."""
    candidate = frozenset(keys)
    if not candidate:
        return EMPTY_KEYS
    shared = _KEY_SETS.get(candidate)
    if shared is not None:
        return shared
    shared = frozenset(sys.intern(key) for key in candidate)
    if len(_KEY_SETS) < MAX_INTERNED_KEY_SETS:
        _KEY_SETS[shared] = shared
    return shared


def interned_key_sets() -> int:
    """How many key sets the cache holds (for metrics and tests)."""
    return len(_KEY_SETS)


def present_attributes(
    resource_attributes: Mapping[str, str], team_id: str | None = None
) -> frozenset[str]:
    """Keys whose value is not blank; ``team_id`` (resource, else record) counts as ``team.id``.

    Whitespace-only values count as empty: ``team.id=" "`` routes nothing to a team.
    """
    keys = [key for key, value in resource_attributes.items() if value.strip()]
    if team_id and team_id.strip():
        keys.append(TEAM_ID)
    return intern_keys(keys)


def snapshot_attributes(snapshot: EndpointSnapshot) -> frozenset[str]:
    return present_attributes(snapshot.resource_attributes, snapshot.team_id)


def utc(moment: datetime) -> datetime:
    """Event times in state are UTC (shared tzinfo; flag ids hash the same text for an instant)."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment if moment.tzinfo is UTC else moment.astimezone(UTC)


def intern_text(text: str | None) -> str | None:
    """Versions and service names repeat across the fleet: share one string per value."""
    return None if text is None else sys.intern(text)


@dataclass(frozen=True, slots=True)
class OpenFlag:
    """A raised, not yet resolved flag. ``detail`` tracks the current reason while it persists."""

    kind: FlagKind
    flag_id: str
    first_seen: datetime
    detail: str


@dataclass(frozen=True, slots=True)
class Sighting:
    """The latest snapshot of one more tool (``service.name``) on the same endpoint."""

    service_name: str
    app_version: str | None
    attributes: frozenset[str]
    seen_at: datetime


# A laptop runs a handful of OTel tools; a sighting older than this no longer speaks for it.
MAX_SIGHTINGS: Final = 8
SIGHTING_TTL: Final = timedelta(days=7)


@dataclass(frozen=True, slots=True, kw_only=True)
class EndpointState:
    """One endpoint's state; replaced, never mutated, by each event.

    ``snapshot_at`` is the event time of the snapshot that ``service_name``, ``app_version`` and
    ``attributes`` come from; all three are None/empty until the first snapshot (state made by an
    AuthEvent alone), and snapshot-based rules are not evaluated before then.

    ``others`` are the latest snapshots of the endpoint's *other* tools (one per service name,
    sorted by it, at most ``MAX_SIGHTINGS``, none older than ``SIGHTING_TTL`` before the
    current one): a laptop running two OTel tools is judged on both, instead of flapping
    between them with each export.

    ``rejections`` are the times of the most recent retired/revoked-token rejected requests
    since the last accepted snapshot, oldest first, at most the policy's stale-token threshold;
    a coalesced AuthEvent adds one per request it stands for, so a time may repeat.
    ``open_flags`` is sorted by kind.
    """

    tenant_id: str
    endpoint_id: str
    last_event_at: datetime
    snapshot_at: datetime | None = None
    service_name: str | None = None
    app_version: str | None = None
    attributes: frozenset[str] = EMPTY_KEYS
    others: tuple[Sighting, ...] = ()
    rejections: tuple[datetime, ...] = ()
    open_flags: tuple[OpenFlag, ...] = ()

    @property
    def has_snapshot(self) -> bool:
        return self.snapshot_at is not None

    def sightings(self) -> list[Sighting]:
        """Every tool's latest snapshot, the current one first."""
        if self.snapshot_at is None or self.service_name is None:
            return list(self.others)
        current = Sighting(self.service_name, self.app_version, self.attributes, self.snapshot_at)
        return [current, *self.others]

    def open_flag(self, kind: FlagKind) -> OpenFlag | None:
        for flag in self.open_flags:
            if flag.kind == kind:
                return flag
        return None

    @property
    def flags_by_kind(self) -> dict[FlagKind, OpenFlag]:
        return {flag.kind: flag for flag in self.open_flags}
