"""AuthEvents, rate-limited by coalescing rather than by dropping.

``stale_token`` counts rejected *requests*: a laptop retrying with a retired token four times
in two seconds must count four, even though the bus gets at most one AuthEvent per key
(reason, token or source, identity) per ``interval``. So the first rejection of a quiet key is
published at once, and the ones that follow within the interval are held and counted; when
the interval is up they go out as one event with ``count``, the first and the last time.
``interval`` 0 publishes every rejection. Memory is bounded by ``max_keys``: past it, a
new key's rejections are counted under one overflow key per reason (no tenant, no endpoint).
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass

from schemas import AuthEvent


@dataclass(slots=True)
class _Entry:
    sent_at: float | None  # monotonic time of the last event published for the key
    pending: AuthEvent | None = None  # rejections held since then, as one event


class Coalescer:
    """Pure bookkeeping (no I/O, the caller's clock); the service publishes what it returns."""

    def __init__(self, interval: float, max_keys: int = 10_000) -> None:
        if interval < 0:
            raise ValueError("the AuthEvent interval must be >= 0 seconds")
        self.interval = interval
        self.max_keys = max_keys
        self._entries: OrderedDict[Hashable, _Entry] = OrderedDict()
        self._due: list[tuple[float, int, Hashable]] = []  # (due, sequence, key), a heap
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, key: Hashable, event: AuthEvent, now: float) -> AuthEvent | None:
        """Count one rejection (``event``, count 1); return an event to publish now, if any."""
        entry = self._entries.get(key)
        if entry is None:
            if len(self._entries) >= self.max_keys and not self._evict(now):
                key = ("overflow", event.reason)
                event = replace_event(event, tenant_id=None, endpoint_id=None, identity=None)
                entry = self._entries.get(key)
            if entry is None:
                entry = self._entries[key] = _Entry(sent_at=None)
        self._entries.move_to_end(key)
        if entry.pending is not None:
            entry.pending = merged(entry.pending, event)
            return None
        if entry.sent_at is None or now - entry.sent_at >= self.interval:
            entry.sent_at = now
            return event
        entry.pending = event
        heapq.heappush(self._due, (entry.sent_at + self.interval, next(self._sequence), key))
        return None

    def next_due(self) -> float | None:
        return self._due[0][0] if self._due else None

    def due(self, now: float, limit: int | None = None) -> list[AuthEvent]:
        """The held events whose interval is up (at most ``limit``), oldest due first."""
        out: list[AuthEvent] = []
        while self._due and self._due[0][0] <= now and (limit is None or len(out) < limit):
            _, _, key = heapq.heappop(self._due)
            entry = self._entries.get(key)
            if entry is None or entry.pending is None:
                continue
            out.append(entry.pending)
            entry.pending = None
            entry.sent_at = now
        return out

    def later(self, event: AuthEvent, key: Hashable, at: float) -> None:
        """Hold ``event`` again (its publication was refused): it is due at ``at``."""
        entry = self._entries.setdefault(key, _Entry(sent_at=None))
        entry.pending = event if entry.pending is None else merged(event, entry.pending)
        heapq.heappush(self._due, (at, next(self._sequence), key))

    def flush(self) -> list[AuthEvent]:
        """Every held event, whatever its due time (shutdown)."""
        out = [entry.pending for entry in self._entries.values() if entry.pending is not None]
        self._entries.clear()
        self._due.clear()
        return out

    def _evict(self, now: float) -> bool:
        """Forget keys, least recently used first, that hold nothing and are past their
        interval (forgetting them changes nothing); True if room was made."""
        evicted = False
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if entry.pending is not None or (
                entry.sent_at is not None and now - entry.sent_at < self.interval
            ):
                break
            del self._entries[key]
            evicted = True
        return evicted and len(self._entries) < self.max_keys


def merged(earlier: AuthEvent, later: AuthEvent) -> AuthEvent:
    """Two runs of the same key's rejections as one."""
    return replace_event(
        earlier,
        count=earlier.count + later.count,
        first_observed_at=min(earlier.first_at, later.first_at),
        observed_at=max(earlier.observed_at, later.observed_at),
    )


def replace_event(event: AuthEvent, **changes: object) -> AuthEvent:
    """``model_copy`` skips validation; these fields are ours, so that is safe and cheap."""
    return event.model_copy(update=changes)
