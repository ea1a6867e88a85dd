from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.identity import TENANT_ID_CHARSET, is_tenant_id
from schemas.messages import Message
from schemas.policy import (
    MAX_STALE_THRESHOLD,
    PolicyError,
    StaleTokenPolicy,
    TenantPolicy,
    ToolPolicy,
)

EXAMPLE_YAML = """\
tenant: acme
tools:
  claude-code:
    minimum_version: "2.0.10"
required_attributes: [team.id]
stale_token: {threshold: 3, window: 10m}
"""


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------------- parsing


def test_yaml_example_parses(tmp_path: Path) -> None:
    policy = TenantPolicy.from_file(write(tmp_path, "acme.yaml", EXAMPLE_YAML))
    assert policy == TenantPolicy(
        tenant="acme",
        tools={"claude-code": ToolPolicy(minimum_version="2.0.10")},
        required_attributes=("team.id",),
        stale_token=StaleTokenPolicy(threshold=3, window=timedelta(minutes=10)),
    )
    assert policy.minimum_version("claude-code") == "2.0.10"
    assert policy.minimum_version("other-tool") is None


def test_yml_extension_and_unquoted_dotted_version(tmp_path: Path) -> None:
    text = "tenant: acme\ntools: {claude-code: {minimum_version: 2.0.10}}\n"
    policy = TenantPolicy.from_file(write(tmp_path, "acme.YML", text))
    assert policy.minimum_version("claude-code") == "2.0.10"


def test_json_file_parses(tmp_path: Path) -> None:
    data = {
        "tenant": "acme",
        "version": 7,
        "tools": {"claude-code": {"minimum_version": "2.0.10rc1"}},
        "required_attributes": ["team.id", "cost.center"],
        "stale_token": {"threshold": 5, "window": 90},
        "token_rotated_at": "2026-11-27T12:00:00+01:00",
    }
    policy = TenantPolicy.from_file(write(tmp_path, "acme.json", json.dumps(data)))
    assert policy.version == 7
    assert policy.required_attributes == ("team.id", "cost.center")
    assert policy.stale_token == StaleTokenPolicy(threshold=5, window=timedelta(seconds=90))
    assert policy.token_rotated_at == datetime(2026, 11, 27, 11, 0, tzinfo=UTC)


def test_yaml_timestamp_for_rotation(tmp_path: Path) -> None:
    text = "tenant: acme\ntoken_rotated_at: 2026-11-27T12:00:00Z\n"
    policy = TenantPolicy.from_file(write(tmp_path, "acme.yaml", text))
    assert policy.token_rotated_at == datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


def test_naive_rotation_time_reads_as_utc() -> None:
    policy = TenantPolicy(tenant="acme", token_rotated_at=datetime(2026, 11, 27, 12, 0))
    assert policy.token_rotated_at == datetime(2026, 11, 27, 12, 0, tzinfo=UTC)


# ---------------------------------------------------------------------------------- defaults


def test_defaults() -> None:
    policy = TenantPolicy.default("acme")
    assert policy == TenantPolicy(tenant="acme")
    assert policy.version == 0
    assert policy.tools == {}
    assert policy.required_attributes == ("team.id",)
    assert policy.stale_token.threshold == 3
    assert policy.stale_token.window == timedelta(minutes=10)
    assert policy.token_rotated_at is None


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    policy = TenantPolicy.from_file(write(tmp_path, "acme.yaml", "tenant: acme\n"))
    assert policy == TenantPolicy.default("acme")


def test_tool_without_minimum_has_none() -> None:
    policy = TenantPolicy.model_validate({"tenant": "acme", "tools": {"claude-code": {}}})
    assert policy.minimum_version("claude-code") is None


def test_required_attributes_may_be_empty_and_are_deduplicated() -> None:
    assert TenantPolicy(tenant="a", required_attributes=()).required_attributes == ()
    policy = TenantPolicy(tenant="a", required_attributes=("b", "team.id", "b"))
    assert policy.required_attributes == ("b", "team.id")


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ("10m", timedelta(minutes=10)),
        ("90s", timedelta(seconds=90)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        (" 1.5m ", timedelta(seconds=90)),
        (600, timedelta(minutes=10)),
        (0.5, timedelta(milliseconds=500)),
        (timedelta(minutes=3), timedelta(minutes=3)),
    ],
)
def test_window_forms(window: object, expected: timedelta) -> None:
    assert StaleTokenPolicy.model_validate({"window": window}).window == expected


def test_models_are_frozen() -> None:
    policy = TenantPolicy.default("acme")
    with pytest.raises(pydantic.ValidationError):
        policy.version = 2
    with pytest.raises(pydantic.ValidationError):
        policy.stale_token.threshold = 9


# -------------------------------------------------------------------------------- validation

VALID: dict[str, Any] = {"tenant": "acme"}


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        (
            {"tools": {"claude-code": {"minimum_version": "banana"}}},
            "tools.claude-code.minimum_version",
            "'banana' is not a valid version",
        ),
        (
            {"tools": {"claude-code": {"minimum_version": 2.1}}},
            "tools.claude-code.minimum_version",
            "must be a quoted string",
        ),
        (
            {"tools": {"claude-code": {"minimum_version": "2.0", "maximum": "3"}}},
            "tools.claude-code.maximum",
            "Extra inputs are not permitted",
        ),
        ({"tools": {" ": {}}}, "tools", "must not be empty"),
        ({"tools": ["claude-code"]}, "tools", "valid dictionary"),
        ({"stale_token": {"threshold": 0}}, "stale_token.threshold", "greater than or equal"),
        (
            {"stale_token": {"threshold": MAX_STALE_THRESHOLD + 1}},
            "stale_token.threshold",
            "less than or equal",
        ),
        ({"stale_token": {"threshold": "3"}}, "stale_token.threshold", "valid integer"),
        ({"stale_token": {"threshold": True}}, "stale_token.threshold", "valid integer"),
        ({"stale_token": {"window": "10 minutes"}}, "stale_token.window", "not a duration"),
        ({"stale_token": {"window": 0}}, "stale_token.window", "longer than zero"),
        ({"stale_token": {"window": "-5m"}}, "stale_token.window", "not a duration"),
        ({"stale_token": {"window": -5}}, "stale_token.window", "longer than zero"),
        ({"stale_token": {"window": True}}, "stale_token.window", "duration"),
        ({"stale_token": {"window": float("nan")}}, "stale_token.window", "not a number"),
        ({"stale_token": {"window": 1e300}}, "stale_token.window", "too long"),
        ({"stale_token": {"windw": "10m"}}, "stale_token.windw", "Extra inputs"),
        ({"minimum_version": "2.0.10"}, "minimum_version", "Extra inputs"),
        ({"required_attributes": [""]}, "required_attributes", "must not be empty"),
        ({"required_attributes": "team.id"}, "required_attributes", "valid tuple"),
        ({"version": -1}, "version", "greater than or equal"),
        ({"version": "3"}, "version", "valid integer"),
        ({"tenant": ""}, "tenant", "at least 1 character"),
        ({"token_rotated_at": "yesterday"}, "token_rotated_at", "datetime"),
    ],
)
def test_validation_error_names_the_field(
    tmp_path: Path, change: dict[str, Any], field: str, message: str
) -> None:
    data = {**VALID, **change}
    with pytest.raises(pydantic.ValidationError) as raised:
        TenantPolicy.model_validate(data)
    locations = [".".join(str(part) for part in error["loc"]) for error in raised.value.errors()]
    assert locations == [field]
    assert message in str(raised.value)

    path = write(tmp_path, "policy.json", json.dumps(data, allow_nan=True))
    with pytest.raises(PolicyError) as from_file:
        TenantPolicy.from_file(path)
    assert f"  {field}: " in str(from_file.value)
    assert message in str(from_file.value)
    assert str(path) in str(from_file.value)


def test_missing_tenant_is_named(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"(?m)^  tenant: Field required$"):
        TenantPolicy.from_file(write(tmp_path, "p.yaml", "tools: {}\n"))


def test_every_problem_is_reported(tmp_path: Path) -> None:
    text = "tenant: acme\nbogus: 1\nstale_token: {threshold: 0, window: soon}\n"
    with pytest.raises(PolicyError) as raised:
        TenantPolicy.from_file(write(tmp_path, "p.yaml", text))
    message = str(raised.value)
    for field in ("bogus", "stale_token.threshold", "stale_token.window"):
        assert f"  {field}: " in message


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("p.toml", "tenant = 'acme'", "unknown policy file type '.toml'"),
        ("p.yaml", "tenant: [acme\n", "cannot read policy"),
        ("p.json", "{tenant: acme}", "cannot read policy"),
        ("p.yaml", "- tenant: acme\n", "expected a mapping at the top level, got list"),
        ("p.yaml", "", "expected a mapping at the top level, got NoneType"),
    ],
)
def test_unusable_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        TenantPolicy.from_file(write(tmp_path, name, text))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy"):
        TenantPolicy.from_file(tmp_path / "absent.yaml")


# -------------------------------------------------------------------------------- round trip


def test_is_a_message_with_json_round_trip() -> None:
    policy = TenantPolicy(
        tenant="acme",
        version=4,
        tools={"claude-code": ToolPolicy(minimum_version="2.0.10")},
        required_attributes=("team.id", "cost.center"),
        stale_token=StaleTokenPolicy(threshold=5, window=timedelta(seconds=90)),
        token_rotated_at=datetime(2026, 11, 27, 12, 0, tzinfo=UTC),
        managed_settings={"env": {"CLAUDE_CODE_ENABLE_TELEMETRY": "1"}},
    )
    assert isinstance(policy, Message)
    wire = json.loads(policy.to_json())
    assert wire == {
        "tenant": "acme",
        "version": 4,
        "tools": {"claude-code": {"minimum_version": "2.0.10"}},
        "required_attributes": ["team.id", "cost.center"],
        "stale_token": {"threshold": 5, "window": 90},
        "token_rotated_at": "2026-11-27T12:00:00Z",
        "managed_settings": {"env": {"CLAUDE_CODE_ENABLE_TELEMETRY": "1"}},
    }
    assert TenantPolicy.from_json(policy.to_json()) == policy
    assert TenantPolicy.from_json(policy.to_json().decode()) == policy


def test_fractional_window_round_trips() -> None:
    policy = TenantPolicy(tenant="a", stale_token=StaleTokenPolicy(window=timedelta(seconds=1.5)))
    assert json.loads(policy.to_json())["stale_token"]["window"] == 1.5
    assert TenantPolicy.from_json(policy.to_json()) == policy


def test_from_json_rejects_unknown_fields() -> None:
    with pytest.raises(pydantic.ValidationError, match="extra"):
        TenantPolicy.from_json(b'{"tenant": "acme", "extra": 1}')


def test_file_and_wire_agree(tmp_path: Path) -> None:
    policy = TenantPolicy.from_file(write(tmp_path, "acme.yaml", EXAMPLE_YAML))
    json_path = write(tmp_path, "acme.json", policy.to_json().decode())
    assert TenantPolicy.from_file(json_path) == policy


policies = st.builds(
    TenantPolicy,
    tenant=st.from_regex(TENANT_ID_CHARSET, fullmatch=True).filter(is_tenant_id),
    version=st.integers(min_value=0, max_value=2**40),
    tools=st.dictionaries(
        st.text(min_size=1, max_size=8).filter(str.strip),
        st.builds(
            ToolPolicy,
            minimum_version=st.none() | st.sampled_from(["2.0.10", "1!2.0rc1", "0.1.post2"]),
        ),
        max_size=3,
    ),
    required_attributes=st.lists(st.text(min_size=1, max_size=8).filter(str.strip), max_size=3).map(
        tuple
    ),
    stale_token=st.builds(
        StaleTokenPolicy,
        threshold=st.integers(min_value=1, max_value=MAX_STALE_THRESHOLD),
        window=st.integers(min_value=1, max_value=10**6).map(lambda ms: timedelta(milliseconds=ms)),
    ),
    token_rotated_at=st.none()
    | st.datetimes(timezones=st.just(UTC), min_value=datetime(2000, 1, 1)),
)


@settings(max_examples=100, deadline=None)
@given(policies)
def test_any_policy_round_trips(policy: TenantPolicy) -> None:
    assert TenantPolicy.from_json(policy.to_json()) == policy
