"""Contracts between the stages: messages, topic names, identity rules. No I/O here.

The message models (pydantic) load on first use, not with the package: the CLI validates a
tenant id or parses a duration without paying for them (`driftline --help` stays fast).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from schemas import topics
from schemas.identity import (
    DEFAULT_IDENTITY_ATTRIBUTES,
    TenantIdError,
    check_tenant_id,
    endpoint_id,
    split_endpoint_id,
)

if TYPE_CHECKING:
    from schemas.messages import (
        AuthEvent,
        AuthReason,
        DriftFlag,
        EndpointSnapshot,
        FlagKind,
        FlagState,
        Message,
        Signal,
    )

_MESSAGES = frozenset(
    {
        "AuthEvent",
        "AuthReason",
        "DriftFlag",
        "EndpointSnapshot",
        "FlagKind",
        "FlagState",
        "Message",
        "Signal",
    }
)


def __getattr__(name: str) -> Any:
    if name in _MESSAGES:
        value = getattr(importlib.import_module("schemas.messages"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'schemas' has no attribute {name!r}")


__all__ = [
    "DEFAULT_IDENTITY_ATTRIBUTES",
    "AuthEvent",
    "AuthReason",
    "DriftFlag",
    "EndpointSnapshot",
    "FlagKind",
    "FlagState",
    "Message",
    "Signal",
    "TenantIdError",
    "check_tenant_id",
    "endpoint_id",
    "split_endpoint_id",
    "topics",
]
