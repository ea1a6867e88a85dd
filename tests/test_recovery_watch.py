"""The recovery watchdog's decision, over plain numbers: no Faust, no Kafka."""

from __future__ import annotations

from processors.stall import RecoveryWatch


def test_a_recovery_that_reads_is_never_stalled_however_long_it_takes() -> None:
    watch = RecoveryWatch(stall_after=30)
    assert not any(watch.stalled(t * 10.0, True, 1_000_000 - t) for t in range(1000))


def test_no_progress_for_the_bound_is_a_stall_and_not_before() -> None:
    watch = RecoveryWatch(stall_after=30)
    assert not watch.stalled(0, True, 1)
    assert not watch.stalled(29.9, True, 1)
    assert watch.stalled(30, True, 1)


def test_progress_restarts_the_clock() -> None:
    watch = RecoveryWatch(stall_after=30)
    watch.stalled(0, True, 10)
    assert not watch.stalled(25, True, 9)
    assert not watch.stalled(50, True, 9)
    assert watch.stalled(55, True, 9)


def test_a_new_recovery_with_more_to_read_restarts_the_clock() -> None:
    watch = RecoveryWatch(stall_after=30)
    watch.stalled(0, True, 5)
    assert not watch.stalled(20, True, 500)  # a rebalance brought new highwaters
    assert not watch.stalled(40, True, 500)
    assert watch.stalled(50, True, 500)


def test_outside_recovery_nothing_is_stalled_and_the_next_recovery_starts_afresh() -> None:
    watch = RecoveryWatch(stall_after=30)
    watch.stalled(0, True, 3)
    assert not watch.stalled(100, False, 3)  # recovered; a lag elsewhere is not recovery
    assert not watch.stalled(200, True, 3)
    assert watch.stalled(230, True, 3)
