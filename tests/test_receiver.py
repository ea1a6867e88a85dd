"""The receiver end to end in-process: real OTel SDK exporters → gRPC/HTTP → bus."""

from __future__ import annotations

import asyncio
import gzip
import json
from datetime import timedelta
from pathlib import Path

import grpc
import httpx
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)

from driftline.bus import KafkaBus, KafkaOptions, MemoryBus
from ingest.receiver import ReceiverOptions
from schemas import AuthEvent, AuthReason, EndpointSnapshot, Signal, topics
from tests.conftest import RunningReceiver, start_receiver
from tests.support.otel import Protocol, claude_resource, export_logs, export_metrics

METRICS_PATH = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"


def snapshots(running: RunningReceiver) -> list[EndpointSnapshot]:
    assert isinstance(running.bus, MemoryBus)
    return [EndpointSnapshot.from_json(r.value) for r in running.bus.tail(topics.SNAPSHOTS)]


async def auth_events(running: RunningReceiver) -> list[AuthEvent]:
    await running.receiver.service.drain()
    assert isinstance(running.bus, MemoryBus)
    return [AuthEvent.from_json(r.value) for r in running.bus.tail(topics.AUTH_EVENTS)]


def _port(running: RunningReceiver, protocol: Protocol) -> int:
    return running.grpc_port if protocol == "grpc" else running.http_port


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_metrics_from_the_sdk_become_one_snapshot_keyed_by_endpoint(
    running: RunningReceiver, protocol: Protocol
) -> None:
    resource = claude_resource(serial="C02ABC123", team="platform", service_version="2.0.9")
    ok = await asyncio.to_thread(
        export_metrics, protocol, _port(running, protocol), running.token, resource, "2.0.14"
    )
    assert ok
    [snapshot] = snapshots(running)
    assert snapshot.tenant_id == "acme"
    assert snapshot.endpoint_id == "acme/C02ABC123"
    assert snapshot.serial_number == "C02ABC123"
    assert snapshot.service_name == "claude-code"
    # app.version from the data point wins over the resource's service.version
    assert snapshot.app_version == "2.0.14"
    assert snapshot.team_id == "platform"
    assert snapshot.signal is Signal.METRICS
    assert snapshot.resource_attributes["os.type"] == "darwin"
    assert isinstance(running.bus, MemoryBus)
    [record] = running.bus.tail(topics.SNAPSHOTS)
    assert record.key == "acme/C02ABC123"


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_logs_from_the_sdk_become_a_snapshot(
    running: RunningReceiver, protocol: Protocol
) -> None:
    resource = claude_resource(serial="C02LOGS01", team=None)
    ok = await asyncio.to_thread(
        export_logs, protocol, _port(running, protocol), running.token, resource, "2.1.0"
    )
    assert ok
    [snapshot] = snapshots(running)
    assert snapshot.signal is Signal.LOGS
    assert snapshot.app_version == "2.1.0"
    assert snapshot.team_id is None


async def test_gzip_http_export(running: RunningReceiver) -> None:
    ok = await asyncio.to_thread(
        export_metrics,
        "http",
        running.http_port,
        running.token,
        claude_resource(),
        "2.0.14",
        5,
        True,
    )
    assert ok
    assert len(snapshots(running)) == 1


async def test_service_version_is_the_fallback_version(running: RunningReceiver) -> None:
    # Claude Code without OTEL_METRICS_INCLUDE_VERSION: no app.version on data points
    request = _request_with(
        resource={
            "device.serial_number": "C1",
            "service.name": "claude-code",
            "service.version": "1.9.0",
        },
        point={},
    )
    response = await _post(running, request.SerializeToString())
    assert response.status_code == 200
    assert snapshots(running)[0].app_version == "1.9.0"


async def test_identity_falls_back_to_host_id_then_record_attributes(
    running: RunningReceiver,
) -> None:
    request = _request_with(resource={"service.name": "x", "host.id": "H-1"}, point={})
    assert (await _post(running, request.SerializeToString())).status_code == 200
    request = _request_with(resource={"service.name": "x"}, point={"host.name": "laptop-7"})
    assert (await _post(running, request.SerializeToString())).status_code == 200
    assert [s.endpoint_id for s in snapshots(running)] == ["acme/H-1", "acme/laptop-7"]


# --- tokens -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_rotated_token_works_within_grace_then_is_retired(
    running: RunningReceiver, protocol: Protocol
) -> None:
    old = running.token
    _, _, _ = running.store.rotate("acme", timedelta(hours=1), timedelta(days=30))
    port = _port(running, protocol)
    assert await asyncio.to_thread(export_metrics, protocol, port, old, claude_resource())
    # grace over: rotate again with zero grace, which retires every older token now
    _, new, _ = running.store.rotate("acme", timedelta(0), timedelta(days=30))
    assert not await asyncio.to_thread(
        export_metrics, protocol, port, old, claude_resource(serial="C02STALE")
    )
    assert await asyncio.to_thread(export_metrics, protocol, port, new, claude_resource())
    [event] = await auth_events(running)
    assert event.reason is AuthReason.RETIRED
    assert event.tenant_id == "acme"  # a retired token still names its tenant
    assert event.endpoint_id == "acme/C02STALE"
    assert event.source in ("127.0.0.1", "::1")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, AuthReason.MISSING),
        ("Basic dXNlcjpwYXNz", AuthReason.MALFORMED),
        ("Bearer not-a-driftline-token", AuthReason.MALFORMED),
        ("Bearer dlt_00000000_" + "A" * 43, AuthReason.UNKNOWN),
    ],
)
async def test_bad_tokens_get_401_and_an_auth_event(
    running: RunningReceiver, header: str | None, reason: AuthReason
) -> None:
    body = _request_with(
        resource={"device.serial_number": "C9", "service.name": "claude-code"}, point={}
    ).SerializeToString()
    response = await _post(running, body, authorization=header)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    status = status_pb2.Status.FromString(response.content)
    assert reason.value in status.message
    [event] = await auth_events(running)
    assert event.reason is reason
    assert event.tenant_id is None
    assert event.identity == "C9"
    assert snapshots(running) == []


async def test_revoked_token_is_refused_on_grpc(running: RunningReceiver) -> None:
    token_id = running.store.records("acme")[0].token_id
    running.store.revoke(token_id, timedelta(days=1))
    ok = await asyncio.to_thread(
        export_metrics, "grpc", running.grpc_port, running.token, claude_resource(serial="C02REV")
    )
    assert not ok
    [event] = await auth_events(running)
    assert (event.reason, event.tenant_id, event.token_id) == (AuthReason.REVOKED, "acme", token_id)
    code, _, _ = await _grpc_raw(running, b"", authorization=f"Bearer {running.token}")
    assert code == grpc.StatusCode.UNAUTHENTICATED


async def test_auth_events_are_coalesced_per_endpoint_never_dropped(
    running: RunningReceiver,
) -> None:
    body = _request_with(resource={"device.serial_number": "C9"}, point={}).SerializeToString()
    for _ in range(20):
        assert (await _post(running, body, authorization=None)).status_code == 401
    # the first at once, the others held and counted (one event per second of them)
    first, *rest = await auth_events(running)
    assert first.count == 1 and rest
    assert sum(event.count for event in rest) == 19
    assert first.observed_at <= rest[0].first_at <= rest[0].observed_at
    assert {event.identity for event in rest} == {"C9"}


# --- bad input --------------------------------------------------------------------------------


async def test_malformed_protobuf_is_400_and_the_receiver_keeps_serving(
    running: RunningReceiver,
) -> None:
    response = await _post(running, b"\xff\xff\xff\xff not protobuf")
    assert response.status_code == 400
    assert "malformed protobuf" in status_pb2.Status.FromString(response.content).message
    code, details, _ = await _grpc_raw(running, b"\xff\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed protobuf" in details
    assert await asyncio.to_thread(
        export_metrics, "grpc", running.grpc_port, running.token, claude_resource()
    )


async def test_invalid_utf8_in_a_string_is_rejected(running: RunningReceiver) -> None:
    body = _request_with(
        resource={"device.serial_number": "SERIAL-1"}, point={}
    ).SerializeToString()
    broken = body.replace(b"SERIAL-1", b"SERIAL\xff\xfe")
    response = await _post(running, broken)
    assert response.status_code == 400
    assert snapshots(running) == []


async def test_malformed_json_is_400_with_a_json_status(running: RunningReceiver) -> None:
    response = await _post(running, b'{"resourceMetrics": [', content_type="application/json")
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    assert "malformed OTLP/JSON" in response.json()["message"]


async def test_otlp_json_export(running: RunningReceiver) -> None:
    body = {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": [
                        {"key": "service.name", "value": {"stringValue": "claude-code"}},
                        {"key": "device.serial_number", "value": {"stringValue": "CJSON1"}},
                        {"key": "team.id", "value": {"stringValue": "data"}},
                    ]
                },
                "scopeMetrics": [
                    {
                        "metrics": [
                            {
                                "name": "claude_code.session.count",
                                "sum": {
                                    "aggregationTemporality": 1,
                                    "isMonotonic": True,
                                    "dataPoints": [
                                        {
                                            "asInt": "1",
                                            "timeUnixNano": "1764000000000000000",
                                            "attributes": [
                                                {
                                                    "key": "app.version",
                                                    "value": {"stringValue": "2.0.3"},
                                                }
                                            ],
                                        }
                                    ],
                                },
                            }
                        ]
                    }
                ],
                "someFutureField": {"ignored": True},
            }
        ]
    }
    response = await _post(running, json.dumps(body).encode(), content_type="application/json")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {}
    [snapshot] = snapshots(running)
    assert (snapshot.endpoint_id, snapshot.app_version, snapshot.team_id) == (
        "acme/CJSON1",
        "2.0.3",
        "data",
    )
    assert snapshot.observed_at.year == 2025


async def test_wrong_content_type_is_415(running: RunningReceiver) -> None:
    response = await _post(running, b"hello", content_type="text/plain")
    assert response.status_code == 415


async def test_unknown_paths_are_404_and_other_methods_405_with_a_status(
    running: RunningReceiver,
) -> None:
    base = f"http://127.0.0.1:{running.http_port}"
    async with httpx.AsyncClient() as client:
        missing = await client.post(f"{base}/v1/profiles", content=b"")
        wrong = await client.get(f"{base}/v1/metrics")
    assert missing.status_code == 404 and "/v1/profiles" in missing.json()["message"]
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["message"] == "use POST"


async def test_oversize_bodies_are_refused(tmp_path: Path) -> None:
    running = await start_receiver(
        tmp_path,
        MemoryBus(),
        receiver_options=ReceiverOptions(
            grpc_port=0, http_port=0, max_grpc_bytes=2048, max_http_bytes=2048
        ),
    )
    try:
        big = _request_with(
            resource={"device.serial_number": "C1", "pad": "x" * 3000}, point={}
        ).SerializeToString()
        response = await _post(running, big)
        assert response.status_code == 413
        gzipped = await _post(running, gzip.compress(big), content_encoding="gzip")
        assert gzipped.status_code == 413  # the limit applies to the decoded body
        code, _, _ = await _grpc_raw(running, big)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        small = _request_with(resource={"device.serial_number": "C1"}, point={})
        assert (await _post(running, small.SerializeToString())).status_code == 200
    finally:
        await running.receiver.stop(grace=0)


async def test_too_many_attributes_rejects_the_request(running: RunningReceiver) -> None:
    attrs = {f"k{i}": "v" for i in range(200)} | {"device.serial_number": "C1"}
    response = await _post(running, _request_with(resource=attrs, point={}).SerializeToString())
    assert response.status_code == 400
    assert "attributes, limit 128" in status_pb2.Status.FromString(response.content).message


async def test_only_the_bad_resource_is_rejected_as_partial_success(
    running: RunningReceiver,
) -> None:
    request = _request_with(resource={"device.serial_number": "GOOD"}, point={})
    bad = _request_with(resource={"device.serial_number": "BAD", "big": "x" * 5000}, point={})
    request.resource_metrics.extend(bad.resource_metrics)
    response = await _post(running, request.SerializeToString())
    assert response.status_code == 200
    answer = ExportMetricsServiceResponse.FromString(response.content)
    assert answer.partial_success.rejected_data_points == 1
    assert "limit 4096" in answer.partial_success.error_message
    assert [s.endpoint_id for s in snapshots(running)] == ["acme/GOOD"]
    code, _, response_bytes = await _grpc_raw(running, request.SerializeToString())
    assert code == grpc.StatusCode.OK
    assert (
        ExportMetricsServiceResponse.FromString(response_bytes).partial_success.rejected_data_points
        == 1
    )


async def test_resource_without_identity_is_rejected_with_a_clear_message(
    running: RunningReceiver,
) -> None:
    response = await _post(
        running, _request_with(resource={"service.name": "x"}, point={}).SerializeToString()
    )
    assert response.status_code == 400
    assert "no identity attribute" in status_pb2.Status.FromString(response.content).message


async def test_empty_request_is_ok(running: RunningReceiver) -> None:
    response = await _post(running, b"")
    assert response.status_code == 200
    assert response.content == b""


async def test_unavailable_bus_is_retryable(tmp_path: Path) -> None:
    # a real Kafka producer pointed at a port nobody listens on
    bus = KafkaBus(KafkaOptions("127.0.0.1:1", publish_timeout=0.5))
    running = await start_receiver(tmp_path, bus)
    try:
        body = _request_with(resource={"device.serial_number": "C1"}, point={}).SerializeToString()
        response = await _post(running, body)
        assert response.status_code == 503
        assert response.headers["Retry-After"] == "5"
        code, _, trailing = await _grpc_raw_with_trailers(running, body)
        assert code == grpc.StatusCode.UNAVAILABLE
        status = status_pb2.Status.FromString(dict(trailing)["grpc-status-details-bin"])
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry)
        assert retry.retry_delay.seconds == 5
    finally:
        await running.receiver.stop(grace=0)
        await bus.stop()


# --- helpers ----------------------------------------------------------------------------------


def _request_with(resource: dict[str, str], point: dict[str, str]) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    rm = request.resource_metrics.add()
    for key, value in resource.items():
        kv = rm.resource.attributes.add()
        kv.key, kv.value.string_value = key, value
    metric = rm.scope_metrics.add().metrics.add()
    metric.name = "claude_code.session.count"
    dp = metric.sum.data_points.add()
    dp.as_int = 1
    dp.time_unix_nano = 1_764_000_000_000_000_000
    for key, value in point.items():
        kv = dp.attributes.add()
        kv.key, kv.value.string_value = key, value
    return request


_DEFAULT = object()


async def _post(
    running: RunningReceiver,
    body: bytes,
    content_type: str = "application/x-protobuf",
    authorization: str | object | None = _DEFAULT,
    content_encoding: str | None = None,
) -> httpx.Response:
    headers = {"Content-Type": content_type}
    if authorization is _DEFAULT:
        headers["Authorization"] = f"Bearer {running.token}"
    elif isinstance(authorization, str):
        headers["Authorization"] = authorization
    if content_encoding:
        headers["Content-Encoding"] = content_encoding
    async with httpx.AsyncClient() as client:
        return await client.post(
            f"http://127.0.0.1:{running.http_port}/v1/metrics", content=body, headers=headers
        )


async def _grpc_raw_with_trailers(
    running: RunningReceiver, body: bytes, authorization: str | None = None
) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    metadata = (("authorization", authorization or f"Bearer {running.token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        call = channel.unary_unary(METRICS_PATH)(body, metadata=metadata, timeout=5)
        try:
            await call
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or "", tuple(error.trailing_metadata() or ())
        return grpc.StatusCode.OK, "", ()


async def _grpc_raw(
    running: RunningReceiver, body: bytes, authorization: str | None = None
) -> tuple[grpc.StatusCode, str, bytes]:
    metadata = (("authorization", authorization or f"Bearer {running.token}"),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{running.grpc_port}") as channel:
        try:
            response = await channel.unary_unary(METRICS_PATH)(body, metadata=metadata, timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or "", b""
        return grpc.StatusCode.OK, "", response
