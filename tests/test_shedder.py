"""The load shedder's controller (ingest/admission.py), driven sample by sample, no I/O."""

from __future__ import annotations

import pytest

from ingest.admission import LoadShedder, ShedOptions

OPTS = ShedOptions()  # samples every 10 ms; busy 90 %, lag 200 ms, queue 250 ms


def _shedder(options: ShedOptions = OPTS) -> LoadShedder:
    shedder = LoadShedder(options)
    shedder.waiting = lambda: False
    return shedder


def _run(
    shedder: LoadShedder, seconds: float, lag: float = 0.0, busy: float = 0.0, start: float = 0.0
) -> float:
    """Samples every period for ``seconds`` from ``start``; returns the time after them."""
    for n in range(round(seconds / OPTS.period)):
        shedder.observe(lag, now=start + n * OPTS.period, busy=busy)
    return start + seconds


def test_an_idle_receiver_sheds_nothing() -> None:
    shedder = _shedder()
    _run(shedder, 10, lag=0.001, busy=0.05)
    assert shedder.probability == 0.0
    assert all(shedder.admit() for _ in range(1000))


def test_a_busy_but_keeping_up_loop_sheds_nothing() -> None:
    """80 % busy, 100 ms late (thousands of connections make long iterations): no shedding."""
    shedder = _shedder()
    _run(shedder, 10, lag=0.1, busy=0.8)
    assert shedder.probability == 0.0


def test_a_saturated_loop_sheds() -> None:
    shedder = _shedder()
    _run(shedder, 1, busy=0.99)
    assert shedder.busy > OPTS.target_busy
    assert shedder.probability > 0.5


def test_a_short_burst_of_work_sheds_nothing() -> None:
    """Three 10 ms samples fully busy, then idle: smoothed, it never crosses 90 %."""
    shedder = _shedder()
    _run(shedder, 1, busy=0.1, start=_run(shedder, 0.03, busy=1.0))
    assert shedder.probability == 0.0


def test_a_loop_starved_of_cpu_sheds_on_lag() -> None:
    """Other processes take the CPU: the loop is late though its thread is rarely running."""
    shedder = _shedder()
    _run(shedder, 1, lag=0.3, busy=0.3)
    assert shedder.probability > 0.5


def test_a_late_sample_counts_as_the_samples_that_did_not_come() -> None:
    """The loop busy for 100 ms: one sample arrives where eleven were due, and moves the
    shed probability eleven steps, not one (the controller's pace is per second)."""
    late = _shedder(ShedOptions(target_lag=0.05))
    late.observe(0.100, now=0.11)
    assert late.probability == pytest.approx(11 * OPTS.step_up)
    # and back down by step_down per period once the smoothed lag is under target again
    for n in range(80):
        late.observe(0.0, now=0.2 + n * OPTS.period)
    assert late.probability == pytest.approx(0.0, abs=1e-9)


def test_sustained_overload_sheds_almost_everything_but_never_all() -> None:
    shedder = _shedder()
    _run(shedder, 5, lag=0.5, busy=1.0)
    assert shedder.probability == OPTS.max_probability
    admitted = sum(shedder.admit() for _ in range(10_000))
    assert 50 < admitted < 500  # ~2 % still measure the receiver


def test_shedding_stops_once_the_loop_keeps_up_again() -> None:
    shedder = _shedder()
    shedder.observe(1.0, now=1.0, busy=1.0)
    assert shedder.probability == OPTS.max_probability
    # under target: the probability falls by step_down per 10 ms, to nothing within ~1.5 s
    _run(shedder, 1.5, busy=0.2, start=1.01)
    assert shedder.probability == 0.0


def test_a_standing_queue_behind_the_loop_sheds() -> None:
    """The loop is idle but every request waits 400 ms for the store: shed."""
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
