"""Pre-encoded OTLP exports, shaped like Claude Code's, with their timestamps patched at send time.

Each (laptop, tool, signal, variant) is encoded once with ``opentelemetry-proto``: every
``time_unix_nano`` holds a sentinel, and the bytes are split around it. Timestamps are
``fixed64`` fields, so sending is one ``bytes.join`` with the current time: the generator keeps
up, and every export still carries its own time, as a laptop's would.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Final

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from loadtest.fleet import CLAUDE, Laptop, resource_attributes

_SENTINEL: Final = 0x7E5A11E10AD71E57
_SENTINEL_BYTES: Final = struct.pack("<Q", _SENTINEL)
_START_NANOS: Final = 1_700_000_000_000_000_000

# Claude Code's metrics (https://docs.claude.com/en/docs/claude-code/monitoring-usage)
CLAUDE_METRICS: Final[tuple[tuple[str, dict[str, str]], ...]] = (
    ("claude_code.session.count", {}),
    ("claude_code.lines_of_code.count", {"type": "added"}),
    ("claude_code.lines_of_code.count", {"type": "removed"}),
    ("claude_code.cost.usage", {"model": "claude-sonnet-4-5"}),
    ("claude_code.token.usage", {"type": "input", "model": "claude-sonnet-4-5"}),
    ("claude_code.token.usage", {"type": "output", "model": "claude-sonnet-4-5"}),
    ("claude_code.token.usage", {"type": "cacheRead", "model": "claude-sonnet-4-5"}),
    ("claude_code.active_time.total", {}),
)
CLAUDE_EVENTS: Final = (
    ("claude_code.user_prompt", {"prompt_length": "42"}),
    ("claude_code.api_request", {"model": "claude-sonnet-4-5", "duration_ms": "2140"}),
    ("claude_code.tool_result", {"tool_name": "Edit", "success": "true"}),
)
OTHER_METRICS: Final[tuple[tuple[str, dict[str, str]], ...]] = (
    ("gemini_cli.session.count", {}),
    ("gemini_cli.token.usage", {"type": "input", "model": "gemini-2.5-pro"}),
    ("gemini_cli.token.usage", {"type": "output", "model": "gemini-2.5-pro"}),
)
OTHER_EVENTS: Final = (
    ("gemini_cli.user_prompt", {"prompt_length": "17"}),
    ("gemini_cli.api_request", {"model": "gemini-2.5-pro", "duration_ms": "1830"}),
)


@dataclass(frozen=True, slots=True)
class Template:
    """An encoded export split around its timestamps; ``body(now)`` puts the time in."""

    pieces: tuple[bytes, ...]
    size: int

    def body(self, now_nanos: int) -> bytes:
        return struct.pack("<Q", now_nanos).join(self.pieces)


def _kv(attributes: Any, values: dict[str, str]) -> None:
    for key, value in values.items():
        kv = attributes.add()
        kv.key = key
        kv.value.string_value = value


def _record_attributes(laptop: Laptop, version: str) -> dict[str, str]:
    return {
        "app.version": version,
        "session.id": f"5b0c6a8e-{laptop.index:08x}-4000-8000-000000000001",
        "user.account_uuid": f"acc-{laptop.index:08x}",
        "user.email": f"{laptop.serial.lower()}@example.com",
        "organization.id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "terminal.type": "iTerm.app",
    }


def encode(laptop: Laptop, tool: int, signal: str, variant: int) -> bytes:
    """One export of one tool, its timestamps set to the sentinel."""
    resource = resource_attributes(laptop, tool, variant)
    version = resource["service.version"]
    claude = laptop.tools[tool].service == CLAUDE
    common = _record_attributes(laptop, version)
    request: Any
    if signal == "metrics":
        request = ExportMetricsServiceRequest()
        rm = request.resource_metrics.add()
        _kv(rm.resource.attributes, resource)
        scope = rm.scope_metrics.add()
        scope.scope.name = "com.anthropic.claude_code" if claude else "gemini-cli"
        scope.scope.version = version
        for name, extra in CLAUDE_METRICS if claude else OTHER_METRICS:
            metric = scope.metrics.add()
            metric.name = name
            metric.sum.aggregation_temporality = 2  # cumulative, as Claude Code exports
            metric.sum.is_monotonic = True
            point = metric.sum.data_points.add()
            point.start_time_unix_nano = _START_NANOS
            point.time_unix_nano = _SENTINEL
            point.as_double = 1.0
            _kv(point.attributes, {**common, **extra})
    else:
        request = ExportLogsServiceRequest()
        rl = request.resource_logs.add()
        _kv(rl.resource.attributes, resource)
        scope = rl.scope_logs.add()
        scope.scope.name = "com.anthropic.claude_code.events" if claude else "gemini-cli"
        scope.scope.version = version
        for name, extra in CLAUDE_EVENTS if claude else OTHER_EVENTS:
            record = scope.log_records.add()
            record.time_unix_nano = _SENTINEL
            record.observed_time_unix_nano = _SENTINEL
            record.body.string_value = name
            _kv(record.attributes, {"event.name": name.split(".", 1)[1], **common, **extra})
    return request.SerializeToString()  # type: ignore[no-any-return]


def template(encoded: bytes) -> Template:
    pieces = tuple(encoded.split(_SENTINEL_BYTES))
    if len(pieces) < 2:
        raise ValueError("no timestamp found in the encoded export")
    return Template(pieces, len(encoded))


class Templates:
    """Every export a set of laptops can send, encoded on first use and kept."""

    def __init__(self, laptops: dict[int, Laptop]) -> None:
        self._laptops = laptops
        self._cache: dict[tuple[int, int, str, int], Template] = {}

    def get(self, laptop: int, tool: int, signal: str, variant: int) -> Template:
        key = (laptop, tool, signal, variant)
        found = self._cache.get(key)
        if found is None:
            found = template(encode(self._laptops[laptop], tool, signal, variant))
            self._cache[key] = found
        return found

    def __len__(self) -> int:
        return len(self._cache)
