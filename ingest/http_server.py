"""OTLP/HTTP: POST /v1/{metrics,logs,traces}, protobuf or JSON, optionally gzip-compressed.

Answers in the request's content type; errors carry a google.rpc.Status as the spec asks.
The transport (``http1``) undoes Content-Encoding under the size limit, so the limit applies
to the decoded body and a small compressed bomb cannot balloon past it. The gate runs at the
end of the headers: shedding and authentication happen before the body is read, and a request
without a valid token keeps only ``PREFIX_BYTES`` of its body, for attribution.
"""

from __future__ import annotations

import functools
import time

from google.protobuf.json_format import MessageToJson
from google.rpc import code_pb2, status_pb2

from ingest.attribution import PREFIX_BYTES
from ingest.codec import SERVICES, Service, export_response
from ingest.http1 import Admission, Gate, Handler, Request, Response
from ingest.otlp_json import encode_response
from ingest.service import Caller, IngestService, Outcome, Status
from ingest.tokens import Denied, Granted

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


def build_gate(ingest: IngestService) -> Gate:
    """Decide from the headers, before the body: shed, authenticate, keep a prefix only."""
    routes = {service.http_path: service for service in SERVICES}

    def gate(request: Request) -> Admission:
        service = routes.get(request.path)
        if service is None or request.method != "POST":
            return Admission(discard=True)  # 404 / 405: the body is never kept
        if request.content_type not in (PROTOBUF, JSON):
            return Admission(discard=True)
        refused = ingest.admit()
        if refused is not None:  # shed: a small body is read past, to keep the connection
            ingest.count(service.signal, _caller(request), refused)
            answer = _shed_answer(service, refused, request.content_type)
            return Admission(discard=True, context=refused, answer=answer)
        grant = ingest.authenticate(_caller(request))
        if isinstance(grant, Denied):
            return Admission(keep=PREFIX_BYTES, context=grant)
        return Admission(context=grant)

    return gate


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
        caller = _caller(request)
        context = request.context
        if isinstance(context, Outcome):  # shed at the headers
            return _answer(service, ingest.count(service.signal, caller, context), content_type)
        if request.problem is not None:
            status, message = request.problem
            if status == 503:
                outcome = ingest.count(service.signal, caller, ingest.over_budget())
                return _answer(service, outcome, content_type)
            return _error(status, message, content_type)
        if isinstance(context, Denied):
            outcome = ingest.refuse(
                service.signal,
                context,
                caller,
                request.body,
                json=content_type == JSON,
                complete=request.complete,
            )
            return _answer(service, ingest.count(service.signal, caller, outcome), content_type)
        grant = context if isinstance(context, Granted) else None
        outcome = await ingest.export(
            service.signal, request.body, caller, json=content_type == JSON, grant=grant
        )
        ingest.served(time.monotonic() - request.arrived)
        return _answer(service, outcome, content_type)

    return handle


@functools.lru_cache(maxsize=64)
def _shed_answer(service: Service, outcome: Outcome, content_type: str) -> Response:
    """The same few bytes for every shed request: built once, not per request."""
    return _answer(service, outcome, content_type)


def _caller(request: Request) -> Caller:
    return Caller("http", request.peer, request.authorizations)


def _answer(service: Service, outcome: Outcome, content_type: str) -> Response:
    if outcome.status is Status.OK:
        response = export_response(service, outcome.rejected, outcome.message)
        payload = (
            response.SerializeToString() if content_type == PROTOBUF else encode_response(response)
        )
        return Response(200, payload, content_type)
    headers: dict[str, str] = {}
    if outcome.retry_after is not None:
        headers["Retry-After"] = str(outcome.retry_after)
    if outcome.status is Status.UNAUTHENTICATED:
        headers["WWW-Authenticate"] = 'Bearer realm="driftline"'
    return _error(_HTTP[outcome.status], outcome.message, content_type, headers)
