"""Rotation progress (pure): an endpoint's latest accepted request decides where it stands."""

from __future__ import annotations

from driftline.rotation import rotation_progress
from ingest.tokens import TokenRecord

NOW = 1_000_000.0


def record(token_id: str, tenant: str = "acme", expires_at: float | None = None) -> TokenRecord:
    return TokenRecord(token_id, tenant, b"", NOW - 100, expires_at, None, None)


def test_latest_request_decides_and_only_rotating_tenants_count_as_moved() -> None:
    records = [
        record("old", expires_at=NOW + 3600),  # in its grace window
        record("new"),
        record("older", expires_at=NOW - 1),  # retired: not retiring any more
        record("other", tenant="globex"),  # globex is not rotating
    ]
    seen = [
        {"endpoint_id": "acme/a", "token_id": "old", "last_seen": 5},
        {"endpoint_id": "acme/b", "token_id": "old", "last_seen": 5},
        {"endpoint_id": "acme/b", "token_id": "new", "last_seen": 6},  # moved
        {"endpoint_id": "acme/c", "token_id": "new", "last_seen": 1},
        {"endpoint_id": "acme/c", "token_id": "old", "last_seen": 7},  # went back: still on old
        {"endpoint_id": "acme/d", "token_id": "older", "last_seen": 9},  # neither
        {"endpoint_id": "globex/g", "token_id": "other", "last_seen": 9},
    ]
    progress = rotation_progress(records, seen, NOW)
    assert [r.token_id for r in progress.retiring] == ["old"]
    assert progress.still == [
        {"endpoint_id": "acme/a", "token_id": "old", "last_seen": 5, "grace_ends": NOW + 3600},
        {"endpoint_id": "acme/c", "token_id": "old", "last_seen": 7, "grace_ends": NOW + 3600},
    ]
    assert progress.moved == 1


def test_no_rotation_no_retiring_token() -> None:
    progress = rotation_progress([record("new")], [], NOW)
    assert (progress.retiring, progress.still, progress.moved) == ([], [], 0)
