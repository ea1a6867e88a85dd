"""Synthetic fleets: pre-encoded OTLP exports shaped like Claude Code's, one per laptop.

Pre-encoding keeps the load generator cheap, so a benchmark measures the receiver.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from loadtest.otlp import CLAUDE_METRICS as METRICS  # one list of Claude Code's metrics

TEAMS = ("platform", "payments", "mobile", "data", "security", "web")
VERSIONS = ("2.0.8", "2.0.10", "2.0.12", "2.0.14", "2.1.0")


@dataclass(frozen=True, slots=True)
class Laptop:
    serial: str
    team: str | None
    version: str


def fleet(size: int, seed: int = 7, missing_team: float = 0.05) -> list[Laptop]:
    rng = random.Random(seed)
    return [
        Laptop(
            serial=f"C02{i:08d}",
            team=None if rng.random() < missing_team else rng.choice(TEAMS),
            version=rng.choice(VERSIONS),
        )
        for i in range(size)
    ]


def _kv(attributes: object, values: dict[str, str]) -> None:
    for key, value in values.items():
        kv = attributes.add()  # type: ignore[attr-defined]
        kv.key = key
        kv.value.string_value = value


def metrics_export(laptop: Laptop, time_nanos: int) -> bytes:
    """One minute of one laptop's Claude Code metrics: 8 data points, about 2 KB."""
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    resource = {
        "service.name": "claude-code",
        "service.version": laptop.version,
        "os.type": "darwin",
        "os.version": "15.1",
        "host.arch": "arm64",
        "device.serial_number": laptop.serial,
    }
    if laptop.team:
        resource["team.id"] = laptop.team
    _kv(rm.resource.attributes, resource)
    scope = rm.scope_metrics.add()
    scope.scope.name = "com.anthropic.claude_code"
    scope.scope.version = laptop.version
    point_attributes = {
        "app.version": laptop.version,
        "session.id": f"5b0c6a8e-{laptop.serial[-8:]}-4000-8000-000000000001",
        "user.id": f"anon-{laptop.serial}",
        "user.email": f"{laptop.serial.lower()}@example.com",
        "organization.id": "3fa85f64-5717-4562-b3fc-2c963f66afa6",
        "terminal.type": "iTerm.app",
    }
    for name, extra in METRICS:
        metric = scope.metrics.add()
        metric.name = name
        metric.sum.aggregation_temporality = 1
        metric.sum.is_monotonic = True
        point = metric.sum.data_points.add()
        point.start_time_unix_nano = time_nanos - 60_000_000_000
        point.time_unix_nano = time_nanos
        point.as_double = 1.0
        _kv(point.attributes, {**point_attributes, **extra})
    return request.SerializeToString()  # type: ignore[no-any-return]
