"""Durations as people write them in flags and policy files: 90s, 10m, 12h, 30d."""

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 12h, 30d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
