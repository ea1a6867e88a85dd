"""Where `driftline run` keeps things under its data directory.

Light on purpose: every CLI command needs these paths (to find a running pipeline, or the
embedded store), and importing the pipeline itself to learn them cost seconds per command.
"""

from __future__ import annotations

from pathlib import Path


def store_path(data: Path) -> Path:
    return data / "clickhouse"


def dead_letter_path(data: Path) -> Path:
    """Rows ClickHouse refused for their values, one JSON object a line (see BatchWriter)."""
    return data / "dead-letter.jsonl"


def run_file(data: Path) -> Path:
    """Where a running `driftline run` says how to reach it (it holds the chdb lock)."""
    return data / "run.json"
