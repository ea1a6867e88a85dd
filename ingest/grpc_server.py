"""OTLP/gRPC: the three Export services on one grpc.aio server.

Handlers take the raw request bytes (no deserializer) so the service decides how to decode, and
can decode a rejected request's payload only when its budget allows.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ingest.codec import SERVICES, Service, decode_protobuf, export_response
from ingest.service import Caller, IngestService, Status

_CODES = {
    Status.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Status.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    Status.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}


def peer_address(peer: str) -> str:
    """'ipv4:10.0.0.1:5000' → '10.0.0.1'; 'ipv6:[::1]:5000' → '::1'; anything else as is."""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return peer


def _retry_details(code: grpc.StatusCode, message: str, seconds: int) -> bytes:
    """google.rpc.Status with RetryInfo, which OTLP exporters read to pace their retries."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
    return status.SerializeToString()  # type: ignore[no-any-return]


def _handler(service: Service, ingest: IngestService) -> Any:
    def decode(body: bytes) -> Any:
        return decode_protobuf(body, service.request_type)

    async def export(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        metadata = context.invocation_metadata() or ()
        authorization = next((str(v) for k, v in metadata if k == "authorization"), None)
        caller = Caller("grpc", peer_address(context.peer()), authorization)
        outcome = await ingest.export(service.signal, request, decode, caller)
        if outcome.status is Status.OK:
            return export_response(service, outcome.rejected, outcome.message)
        code = _CODES[outcome.status]
        trailing: tuple[tuple[str, bytes], ...] = ()
        if outcome.retry_after is not None:
            details = _retry_details(code, outcome.message, outcome.retry_after)
            trailing = (("grpc-status-details-bin", details),)
        await context.abort(code, outcome.message, trailing_metadata=trailing)

    return grpc.unary_unary_rpc_method_handler(
        export, response_serializer=lambda message: message.SerializeToString()
    )


def build_server(
    ingest: IngestService, max_message_bytes: int, reuse_port: bool
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            # gRPC turns SO_REUSEPORT on by default, which lets a second receiver silently share
            # a port; only the multi-process supervisor should ask for it.
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(s.grpc_name, {"Export": _handler(s, ingest)})
            for s in SERVICES
        ]
    )
    return server
