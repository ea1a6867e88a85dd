"""When a Faust worker's table recovery has stalled, decided over plain numbers.

faust-streaming 0.15 can wait in recovery forever: after some rebalances (its issue #155), or
when a changelog partition ends in a transaction marker, which no consumer ever receives, so
one record always seems left to read. The worker then processes nothing and says so only in a
warning. A worker that exits instead is restarted by its supervisor, and a restart recovers.
"""

from __future__ import annotations


class RecoveryWatch:
    """Stalled: in recovery, and the changelog records still to read have not gone down for
    ``stall_after`` seconds (a recovery that reads is never stalled, however long it takes)."""

    def __init__(self, stall_after: float) -> None:
        self.stall_after = stall_after
        self._remaining: int | None = None
        self._since = 0.0

    def stalled(self, now: float, in_recovery: bool, remaining: int) -> bool:
        if not in_recovery:
            self._remaining = None
            return False
        if self._remaining is None or remaining != self._remaining:
            # first look, progress, or a new recovery with new highwaters: the clock restarts
            self._remaining, self._since = remaining, now
            return False
        return now - self._since >= self.stall_after
