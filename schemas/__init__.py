"""Contracts between the stages: messages, topic names, identity rules. No I/O here."""

from schemas import topics
from schemas.identity import (
    DEFAULT_IDENTITY_ATTRIBUTES,
    TenantIdError,
    check_tenant_id,
    endpoint_id,
    split_endpoint_id,
)
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
