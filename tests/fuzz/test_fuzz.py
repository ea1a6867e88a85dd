"""Fuzzing the decoders and both endpoints, and replaying the corpus of hostile inputs.

The properties: a decoder either decodes or raises its one error type; attribution of any
prefix stays within its budget; an endpoint answers every input with one of the statuses
the protocol defines (never 500 / UNKNOWN / INTERNAL), and keeps serving valid exports.
"""

from __future__ import annotations

import contextlib
import gzip
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from ingest.attribution import PREFIX_BYTES, attribute
from ingest.codec import MalformedRequest, decode_json, decode_protobuf
from ingest.http1 import _decoded, _decoded_prefix
from ingest.snapshots import Limits, extract
from schemas import DEFAULT_IDENTITY_ATTRIBUTES
from tests.fuzz.conftest import Served
from tests.fuzz.make_corpus import CORPUS, resource

HTTP_STATUSES = {100, 200, 400, 401, 404, 405, 408, 413, 415, 431, 503}
GRPC_CODES = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,  # gRPC's own message size limit
    grpc.StatusCode.UNAVAILABLE,
}
METRICS = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
VALID = resource({"device.serial_number": "C02FUZZ", "service.name": "claude-code"})
REQUEST_TYPES = (ExportMetricsServiceRequest, ExportLogsServiceRequest)


# --- helpers -----------------------------------------------------------------------------------


def statuses(port: int, data: bytes, wait: float = 3.0) -> list[int]:
    """Send ``data`` as is; the status of every answer until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(data)
        received = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 20):
                received += chunk
    found = []
    for line in received.split(b"\r\n"):
        if line.startswith(b"HTTP/1.1 "):
            found.append(int(line[9:12]))
    return found


def post(served: Served, body: bytes, *headers: str) -> list[int]:
    head = [
        "POST /v1/metrics HTTP/1.1",
        "Host: fuzz",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *headers,
    ]
    return statuses(served.http_port, ("\r\n".join(head) + "\r\n\r\n").encode() + body)


def grpc_code(served: Served, body: bytes, authorizations: tuple[str, ...]) -> grpc.StatusCode:
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        metadata = tuple(("authorization", value) for value in authorizations)
        try:
            channel.unary_unary(METRICS)(body, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def still_serving(served: Served) -> None:
    token = f"Authorization: Bearer {served.token}"
    assert post(served, VALID, "Content-Type: application/x-protobuf", token) == [200]
    assert grpc_code(served, VALID, (f"Bearer {served.token}",)) == grpc.StatusCode.OK


def check_decoders(data: bytes) -> None:
    for request_type in REQUEST_TYPES:
        for decode in (decode_protobuf, decode_json):
            try:
                request: Any = decode(data, request_type)
            except MalformedRequest:
                continue
            extract(request, "fuzz", datetime.now(UTC))
        for is_json in (False, True):
            started = time.perf_counter()
            attribute(
                data[:PREFIX_BYTES], request_type, is_json, len(data) <= PREFIX_BYTES,
                DEFAULT_IDENTITY_ATTRIBUTES, Limits(),
            )  # fmt: skip
            # the budget is 2 ms, checked between resources; allow for a slow, shared machine
            assert time.perf_counter() - started < 0.25


def mutations(seed: bytes) -> st.SearchStrategy[bytes]:
    """``seed`` with bytes flipped, cut, repeated or spliced: near-valid input goes deepest."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(1, 6))):
            kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat"]))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if kind == "flip" and data:
                data[at] = draw(st.integers(0, 255))
            elif kind == "cut":
                del data[at : at + draw(st.integers(1, 64))]
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=32))
            else:
                data += data[at : at + draw(st.integers(1, 256))] * draw(st.integers(1, 50))
        return bytes(data)

    return mutate()


# --- decoders -----------------------------------------------------------------------------------


@given(st.binary(max_size=4096) | mutations(VALID))
def test_decoders_decode_or_refuse(data: bytes) -> None:
    check_decoders(data)


@given(st.binary(max_size=2048) | mutations(gzip.compress(VALID) + gzip.compress(VALID)))
def test_decompression_is_bounded_and_total(data: bytes) -> None:
    for encoding in ("gzip", "deflate"):
        body, problem = _decoded(data, encoding, 10_000)
        assert (problem is None) or (body == b"" and problem[0] in (400, 413))
        assert len(body) <= 10_000
    prefix, _ = _decoded_prefix(data, 1000, True)
    assert len(prefix) <= 1000


# --- endpoints ----------------------------------------------------------------------------------

_AUTHS = st.lists(
    st.sampled_from(["valid", "Bearer dlt_00000000_" + "A" * 43, "Basic x", "", "Bearer"]),
    max_size=3,
)


@given(
    method=st.sampled_from(["POST", "GET", "PUT", "HEAD"]),
    path=st.sampled_from(["/v1/metrics", "/v1/logs", "/v1/traces", "/v1/x", "/"]),
    content_type=st.sampled_from(["application/x-protobuf", "application/json", "text/plain"]),
    encoding=st.sampled_from([None, "gzip", "deflate", "br"]),
    authorizations=_AUTHS,
    body=st.binary(max_size=2048) | mutations(VALID),
    compress=st.booleans(),
)
def test_the_http_endpoint_answers_everything_with_a_protocol_status(
    served: Served,
    method: str,
    path: str,
    content_type: str,
    encoding: str | None,
    authorizations: list[str],
    body: bytes,
    compress: bool,
) -> None:
    if compress and encoding == "gzip":
        body = gzip.compress(body)
    headers = [f"{method} {path} HTTP/1.1", "Host: fuzz", f"Content-Type: {content_type}"]
    headers += [f"Content-Length: {len(body)}", "Connection: close"]
    if encoding:
        headers.append(f"Content-Encoding: {encoding}")
    for value in authorizations:
        headers.append(f"Authorization: {f'Bearer {served.token}' if value == 'valid' else value}")
    answers = statuses(served.http_port, ("\r\n".join(headers) + "\r\n\r\n").encode() + body)
    answers = [status for status in answers if status != 100]
    assert len(answers) == 1 and answers[0] in HTTP_STATUSES, answers
    if len(authorizations) > 1 and answers[0] not in (404, 405, 415):
        assert answers[0] == 401  # more than one Authorization: refused whatever they say


@given(authorizations=_AUTHS, body=st.binary(max_size=2048) | mutations(VALID))
def test_the_grpc_endpoint_answers_everything_with_a_protocol_status(
    served: Served, authorizations: list[str], body: bytes
) -> None:
    values = tuple(f"Bearer {served.token}" if v == "valid" else v for v in authorizations)
    code = grpc_code(served, body, values)
    assert code in GRPC_CODES, code
    if len(values) != 1 or values[0] != f"Bearer {served.token}":
        assert code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNAVAILABLE)


# --- the corpus ---------------------------------------------------------------------------------


def corpus() -> list[Path]:
    return sorted(CORPUS.iterdir())


def load(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.suffix == ".gz" else data


def test_the_corpus_holds_every_case_of_the_issue() -> None:
    names = " ".join(path.name for path in corpus())
    for case in (
        "attribution-bomb", "identity-first", "identityless-3.9MB", "multi-member-gzip",
        "duplicate-authorization", "half-sent-19MiB", "gzip-bomb",
    ):  # fmt: skip
        assert case in names


@pytest.mark.parametrize("path", corpus(), ids=lambda path: path.name)
def test_corpus_entry(served: Served, path: Path) -> None:
    data = load(path)
    if path.name.startswith("body-"):
        check_decoders(data)
        token = f"Bearer {served.token}"
        for authorizations in ((), (token,), ("Bearer junk",), (token, token)):
            headers = ["Content-Type: application/x-protobuf"]
            headers += [f"Authorization: {value}" for value in authorizations]
            assert set(post(served, data, *headers)) <= HTTP_STATUSES
            assert grpc_code(served, data, authorizations) in GRPC_CODES
    else:
        raw = data.replace(b"{TOKEN}", served.token.encode())
        answers = statuses(served.http_port, raw, wait=1.0)  # keep-alive: 1 s quiet ends it
        assert set(answers) <= HTTP_STATUSES, answers
        if b"duplicate-authorization" in path.name.encode():
            assert answers == [401]
        if "multi-member-gzip" in path.name:
            assert answers == [200]
        if "many-members" in path.name:
            assert answers == [400]
    still_serving(served)
