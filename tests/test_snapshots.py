"""Snapshot extraction is pure: protobuf in, snapshots and rejections out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ingest.snapshots import Limits, extract, identity_of
from schemas import Signal

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def _set(attributes: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        kv = attributes.add()
        kv.key = key
        if isinstance(value, bool):
            kv.value.bool_value = value
        elif isinstance(value, int):
            kv.value.int_value = value
        elif isinstance(value, float):
            kv.value.double_value = value
        elif isinstance(value, list):
            for item in value:
                kv.value.array_value.values.add().string_value = item
        else:
            kv.value.string_value = value


def metrics(resource: dict[str, Any], point: dict[str, Any] | None = None, points: int = 1) -> Any:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    _set(rm.resource.attributes, resource)
    metric = rm.scope_metrics.add().metrics.add()
    for i in range(points):
        dp = metric.gauge.data_points.add()
        dp.time_unix_nano = 1_700_000_000_000_000_000 + i
        _set(dp.attributes, point or {})
    return request


def test_resource_attributes_win_over_record_attributes() -> None:
    request = metrics(
        {"device.serial_number": "R", "app.version": "1.0.0", "service.name": "claude-code"},
        {"device.serial_number": "P", "app.version": "2.0.0", "team.id": "t"},
    )
    [snap] = extract(request, "acme", NOW).snapshots
    assert (snap.endpoint_id, snap.app_version, snap.team_id) == ("acme/R", "1.0.0", "t")


def test_empty_values_count_as_absent() -> None:
    request = metrics({"device.serial_number": "", "host.id": "H", "team.id": ""}, {})
    [snap] = extract(request, "acme", NOW).snapshots
    assert snap.endpoint_id == "acme/H"
    assert snap.serial_number is None
    assert snap.team_id is None


def test_service_name_defaults_like_the_sdk() -> None:
    [snap] = extract(metrics({"host.name": "h"}), "acme", NOW).snapshots
    assert snap.service_name == "unknown_service"


def test_non_string_attributes_become_strings() -> None:
    request = metrics({"host.name": "h", "n": 3, "b": True, "f": 1.5, "l": ["a", "b"]})
    attrs = extract(request, "acme", NOW).snapshots[0].resource_attributes
    assert attrs == {"host.name": "h", "n": "3", "b": "true", "f": "1.5", "l": '["a","b"]'}


def test_observed_at_comes_from_the_first_record_else_received_at() -> None:
    [snap] = extract(metrics({"host.name": "h"}), "acme", NOW).snapshots
    assert snap.observed_at == datetime.fromtimestamp(1_700_000_000, UTC)
    assert snap.received_at == NOW
    request = ExportMetricsServiceRequest()
    _set(request.resource_metrics.add().resource.attributes, {"host.name": "h"})
    assert extract(request, "acme", NOW).snapshots[0].observed_at == NOW


def test_configured_identity_attributes() -> None:
    request = metrics({"host.name": "h"}, {"user.id": "u-1"})
    [snap] = extract(request, "acme", NOW, identity_attributes=("user.id",)).snapshots
    assert snap.endpoint_id == "acme/u-1"


def test_rejections_count_the_items_of_rejected_resources() -> None:
    request = metrics({"host.name": "ok"})
    bad = metrics({"host.name": "bad", **{f"k{i}": "v" for i in range(5)}}, points=3)
    request.resource_metrics.extend(bad.resource_metrics)
    result = extract(request, "acme", NOW, limits=Limits(max_attributes=4))
    assert [s.endpoint_id for s in result.snapshots] == ["acme/ok"]
    assert result.rejected_items == 3
    assert result.errors == ["resource 1 has 6 attributes, limit 4"]
    assert not result.rejected_all


def test_long_keys_and_values_are_rejected_by_name() -> None:
    long_value = extract(
        metrics({"host.name": "h", "x": "y" * 11}), "a", NOW, limits=Limits(max_value_length=10)
    )
    assert long_value.rejected_all
    assert "'x' is 11 chars, limit 10" in long_value.errors[0]
    long_key = extract(
        metrics({"host.name": "h", "k" * 11: "v"}), "a", NOW, limits=Limits(max_key_length=10)
    )
    assert "key of 11 chars" in long_key.errors[0]


def test_logs_and_spans() -> None:
    logs = ExportLogsServiceRequest()
    rl = logs.resource_logs.add()
    _set(rl.resource.attributes, {"service.name": "claude-code", "service.version": "2.0.0"})
    record = rl.scope_logs.add().log_records.add()
    record.observed_time_unix_nano = 1_700_000_000_000_000_000
    _set(record.attributes, {"host.name": "laptop", "app.version": "2.0.1"})
    [snap] = extract(logs, "acme", NOW).snapshots
    assert (snap.signal, snap.endpoint_id, snap.app_version) == (
        Signal.LOGS,
        "acme/laptop",
        "2.0.1",
    )
    assert snap.observed_at.year == 2023

    spans = ExportTraceServiceRequest()
    rs = spans.resource_spans.add()
    _set(rs.resource.attributes, {"host.id": "H", "service.version": "0.9"})
    rs.scope_spans.add().spans.add().name = "op"
    [snap] = extract(spans, "acme", NOW).snapshots
    assert (snap.signal, snap.app_version) == (Signal.TRACES, "0.9")


def test_identity_of_for_rejected_requests() -> None:
    assert identity_of(metrics({"device.serial_number": "S"})) == "S"
    assert identity_of(metrics({"service.name": "x"})) is None
    over = metrics({"device.serial_number": "S", **{f"k{i}": "v" for i in range(200)}})
    assert identity_of(over) is None  # the same limits apply to rejected requests
