"""Durations as people write them in flags and policy files: 90s, 10m, 12h, 30d."""

import re
from datetime import timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")


def format_duration(seconds: float | None) -> str:
    """For people: ``45s``, ``12m 5s``, ``3h 20m``, ``2d 4h`` (two units at most)."""
    if seconds is None:
        return ""
    rest = round(seconds)
    if rest < 60:
        return f"{max(rest, 0)}s"
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size or parts:
            count, rest = divmod(rest, size)
            parts.append(f"{count}{unit}")
    return " ".join(p for p in parts[:2] if not p.startswith("0")) or parts[0]


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 10m, 12h, 30d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
