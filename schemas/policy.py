"""A tenant's drift policy: minimum client versions, required attributes, stale-token rule.

Admins write it as YAML (or JSON); it travels on ``driftline.policy`` as one JSON object keyed by
tenant, like every other message. Validation is strict (unknown keys are errors) because a typo
in a policy file silently disabling a rule is worse than a rejected publish.
"""

from __future__ import annotations

import json
import math
import os
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Self

import yaml
from packaging.version import InvalidVersion, Version
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
)

from schemas.durations import parse_duration
from schemas.identity import TEAM_ID, check_tenant_id
from schemas.messages import Message, Timestamp

DEFAULT_REQUIRED_ATTRIBUTES: tuple[str, ...] = (TEAM_ID,)
DEFAULT_STALE_THRESHOLD = 3
DEFAULT_STALE_WINDOW = timedelta(minutes=10)
# The processor keeps this many rejection times per endpoint: the cap bounds its memory.
MAX_STALE_THRESHOLD = 100


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and each bad field."""


def _version_text(value: object) -> object:
    """Versions must be quoted: YAML reads ``2.10`` as the float 2.1, silently changing it."""
    if isinstance(value, bool | int | float):
        raise ValueError(f'must be a quoted string, got the number {value!r} (write e.g. "2.0.10")')
    return value


def _valid_version(value: str) -> str:
    try:
        Version(value)
    except InvalidVersion:
        raise ValueError(f'{value!r} is not a valid version (e.g. "2.0.10")') from None
    return value


VersionText = Annotated[str, BeforeValidator(_version_text), AfterValidator(_valid_version)]


def _duration(value: object) -> object:
    """Accept "10m"/"90s"/"2h" as written in policy files, and plain seconds."""
    if isinstance(value, bool):
        raise ValueError('must be a duration such as "10m" or a number of seconds')
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{value!r} is not a number of seconds")
    try:
        if isinstance(value, int | float):
            return timedelta(seconds=value)
        if isinstance(value, str):
            return parse_duration(value)
    except OverflowError:
        raise ValueError(f"{value!r} is too long a duration") from None
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than zero")
    return value


def _seconds(value: timedelta) -> int | float:
    """Seconds on the wire: unambiguous for any JSON reader, and accepted back on input."""
    seconds = value.total_seconds()
    return int(seconds) if seconds.is_integer() else seconds


Window = Annotated[
    timedelta,
    BeforeValidator(_duration),
    AfterValidator(_positive),
    PlainSerializer(_seconds, return_type=int | float),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ToolPolicy(_Frozen):
    """Rules for one tool, keyed by its OTel ``service.name``."""

    minimum_version: VersionText | None = None


class StaleTokenPolicy(_Frozen):
    """``threshold`` rejections within ``window`` of each other after a rotation is stale."""

    threshold: int = Field(
        default=DEFAULT_STALE_THRESHOLD, ge=1, le=MAX_STALE_THRESHOLD, strict=True
    )
    window: Window = DEFAULT_STALE_WINDOW


class TenantPolicy(Message):
    """One tenant's policy. ``version`` is set by the publisher and grows per tenant.

    ``token_rotated_at`` is the tenant's latest ingest-token rotation; the ingest side fills it,
    and without it no endpoint can be stale.
    """

    tenant: str = Field(min_length=1)
    version: int = Field(default=0, ge=0, strict=True)
    tools: dict[str, ToolPolicy] = Field(default_factory=dict)
    required_attributes: tuple[str, ...] = DEFAULT_REQUIRED_ATTRIBUTES
    stale_token: StaleTokenPolicy = StaleTokenPolicy()
    token_rotated_at: Timestamp | None = None
    managed_settings: dict[str, Any] = Field(default_factory=dict)
    """Claude Code managed settings (``env``, ``permissions``, MCP allowlists, ...): what
    ``driftline policy push`` renders into the tenant's MDM profile. Detection ignores it."""

    @field_validator("tenant")
    @classmethod
    def _tenant_id(cls, tenant: str) -> str:
        return check_tenant_id(tenant)

    @field_validator("managed_settings")
    @classmethod
    def _plist_values(cls, settings: dict[str, Any]) -> dict[str, Any]:
        _check_plist_value(settings, "managed_settings")
        return settings

    @field_validator("tools")
    @classmethod
    def _tool_names(cls, tools: dict[str, ToolPolicy]) -> dict[str, ToolPolicy]:
        if any(not name.strip() for name in tools):
            raise ValueError("tool names (service.name values) must not be empty")
        return tools

    @field_validator("required_attributes")
    @classmethod
    def _attribute_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name.strip() for name in names):
            raise ValueError("attribute names must not be empty")
        return tuple(dict.fromkeys(names))  # duplicates are harmless: drop them, keep order

    @classmethod
    def default(cls, tenant: str) -> Self:
        """The policy of a tenant that never published one: only ``team.id`` is required.

        Built without validation: events of a tenant id from before ids were validated (still
        on a Kafka topic, say) are judged by the default instead of stopping a worker. Only
        validated policies are ever stored or published, since nothing writes this one as is.
        """
        return cls.model_construct(tenant=tenant)

    def minimum_version(self, service_name: str) -> str | None:
        tool = self.tools.get(service_name)
        return tool.minimum_version if tool else None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Self:
        """Read a ``.yaml``/``.yml`` or ``.json`` file; any problem is one ``PolicyError``."""
        path = Path(path)
        data = _load(path)
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            raise PolicyError(f"{path}: invalid policy\n{describe(error)}") from None


def _check_plist_value(value: Any, where: str) -> None:
    """Managed settings become a property list: no null, string keys, 64-bit integers."""
    if value is None:
        raise ValueError(f"{where}: null cannot be put in a configuration profile; omit the key")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"{where}: keys must be non-empty strings, got {key!r}")
            _check_plist_value(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_plist_value(item, f"{where}[{index}]")
    elif isinstance(value, bool | str):
        return
    elif isinstance(value, int):
        if not -(2**63) <= value < 2**63:
            raise ValueError(f"{where}: {value} does not fit a 64-bit property list integer")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value} cannot be put in a property list")
    else:
        raise ValueError(f"{where}: unsupported value of type {type(value).__name__}")


def _load(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise PolicyError(f"{path}: unknown policy file type {suffix!r} (use .yaml, .yml, .json)")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as error:
        raise PolicyError(f"{path}: cannot read policy: {error}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def describe(error: ValidationError) -> str:
    """One ``  dotted.field: message`` line per problem, the way an admin reads a config."""
    lines = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem["loc"]) or "(top level)"
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)
