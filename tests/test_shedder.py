"""The load shedder's controller (ingest/admission.py), driven sample by sample, no I/O."""

from __future__ import annotations

import pytest

from ingest.admission import LoadShedder, ShedOptions

OPTS = ShedOptions()  # period 10 ms, lag target 50 ms, queue target 250 ms


def _shedder() -> LoadShedder:
    shedder = LoadShedder(OPTS)
    shedder.waiting = lambda: False
    return shedder


def test_an_idle_receiver_sheds_nothing() -> None:
    shedder = _shedder()
    for n in range(1000):
        shedder.observe(0.001, now=n * OPTS.period)
    assert shedder.probability == 0.0
    assert all(shedder.admit() for _ in range(1000))


def test_one_gc_pause_sheds_nothing() -> None:
    """A single 40 ms hiccup stays under the lag target once smoothed."""
    shedder = _shedder()
    shedder.observe(0.040, now=0.0)
    assert shedder.probability == 0.0


def test_a_late_sample_counts_as_the_samples_that_did_not_come() -> None:
    """The loop busy for 100 ms: one sample arrives where eleven were due, and moves the
    shed probability eleven steps, not one (the controller's pace is per second)."""
    late = _shedder()
    late.observe(0.100, now=0.11)
    assert late.probability == pytest.approx(11 * OPTS.step_up)
    # and back down by step_down per period once the smoothed lag is under target again
    for n in range(80):
        late.observe(0.0, now=0.2 + n * OPTS.period)
    assert late.probability == pytest.approx(0.0, abs=1e-9)


def test_sustained_lag_sheds_almost_everything_but_never_all() -> None:
    shedder = _shedder()
    for n in range(200):
        shedder.observe(0.2, now=n * 0.21)
    assert shedder.probability == OPTS.max_probability
    admitted = sum(shedder.admit() for _ in range(10_000))
    assert 50 < admitted < 500  # ~2 % still measure the receiver


def test_shedding_stops_once_the_loop_keeps_up_again() -> None:
    shedder = _shedder()
    shedder.observe(1.0, now=1.0)
    assert shedder.probability == OPTS.max_probability
    # under target: the probability falls by step_down per 10 ms, to nothing within ~1 s
    for n in range(1, 120):
        shedder.observe(0.0, now=1.0 + n * OPTS.period)
    assert shedder.probability == 0.0


def test_a_standing_queue_behind_the_loop_sheds() -> None:
    """The loop is on time but every request waits 400 ms for the store: shed."""
    shedder = _shedder()
    for n in range(50):
        shedder.waited(0.4)
        shedder.observe(0.0, now=n * OPTS.period)
    assert shedder.queue == pytest.approx(0.4)
    assert shedder.probability > 0.1


def test_a_burst_whose_queue_drains_sheds_nothing() -> None:
    """Some requests wait long, but the least wait of each window is short: no standing
    queue (CoDel's signal), so nothing is shed."""
    shedder = _shedder()
    for n in range(50):
        shedder.waited(0.9)
        shedder.waited(0.02)
        shedder.observe(0.0, now=n * OPTS.period)
    assert shedder.probability == 0.0


def _answer_at(shedder: LoadShedder, rate: float, seconds: float, start: float = 0.0) -> float:
    """Requests answered at ``rate`` a second for ``seconds``, sampled every period."""
    per_period = rate * OPTS.period
    owed = 0.0
    now = start
    for n in range(int(seconds / OPTS.period)):
        owed += per_period
        while owed >= 1:
            shedder.waited(0.02)
            owed -= 1
        now = start + (n + 1) * OPTS.period
        shedder.observe(0.0, now=now)
    return now


def test_the_inflight_limit_is_twice_what_the_bus_answers_in_the_queue_target() -> None:
    """Little's law: at 1,000 answers a second and a 250 ms target, admitted requests wait
    at most ~0.5 s with 500 of them on the bus; the 501st is refused at once."""
    shedder = _shedder()
    _answer_at(shedder, 1000, 5.0)
    assert shedder.rate == pytest.approx(1000, rel=0.05)
    assert shedder.limit == pytest.approx(2 * 1000 * OPTS.target_queue, rel=0.05)
    assert shedder.probability == 0.0
    assert shedder.admit(int(shedder.limit) - 1)
    assert not shedder.admit(int(shedder.limit) + 1)


def test_the_limit_follows_the_bus_down_and_never_under_its_floor() -> None:
    shedder = _shedder()
    now = _answer_at(shedder, 1000, 5.0)
    _answer_at(shedder, 100, 5.0, start=now)  # the store slows to a tenth
    assert shedder.limit == pytest.approx(OPTS.min_inflight, rel=0.2)  # 2 x 100 x 0.25 < 256
    idle = _shedder()
    _answer_at(idle, 0, 2.0)
    assert idle.limit == OPTS.min_inflight
    assert idle.admit(OPTS.min_inflight - 1)
    assert not idle.admit(OPTS.min_inflight)
