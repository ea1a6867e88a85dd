"""The AuthEvent coalescer: counts every rejection, publishes at most one event per key and
interval, holds bounded memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ingest.authevents import Coalescer
from schemas import AuthEvent, AuthReason

T0 = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def rejection(t: float, endpoint: str = "acme/C1") -> AuthEvent:
    return AuthEvent(
        tenant_id="acme",
        endpoint_id=endpoint,
        identity=endpoint.split("/")[1],
        token_id="tok1",
        reason=AuthReason.RETIRED,
        source="10.0.0.1",
        observed_at=T0 + timedelta(seconds=t),
    )


def test_the_first_goes_at_once_the_rest_ride_on_the_next_event() -> None:
    coalescer = Coalescer(interval=1.0)
    first = coalescer.add("k", rejection(0), now=0.0)
    assert first is not None and first.count == 1
    for t in (0.2, 0.4, 0.8):
        assert coalescer.add("k", rejection(t), now=t) is None
    assert coalescer.next_due() == 1.0
    assert coalescer.due(now=0.9) == []
    [held] = coalescer.due(now=1.0)
    assert held.count == 3
    assert (held.first_at, held.observed_at) == (
        T0 + timedelta(seconds=0.2),
        T0 + timedelta(seconds=0.8),
    )
    # quiet for an interval: the next one goes at once again
    assert coalescer.add("k", rejection(2.5), now=2.5) is not None


def test_an_interval_of_zero_publishes_each() -> None:
    coalescer = Coalescer(interval=0)
    assert all(coalescer.add("k", rejection(t), now=t) is not None for t in (0, 0, 0.1))
    with pytest.raises(ValueError, match=">= 0"):
        Coalescer(interval=-1)


def test_past_max_keys_new_keys_are_counted_in_one_overflow_event() -> None:
    coalescer = Coalescer(interval=10.0, max_keys=3)
    for n in range(3):  # three keys, each with a rejection held
        coalescer.add(n, rejection(0, f"acme/C{n}"), now=0.0)
        coalescer.add(n, rejection(0.1, f"acme/C{n}"), now=0.1)
    for n in range(3, 8):  # five more keys: no room, nothing idle to forget
        coalescer.add(n, rejection(0.2, f"acme/C{n}"), now=0.2)
        coalescer.add(n, rejection(0.3, f"acme/C{n}"), now=0.3)
    assert len(coalescer) == 4  # the three and the overflow key
    events = coalescer.flush()
    assert sum(e.count for e in events) == 3 + 9  # 16 rejections: 4 published at once
    overflow = [e for e in events if e.endpoint_id is None]
    assert len(overflow) == 1 and overflow[0].tenant_id is None


def test_idle_keys_are_forgotten_to_make_room() -> None:
    coalescer = Coalescer(interval=1.0, max_keys=2)
    coalescer.add("a", rejection(0, "acme/A"), now=0.0)
    coalescer.add("b", rejection(0, "acme/B"), now=0.0)
    event = coalescer.add("c", rejection(5, "acme/C"), now=5.0)  # a and b are long idle
    assert event is not None and event.endpoint_id == "acme/C"
    assert len(coalescer) <= 2
