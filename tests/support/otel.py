"""Telemetry shaped like Claude Code's, sent by the real OpenTelemetry SDK exporters.

Claude Code: `service.name=claude-code` and `service.version` on the resource, plus whatever
OTEL_RESOURCE_ATTRIBUTES adds (customers put `team.id` and `device.serial_number` there);
`app.version`, `session.id` and `user.email` on each data point and log record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import grpc
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogs
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter as GrpcMetrics,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter as HttpMetrics,
)
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource

Protocol = Literal["grpc", "http"]


def claude_resource(
    serial: str | None = "C02TEST0001",
    team: str | None = "platform",
    service_version: str = "2.0.14",
    extra: Mapping[str, str] | None = None,
) -> Resource:
    attributes: dict[str, str] = {
        "service.name": "claude-code",
        "service.version": service_version,
        "os.type": "darwin",
        "host.arch": "arm64",
    }
    if serial is not None:
        attributes["device.serial_number"] = serial
    if team is not None:
        attributes["team.id"] = team
    attributes.update(extra or {})
    return Resource(attributes)


def point_attributes(app_version: str = "2.0.14") -> dict[str, str]:
    return {
        "app.version": app_version,
        "session.id": "5b0c6a8e-0000-4000-8000-000000000001",
        "user.email": "dev@example.com",
        "user.id": "anon-1",
    }


def _headers(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token is not None else {}


@dataclass(frozen=True)
class ClientTls:
    """What an exporter trusts (``ca``) and, for mutual TLS, the certificate it presents."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca.read_bytes(),
            private_key=self.key.read_bytes() if self.key else None,
            certificate_chain=self.cert.read_bytes() if self.cert else None,
        )


def export_metrics(
    protocol: Protocol,
    port: int,
    token: str | None,
    resource: Resource,
    app_version: str = "2.0.14",
    timeout: float = 5,
    compression: bool = False,
    tls: ClientTls | None = None,
) -> bool:
    """Record Claude Code's session and token counters and export them once; True on success."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("com.anthropic.claude_code")
    attrs = point_attributes(app_version)
    meter.create_counter("claude_code.session.count").add(1, attrs)
    meter.create_counter("claude_code.token.usage", unit="tokens").add(
        1200, {**attrs, "type": "input", "model": "claude-sonnet-4-5"}
    )
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    exporter: GrpcMetrics | HttpMetrics
    if protocol == "grpc":
        exporter = GrpcMetrics(
            endpoint=f"localhost:{port}",
            insecure=tls is None,
            credentials=tls.grpc_credentials() if tls else None,
            headers=_headers(token),
            timeout=timeout,
        )
    else:
        exporter = HttpMetrics(
            endpoint=f"{'https' if tls else 'http'}://localhost:{port}/v1/metrics",
            headers=_headers(token),
            timeout=timeout,
            compression=Compression.Gzip if compression else Compression.NoCompression,
            certificate_file=str(tls.ca) if tls else None,
            client_certificate_file=str(tls.cert) if tls and tls.cert else None,
            client_key_file=str(tls.key) if tls and tls.key else None,
        )
    try:
        return exporter.export(data).name == "SUCCESS"
    finally:
        exporter.shutdown()


def export_logs(
    protocol: Protocol,
    port: int,
    token: str | None,
    resource: Resource,
    app_version: str = "2.0.14",
    timeout: float = 5,
) -> bool:
    """Emit a claude_code.api_request event and export it once; True on success."""
    captured = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=resource)
    provider.add_log_record_processor(SimpleLogRecordProcessor(captured))
    logger = provider.get_logger("com.anthropic.claude_code")
    logger.emit(
        body="claude_code.api_request",
        attributes={
            **point_attributes(app_version),
            "event.name": "api_request",
            "model": "claude-sonnet-4-5",
            "duration_ms": 812,
        },
    )
    records = captured.get_finished_logs()
    provider.shutdown()
    exporter: GrpcLogs | HttpLogs
    if protocol == "grpc":
        exporter = GrpcLogs(
            endpoint=f"localhost:{port}", insecure=True, headers=_headers(token), timeout=timeout
        )
    else:
        exporter = HttpLogs(
            endpoint=f"http://localhost:{port}/v1/logs", headers=_headers(token), timeout=timeout
        )
    try:
        return exporter.export(records).name == "SUCCESS"
    finally:
        exporter.shutdown()
