"""OTLP export request → one EndpointSnapshot per resource. Pure: no I/O, no clock.

Claude Code puts `service.version` on the resource but `app.version`, `user.email` and
`session.id` on data points and log records, and customers put identity (`device.serial_number`)
and `team.id` into OTEL_RESOURCE_ATTRIBUTES; so every attribute is looked up on the resource
first and on the first data point / log record / span second.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from schemas import DEFAULT_IDENTITY_ATTRIBUTES, EndpointSnapshot, Signal, endpoint_id
from schemas.identity import APP_VERSION, SERIAL_NUMBER, SERVICE_NAME, SERVICE_VERSION, TEAM_ID

ExportRequest = ExportMetricsServiceRequest | ExportLogsServiceRequest | ExportTraceServiceRequest

_UNKNOWN_SERVICE = "unknown_service"
_METRIC_DATA = ("gauge", "sum", "histogram", "exponential_histogram", "summary")


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-resource attribute limits; defaults follow the OTel SDK attribute-limit spirit."""

    max_attributes: int = 128
    max_key_length: int = 256
    max_value_length: int = 4096


MAX_ERRORS = 1000  # reasons kept per request; the rest are only counted


@dataclass(frozen=True, slots=True)
class Extraction:
    snapshots: list[EndpointSnapshot]
    rejected_items: int = 0  # data points / log records / spans in rejected resources
    errors: list[str] = field(default_factory=list)  # the first MAX_ERRORS reasons
    error_count: int = 0  # rejected resources, all of them

    @property
    def rejected_all(self) -> bool:
        return bool(self.errors) and not self.snapshots


class LimitExceeded(ValueError):
    """An attribute set over the configured limits; the message names the attribute."""


def signal_of(request: ExportRequest) -> Signal:
    if isinstance(request, ExportMetricsServiceRequest):
        return Signal.METRICS
    if isinstance(request, ExportLogsServiceRequest):
        return Signal.LOGS
    return Signal.TRACES


def _resources(request: ExportRequest) -> Sequence[Any]:
    if isinstance(request, ExportMetricsServiceRequest):
        return request.resource_metrics  # type: ignore[no-any-return]
    if isinstance(request, ExportLogsServiceRequest):
        return request.resource_logs  # type: ignore[no-any-return]
    return request.resource_spans  # type: ignore[no-any-return]


def _records(signal: Signal, resource: Any) -> Iterable[Any]:
    """Data points, log records or spans of one resource, lazily, in wire order."""
    if signal is Signal.METRICS:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                if kind in _METRIC_DATA:
                    yield from getattr(metric, kind).data_points
    elif signal is Signal.LOGS:
        for scope in resource.scope_logs:
            yield from scope.log_records
    else:
        for scope in resource.scope_spans:
            yield from scope.spans


def _record_time(signal: Signal, record: Any) -> int:
    if signal is Signal.LOGS:
        return int(record.time_unix_nano or record.observed_time_unix_nano)
    if signal is Signal.TRACES:
        return int(record.end_time_unix_nano or record.start_time_unix_nano)
    return int(record.time_unix_nano)


def _any_value_to_str(value: Any) -> str:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return str(value.string_value)
    if kind == "bool_value":
        return "true" if value.bool_value else "false"
    if kind in ("int_value", "double_value"):
        return str(getattr(value, kind))
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    if kind is None:
        return ""
    return json.dumps(_any_value_to_py(value), separators=(",", ":"), ensure_ascii=False)


def _any_value_to_py(value: Any) -> object:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_any_value_to_py(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _any_value_to_py(kv.value) for kv in value.kvlist_value.values}
    if kind in ("int_value", "double_value", "bool_value"):
        return getattr(value, kind)
    return _any_value_to_str(value)


def attributes(key_values: Sequence[Any], limits: Limits, where: str) -> dict[str, str]:
    """OTLP KeyValues as str → str, enforcing the limits (last duplicate key wins)."""
    if len(key_values) > limits.max_attributes:
        raise LimitExceeded(
            f"{where} has {len(key_values)} attributes, limit {limits.max_attributes}"
        )
    return _convert(key_values, limits, where, None)


def record_attributes(
    key_values: Sequence[Any], limits: Limits, where: str, wanted: frozenset[str]
) -> dict[str, str]:
    """Only the attributes a snapshot takes from a record; the rest are never converted."""
    return _convert(key_values, limits, where, wanted)


def _convert(
    key_values: Sequence[Any], limits: Limits, where: str, wanted: frozenset[str] | None
) -> dict[str, str]:
    out: dict[str, str] = {}
    for kv in key_values:
        key = kv.key
        if wanted is not None and key not in wanted:
            continue
        if not key or len(key) > limits.max_key_length:
            raise LimitExceeded(
                f"{where} attribute key of {len(key)} chars (must be 1..{limits.max_key_length})"
            )
        value = kv.value
        # Nearly every attribute is a string: skip the general conversion for those.
        text = (
            value.string_value
            if value.WhichOneof("value") == "string_value"
            else (_any_value_to_str(value))
        )
        if len(text) > limits.max_value_length:
            raise LimitExceeded(
                f"{where} attribute {key!r} is {len(text)} chars, limit {limits.max_value_length}"
            )
        out[key] = text
    return out


def _lookup(name: str, resource: dict[str, str], record: dict[str, str]) -> str | None:
    value = resource.get(name) or record.get(name)
    return value or None


def _identity(
    resource: dict[str, str], record: dict[str, str], identity_attributes: Sequence[str]
) -> str | None:
    for name in identity_attributes:
        value = _lookup(name, resource, record)
        if value:
            return value
    return None


@functools.cache
def _record_keys(identity_attributes: Sequence[str]) -> frozenset[str]:
    return frozenset((*identity_attributes, SERIAL_NUMBER, APP_VERSION, TEAM_ID))


def _count(signal: Signal, resource: Any) -> int:
    return sum(1 for _ in _records(signal, resource))


def _nanos_to_datetime(nanos: int) -> datetime:
    return datetime.fromtimestamp(nanos / 1e9, UTC)


def extract(
    request: ExportRequest,
    tenant_id: str,
    received_at: datetime,
    identity_attributes: Sequence[str] = DEFAULT_IDENTITY_ATTRIBUTES,
    limits: Limits = Limits(),
    start: int = 0,
    stop: int | None = None,
    token_id: str | None = None,
) -> Extraction:
    """Snapshots of the request's resources ``start`` to ``stop`` (all by default), so a
    caller can work through a huge request in slices and let other work run in between."""
    signal = signal_of(request)
    wanted = _record_keys(tuple(identity_attributes))
    snapshots: list[EndpointSnapshot] = []
    errors: list[str] = []
    error_count = 0
    rejected = 0
    entries = itertools.islice(_resources(request), start, stop)
    for index, resource_entry in enumerate(entries, start):
        where = f"resource {index}"
        first = next(iter(_records(signal, resource_entry)), None)
        try:
            resource = attributes(resource_entry.resource.attributes, limits, where)
            record = (
                record_attributes(first.attributes, limits, f"{where} first record", wanted)
                if first
                else {}
            )
        except LimitExceeded as error:
            error_count += 1
            if len(errors) < MAX_ERRORS:
                errors.append(str(error))
            rejected += _count(signal, resource_entry)
            continue
        identity = _identity(resource, record, identity_attributes)
        if identity is None:
            error_count += 1
            if len(errors) < MAX_ERRORS:
                errors.append(
                    f"{where} has no identity attribute (one of {', '.join(identity_attributes)})"
                )
            rejected += _count(signal, resource_entry)
            continue
        nanos = _record_time(signal, first) if first is not None else 0
        snapshots.append(
            EndpointSnapshot(
                tenant_id=tenant_id,
                endpoint_id=endpoint_id(tenant_id, identity),
                serial_number=_lookup(SERIAL_NUMBER, resource, record),
                service_name=resource.get(SERVICE_NAME) or _UNKNOWN_SERVICE,
                app_version=_lookup(APP_VERSION, resource, record)
                or resource.get(SERVICE_VERSION)
                or None,
                team_id=_lookup(TEAM_ID, resource, record),
                resource_attributes=resource,
                signal=signal,
                observed_at=_nanos_to_datetime(nanos) if nanos else received_at,
                received_at=received_at,
                token_id=token_id,
            )
        )
    return Extraction(snapshots, rejected, errors, error_count)


def resource_count(request: ExportRequest) -> int:
    return len(_resources(request))


def combined(parts: Sequence[Extraction]) -> Extraction:
    """Slices' extractions as one (errors still capped at MAX_ERRORS)."""
    if len(parts) == 1:
        return parts[0]
    errors = [error for part in parts for error in part.errors][:MAX_ERRORS]
    return Extraction(
        [snapshot for part in parts for snapshot in part.snapshots],
        sum(part.rejected_items for part in parts),
        errors,
        sum(part.error_count for part in parts),
    )


def identity_of(
    request: ExportRequest,
    identity_attributes: Sequence[str] = DEFAULT_IDENTITY_ATTRIBUTES,
    limits: Limits = Limits(),
    max_resources: int | None = None,
    deadline: float | None = None,
) -> str | None:
    """The first resource's identity, for attributing a rejected request to an endpoint;
    at most ``max_resources`` resources are looked at, and none after ``deadline``
    (``time.perf_counter``)."""
    signal = signal_of(request)
    wanted = frozenset(identity_attributes)
    for index, resource_entry in enumerate(_resources(request)):
        if (max_resources is not None and index >= max_resources) or (
            deadline is not None and index and time.perf_counter() > deadline
        ):
            return None
        first = next(iter(_records(signal, resource_entry)), None)
        try:
            resource = attributes(resource_entry.resource.attributes, limits, "resource")
            record = record_attributes(first.attributes, limits, "record", wanted) if first else {}
        except LimitExceeded:
            continue
        identity = _identity(resource, record, identity_attributes)
        if identity:
            return identity
    return None
