"""OTLP/HTTP: POST /v1/{metrics,logs,traces}, protobuf or JSON, optionally gzip-compressed.

Answers in the request's content type; errors carry a google.rpc.Status as the spec asks.
aiohttp undoes Content-Encoding while we read, so the size limit applies to the decoded body
and a small compressed bomb cannot balloon past it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import ContentEncodingError
from google.protobuf.json_format import MessageToJson
from google.rpc import code_pb2, status_pb2

from ingest.codec import SERVICES, Service, decode_json, decode_protobuf, export_response
from ingest.otlp_json import encode_response
from ingest.service import Caller, IngestService, Status

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_HTTP = {Status.UNAUTHENTICATED: 401, Status.INVALID: 400, Status.UNAVAILABLE: 503}
_RPC = {
    401: code_pb2.UNAUTHENTICATED,
    400: code_pb2.INVALID_ARGUMENT,
    413: code_pb2.INVALID_ARGUMENT,
    415: code_pb2.INVALID_ARGUMENT,
    503: code_pb2.UNAVAILABLE,
}


class _TooLarge(Exception):
    pass


def _error(
    status: int, message: str, content_type: str, headers: dict[str, str] | None = None
) -> web.Response:
    rpc_status = status_pb2.Status(code=_RPC.get(status, code_pb2.UNKNOWN), message=message)
    if content_type == PROTOBUF:
        body = rpc_status.SerializeToString()
    else:
        body = MessageToJson(rpc_status, indent=None).encode()
        content_type = JSON
    return web.Response(status=status, body=body, content_type=content_type, headers=headers)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise _TooLarge
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _handler(service: Service, ingest: IngestService, max_body_bytes: int) -> Handler:
    def decode_pb(body: bytes) -> Any:
        return decode_protobuf(body, service.request_type)

    def decode_js(body: bytes) -> Any:
        return decode_json(body, service.request_type)

    async def export(request: web.Request) -> web.StreamResponse:
        content_type = request.content_type
        if content_type not in (PROTOBUF, JSON):
            return _error(
                415, f"unsupported content type {content_type!r}; use {PROTOBUF} or {JSON}", JSON
            )
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        if encoding not in ("identity", "gzip", "deflate"):
            return _error(415, f"unsupported content encoding {encoding!r}; use gzip", content_type)
        try:
            body = await _read_limited(request, max_body_bytes)
        except _TooLarge:
            return _error(413, f"request body over {max_body_bytes} bytes", content_type)
        except (ContentEncodingError, ValueError) as error:  # corrupt gzip stream
            return _error(400, f"cannot decode {encoding} body: {error}", content_type)
        caller = Caller("http", request.remote or "", request.headers.get("Authorization"))
        decode = decode_pb if content_type == PROTOBUF else decode_js
        outcome = await ingest.export(service.signal, body, decode, caller)
        if outcome.status is Status.OK:
            response = export_response(service, outcome.rejected, outcome.message)
            payload = (
                response.SerializeToString()
                if content_type == PROTOBUF
                else encode_response(response)
            )
            return web.Response(body=payload, content_type=content_type)
        headers: dict[str, str] = {}
        if outcome.retry_after is not None:
            headers["Retry-After"] = str(outcome.retry_after)
        if outcome.status is Status.UNAUTHENTICATED:
            headers["WWW-Authenticate"] = 'Bearer realm="driftline"'
        return _error(_HTTP[outcome.status], outcome.message, content_type, headers)

    return export


def build_app(ingest: IngestService, max_body_bytes: int) -> web.Application:
    # aiohttp's own cap is set above ours so that oversize bodies get our clear 413.
    app = web.Application(client_max_size=max_body_bytes + 1)
    for service in SERVICES:
        app.router.add_post(service.http_path, _handler(service, ingest, max_body_bytes))
    return app
