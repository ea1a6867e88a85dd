"""OTLP/gRPC: the three Export services on one grpc.aio server.

Handlers take the raw request bytes (no deserializer) so the service decides how to decode.
They are stream-unary so that nothing of the message is read before the call is admitted
(load, memory budget) and its metadata authenticated; the HTTP/2 flow-control window is all
gRPC buffers for a call until then. Duplicate ``authorization`` entries are refused, as on HTTP.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any, Final, NoReturn

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from ingest.attribution import PREFIX_BYTES
from ingest.codec import SERVICES, Service, export_response
from ingest.service import Caller, IngestService, Outcome, Status
from ingest.tokens import Denied

# The status message travels in a trailer, and clients refuse header blocks over 8 KiB
# (gRPC's default max metadata size) with RESOURCE_EXHAUSTED: stay well under it.
MAX_STATUS_MESSAGE_BYTES = 4 * 1024

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


@functools.lru_cache(maxsize=64)
def _retry_details(code: grpc.StatusCode, message: str, seconds: int) -> bytes:
    """google.rpc.Status with RetryInfo, which OTLP exporters read to pace their retries.
    Cached: past capacity every shed call carries the same few bytes."""
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=seconds)))
    status = status_pb2.Status(code=code_pb2.UNAVAILABLE, message=message, details=[detail])
    return status.SerializeToString()  # type: ignore[no-any-return]


def _handler(service: Service, ingest: IngestService) -> Any:
    async def export(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        # stream_unary on purpose: the request message is read from gRPC only by the first
        # `read()` below, so shedding and authentication happen before it is
        arrived = time.monotonic()
        metadata = context.invocation_metadata() or ()
        authorizations = tuple([str(v) for k, v in metadata if k == "authorization"])
        caller = Caller("grpc", peer_address(context.peer()), authorizations)
        refused = ingest.admit()
        if refused is not None:
            await _abort(context, ingest.count(service.signal, caller, refused))
        grant = ingest.authenticate(caller)
        budget = ingest.budget
        if isinstance(grant, Denied):
            # gRPC hands a message over whole (up to its own limit) or not at all: read only
            # when the attribution budgets allow and the memory budget has room, and only
            # the first PREFIX_BYTES are looked into
            prefix = b""
            budgeted = not budget.full and ingest.may_read_to_attribute(caller)
            if budgeted:
                prefix = await _read_one(context, REFUSED_READ_TIMEOUT)
                ingest.read_to_attribute(caller, len(prefix))
            outcome = ingest.refuse(
                service.signal, grant, caller, prefix[:PREFIX_BYTES],
                complete=len(prefix) <= PREFIX_BYTES, budgeted=budgeted,
            )  # fmt: skip
            await _abort(context, ingest.count(service.signal, caller, outcome))
        if budget.full:
            await _abort(context, ingest.count(service.signal, caller, ingest.over_budget()))
        body = await _read_one(context, READ_TIMEOUT)
        size = len(body)
        budget.reserve(size)
        try:
            outcome = await ingest.export(service.signal, body, caller, grant=grant)
        finally:
            budget.release(size)
        ingest.served(time.monotonic() - arrived)
        if outcome.status is Status.OK:
            return export_response(service, outcome.rejected, outcome.message)
        await _abort(context, outcome)

    return grpc.stream_unary_rpc_method_handler(
        export, response_serializer=lambda message: message.SerializeToString()
    )


MAX_UNREQUESTED_SECONDS: Final = 1
READ_TIMEOUT: Final = 60.0  # seconds for a call's message to arrive (HTTP's request timeout)
REFUSED_READ_TIMEOUT: Final = 2.0  # … of a refused call, read only to attribute it


async def _read_one(context: grpc.aio.ServicerContext[Any, Any], seconds: float) -> bytes:
    """The request's one message (raw bytes: no deserializer); b"" if the client sent none,
    or none in ``seconds`` (a call that never sends its message holds nothing)."""
    try:
        async with asyncio.timeout(seconds):
            message = await context.read()
    except TimeoutError:
        return b""
    return b"" if message is grpc.aio.EOF else bytes(message)


async def _abort(context: grpc.aio.ServicerContext[Any, Any], outcome: Outcome) -> NoReturn:
    code = _CODES[outcome.status]
    message = outcome.message_within(MAX_STATUS_MESSAGE_BYTES)
    trailing: tuple[tuple[str, bytes], ...] = ()
    if outcome.retry_after is not None:
        details = _retry_details(code, message, outcome.retry_after)
        trailing = (("grpc-status-details-bin", details),)
    await context.abort(code, message, trailing_metadata=trailing)
    raise AssertionError("abort returns only by raising")


def build_server(
    ingest: IngestService, max_message_bytes: int, reuse_port: bool
) -> grpc.aio.Server:
    server = grpc.aio.server(
        options=[
            # gRPC turns SO_REUSEPORT on by default, which lets a second receiver silently share
            # a port; only the multi-process supervisor should ask for it.
            ("grpc.so_reuseport", int(reuse_port)),
            ("grpc.max_receive_message_length", max_message_bytes),
            # grpc.aio takes calls from its core one by one; past capacity they wait there,
            # before any of our code runs, for up to 30 s by default. Cancel them after a
            # second instead (CANCELLED: retryable for OTLP exporters), cheaply, in C.
            ("grpc.server_max_unrequested_time_in_server", MAX_UNREQUESTED_SECONDS),
        ]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(s.grpc_name, {"Export": _handler(s, ingest)})
            for s in SERVICES
        ]
    )
    return server
