"""Contracts between the stages: messages, topic names, identity rules. No I/O here."""

from schemas import topics
from schemas.identity import DEFAULT_IDENTITY_ATTRIBUTES, endpoint_id
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
    "endpoint_id",
    "topics",
]
