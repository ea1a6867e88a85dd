"""OTLP/HTTP: POST /v1/{metrics,logs,traces}, protobuf or JSON, optionally gzip-compressed.

Answers in the request's content type; errors carry a google.rpc.Status as the spec asks.
The transport (``http1``) undoes Content-Encoding under the size limit, so the limit applies
to the decoded body and a small compressed bomb cannot balloon past it.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToJson
from google.rpc import code_pb2, status_pb2

from ingest.codec import SERVICES, Service, decode_json, decode_protobuf, export_response
from ingest.http1 import Handler, Request, Response
from ingest.otlp_json import encode_response
from ingest.service import Caller, IngestService, Status

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_HTTP = {Status.UNAUTHENTICATED: 401, Status.INVALID: 400, Status.UNAVAILABLE: 503}
_RPC = {
    401: code_pb2.UNAUTHENTICATED,
    400: code_pb2.INVALID_ARGUMENT,
    404: code_pb2.NOT_FOUND,
    405: code_pb2.UNIMPLEMENTED,
    413: code_pb2.INVALID_ARGUMENT,
    415: code_pb2.INVALID_ARGUMENT,
    503: code_pb2.UNAVAILABLE,
}


def _error(
    status: int, message: str, content_type: str, headers: dict[str, str] | None = None
) -> Response:
    rpc_status = status_pb2.Status(code=_RPC.get(status, code_pb2.UNKNOWN), message=message)
    if content_type == PROTOBUF:
        body = rpc_status.SerializeToString()
    else:
        body = MessageToJson(rpc_status, indent=None).encode()
        content_type = JSON
    return Response(status, body, content_type, headers or {})


def build_handler(ingest: IngestService) -> Handler:
    """The OTLP/HTTP endpoints as one ``http1`` handler."""
    routes = {service.http_path: service for service in SERVICES}

    async def handle(request: Request) -> Response:
        service = routes.get(request.path)
        if service is None:
            return _error(404, f"no OTLP endpoint at {request.path}", JSON)
        if request.method != "POST":
            return _error(405, "use POST", JSON, {"Allow": "POST"})
        content_type = request.content_type
        if content_type not in (PROTOBUF, JSON):
            return _error(
                415, f"unsupported content type {content_type!r}; use {PROTOBUF} or {JSON}", JSON
            )
        if request.problem is not None:
            return _error(*request.problem, content_type)
        return await _export(service, ingest, request, content_type)

    return handle


async def _export(
    service: Service, ingest: IngestService, request: Request, content_type: str
) -> Response:
    protobuf = content_type == PROTOBUF

    def decode(body: bytes) -> Any:
        if protobuf:
            return decode_protobuf(body, service.request_type)
        return decode_json(body, service.request_type)

    caller = Caller("http", request.peer, request.headers.get("authorization"))
    outcome = await ingest.export(service.signal, request.body, decode, caller)
    if outcome.status is Status.OK:
        response = export_response(service, outcome.rejected, outcome.message)
        payload = response.SerializeToString() if protobuf else encode_response(response)
        return Response(200, payload, content_type)
    headers: dict[str, str] = {}
    if outcome.retry_after is not None:
        headers["Retry-After"] = str(outcome.retry_after)
    if outcome.status is Status.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="driftline"'
    return _error(_HTTP[outcome.status], outcome.message, content_type, headers)
