"""Rotation progress: during a rotation's grace window, which endpoints still send the retiring
token and how many have moved to a current one. Shared by `driftline tokens usage` and the
console's Tokens page, so both answer the same question the same way."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ingest.tokens import TokenRecord, TokenState


@dataclass(frozen=True, slots=True)
class RotationProgress:
    retiring: list[TokenRecord]  # tokens in a rotation's grace window, by id
    still: list[dict[str, Any]]  # endpoint_id, token_id, last_seen, grace_ends (epoch s)
    moved: int  # endpoints of a rotating tenant whose latest request used a current token


def rotation_progress(
    records: Sequence[TokenRecord], seen: Iterable[dict[str, Any]], now: float
) -> RotationProgress:
    """Pure: the registry's records, the store's rows (endpoint_id, token_id, last_seen: the
    last accepted request per endpoint and token id, any number per endpoint), the time.

    An endpoint's latest accepted request decides: a token in its grace window means it is
    still on the retiring token; an active token of a tenant that is rotating means it moved.
    """
    by_id = {r.token_id: r for r in records}
    retiring = {r.token_id: r for r in records if r.state(now) is TokenState.GRACE}
    rotating = {r.tenant_id for r in retiring.values()}
    latest: dict[str, dict[str, Any]] = {}
    for row in seen:
        current = latest.get(row["endpoint_id"])
        if current is None or row["last_seen"] >= current["last_seen"]:
            latest[row["endpoint_id"]] = row
    still = [
        {
            "endpoint_id": endpoint,
            "token_id": row["token_id"],
            "last_seen": row["last_seen"],
            "grace_ends": retiring[row["token_id"]].expires_at,
        }
        for endpoint, row in sorted(latest.items())
        if row["token_id"] in retiring
    ]
    moved = sum(
        1
        for row in latest.values()
        if (record := by_id.get(row["token_id"])) is not None
        and record.tenant_id in rotating
        and record.state(now) is TokenState.ACTIVE
    )
    return RotationProgress(sorted(retiring.values(), key=lambda r: r.token_id), still, moved)
