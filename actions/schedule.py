"""When a long-running process remediates and pulls compliance on its own."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """When `driftline run` / `actions serve` remediate and pull compliance on their own."""

    live: bool = False
    interval: float = 60.0  # seconds between passes; a raised flag wakes one sooner
    compliance_interval: float = 900.0  # seconds between compliance pulls through the APIs
    settle: float = 0.2  # after a wake-up, for a burst of flags to land in the store
