from __future__ import annotations

import json
from datetime import UTC, datetime

import pydantic
import pytest

from schemas import (
    AuthEvent,
    AuthReason,
    DriftFlag,
    EndpointSnapshot,
    FlagKind,
    FlagState,
    Message,
    Signal,
)
from schemas.durations import parse_duration

NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

EXAMPLES: list[Message] = [
    EndpointSnapshot(
        tenant_id="acme",
        endpoint_id="acme/C02X",
        serial_number="C02X",
        service_name="claude-code",
        app_version="2.0.14",
        team_id=None,
        resource_attributes={"service.name": "claude-code", "é": "ü"},
        signal=Signal.LOGS,
        observed_at=NOW,
        received_at=NOW,
    ),
    AuthEvent(
        tenant_id=None,
        endpoint_id=None,
        identity="C02X",
        token_id=None,
        reason=AuthReason.UNKNOWN,
        source="10.0.0.1",
        observed_at=NOW,
    ),
    DriftFlag(
        flag_id="f1",
        tenant_id="acme",
        endpoint_id="acme/C02X",
        kind=FlagKind.OUTDATED_CLIENT,
        state=FlagState.RAISED,
        detail="2.0.1 < 2.0.10",
        first_seen=NOW,
        last_seen=NOW,
        policy_version=3,
    ),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_json_round_trip(message: Message) -> None:
    wire = message.to_json()
    assert type(message).from_json(wire) == message
    # plain UTF-8 JSON with the contract's field names, readable without our code
    decoded = json.loads(wire.decode("utf-8"))
    assert set(decoded) == set(type(message).model_fields)


def test_enums_and_timestamps_are_plain_json() -> None:
    decoded = json.loads(EXAMPLES[0].to_json())
    assert decoded["signal"] == "logs"
    assert decoded["observed_at"] == "2026-11-27T12:00:00Z"


def test_naive_timestamps_are_read_as_utc() -> None:
    wire = json.loads(EXAMPLES[1].to_json())
    wire["observed_at"] = "2026-11-27T12:00:00"
    assert AuthEvent.model_validate(wire).observed_at == NOW


def test_unknown_fields_and_bad_enums_are_refused() -> None:
    wire = json.loads(EXAMPLES[2].to_json())
    with pytest.raises(pydantic.ValidationError, match="extra"):
        DriftFlag.model_validate({**wire, "surprise": 1})
    with pytest.raises(pydantic.ValidationError, match="kind"):
        DriftFlag.model_validate({**wire, "kind": "bogus"})


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("10m", 600), ("12h", 43200), ("30d", 2592000), ("1.5h", 5400)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "10", "ten minutes", "-5m", "5w"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
