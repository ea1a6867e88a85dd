"""Bytes → OTLP export request, for each wire format the receivers accept."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from ingest.otlp_json import OtlpJsonError, decode_request
from schemas import Signal

M = TypeVar("M")


class MalformedRequest(ValueError):
    """The body is not a valid OTLP request; final (INVALID_ARGUMENT / 400)."""


def decode_protobuf(body: bytes, message_type: type[M]) -> M:
    message = message_type()
    try:
        message.ParseFromString(body)  # type: ignore[attr-defined]
    except DecodeError as error:
        raise MalformedRequest(f"malformed protobuf: {error}") from error
    return message


def decode_json(body: bytes, message_type: type[M]) -> M:
    try:
        return decode_request(body, message_type)
    except OtlpJsonError as error:
        raise MalformedRequest(f"malformed OTLP/JSON: {error}") from error


@dataclass(frozen=True, slots=True)
class Service:
    """One OTLP service: where it lives on each transport and how it answers."""

    signal: Signal
    grpc_name: str
    http_path: str
    request_type: type
    response_type: type
    rejected_field: str


SERVICES: tuple[Service, ...] = (
    Service(
        Signal.METRICS,
        "opentelemetry.proto.collector.metrics.v1.MetricsService",
        "/v1/metrics",
        ExportMetricsServiceRequest,
        ExportMetricsServiceResponse,
        "rejected_data_points",
    ),
    Service(
        Signal.LOGS,
        "opentelemetry.proto.collector.logs.v1.LogsService",
        "/v1/logs",
        ExportLogsServiceRequest,
        ExportLogsServiceResponse,
        "rejected_log_records",
    ),
    Service(
        Signal.TRACES,
        "opentelemetry.proto.collector.trace.v1.TraceService",
        "/v1/traces",
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
        "rejected_spans",
    ),
)


def export_response(service: Service, rejected: int, message: str) -> Any:
    """Full success leaves partial_success unset, as the spec asks."""
    response = service.response_type()
    if rejected or message:
        setattr(response.partial_success, service.rejected_field, rejected)
        response.partial_success.error_message = message
    return response
