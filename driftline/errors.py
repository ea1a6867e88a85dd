"""The CLI's errors that are answers, not bugs: each prints one line and a non-zero rc."""

from __future__ import annotations


class NoData(ValueError):
    """A read command pointed at a place that holds no Driftline data."""


class NotFound(LookupError):
    """What was asked about is not there (answered 404 by the admin API, rc 1 by the CLI)."""


class Unreachable(RuntimeError):
    """The store or the pipeline could not be asked: "I could not look", never "nothing"."""
