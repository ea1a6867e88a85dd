"""The messages stages exchange on the bus.

Every message travels as one UTF-8 JSON object, so ClickHouse's Kafka engine and any other
consumer can read it without our code. Field names are the contract: change them together with
DESIGN.md and the round-trip tests.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator


def aware(value: datetime) -> datetime:
    """Naive datetimes are ambiguous across machines: read them as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


Timestamp = Annotated[datetime, AfterValidator(aware)]


class Message(BaseModel):
    """Frozen, strict about unknown fields, and JSON on the wire."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        return cls.model_validate_json(data)


class Signal(StrEnum):
    METRICS = "metrics"
    LOGS = "logs"
    TRACES = "traces"


class EndpointSnapshot(Message):
    """What one resource in one OTLP export said about its endpoint."""

    tenant_id: str
    endpoint_id: str
    serial_number: str | None
    service_name: str
    app_version: str | None
    team_id: str | None
    resource_attributes: dict[str, str]
    signal: Signal
    observed_at: Timestamp
    received_at: Timestamp
    # the id of the ingest token the request was accepted with (never the token): during a
    # rotation's grace window it tells which laptops still use the retiring token
    token_id: str | None = None


class AuthReason(StrEnum):
    MISSING = "missing"
    MALFORMED = "malformed"
    UNKNOWN = "unknown"
    RETIRED = "retired"
    REVOKED = "revoked"


class AuthEvent(Message):
    """Rejected requests. Stale tokens after a rotation show up here, not in snapshots.

    ``tenant_id`` is known only when the token is one we issued (retired or revoked);
    ``endpoint_id`` then follows the snapshot rule, so both streams join on it. ``identity`` is
    the raw identity attribute from the payload, kept for requests no tenant can be named for.

    The receiver rate-limits AuthEvents by coalescing, never by dropping: one event stands for
    ``count`` rejected requests of the same key, the first at ``first_observed_at`` and the
    last at ``observed_at`` (equal when ``count`` is 1; filled in when absent, so events
    written before coalescing existed still read).
    """

    tenant_id: str | None
    endpoint_id: str | None
    identity: str | None
    token_id: str | None
    reason: AuthReason
    source: str
    observed_at: Timestamp
    count: int = Field(default=1, ge=1)
    first_observed_at: Timestamp | None = None

    @model_validator(mode="before")
    @classmethod
    def _first_defaults_to_last(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("first_observed_at") is None:
            data = {**data, "first_observed_at": data.get("observed_at")}
        return data

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.first_observed_at is not None and self.first_observed_at > self.observed_at:
            raise ValueError("first_observed_at is after observed_at")
        return self

    @property
    def first_at(self) -> datetime:
        """When the first of the ``count`` rejections happened."""
        return self.first_observed_at or self.observed_at


class FlagKind(StrEnum):
    OUTDATED_CLIENT = "outdated_client"
    MISSING_POLICY = "missing_policy"
    STALE_TOKEN = "stale_token"


class FlagState(StrEnum):
    RAISED = "raised"
    RESOLVED = "resolved"


class DriftFlag(Message):
    """A transition of one drift condition on one endpoint; ``flag_id`` is deterministic."""

    flag_id: str
    tenant_id: str
    endpoint_id: str
    kind: FlagKind
    state: FlagState
    detail: str
    first_seen: Timestamp
    last_seen: Timestamp
    policy_version: int
