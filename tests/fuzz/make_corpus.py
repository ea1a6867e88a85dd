"""Writes the checked-in corpus of hostile inputs (`python -m tests.fuzz.make_corpus`).

Two kinds of entry in ``corpus/``:
- ``body-*.bin``: an OTLP request body, sent to the decoders and, with a valid token and
  without one, to both endpoints;
- ``http-*.raw``: bytes sent as they are to the OTLP/HTTP port, ``{TOKEN}`` replaced by a
  valid token, ``{SIZE}`` left alone (it is part of the attack);
a trailing ``.gz`` means the file is stored compressed (the entry is what it decompresses to).
Every case of issue 12 is here, plus the classic parser and decompressor attacks.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

CORPUS = Path(__file__).parent / "corpus"
MiB = 1024 * 1024


def gzip_(data: bytes, level: int = 9, mtime: int = 0) -> bytes:
    """gzip with a fixed header time, so the corpus is the same every time it is made."""
    return gzip.compress(data, level, mtime=mtime)


def resource(attributes: dict[str, str]) -> bytes:
    request = ExportMetricsServiceRequest()
    entry = request.resource_metrics.add()
    for key, value in attributes.items():
        kv = entry.resource.attributes.add()
        kv.key, kv.value.string_value = key, value
    metric = entry.scope_metrics.add().metrics.add()
    metric.name = "m"
    metric.sum.data_points.add().as_int = 1
    return bytes(request.SerializeToString())


def bomb(size: int, first: dict[str, str] | None = None) -> bytes:
    head = resource(first) if first else b""
    filler = resource({"k": "v"})
    return head + filler * ((size - len(head)) // len(filler))


def nested_kvlist(depth: int) -> bytes:
    """A resource attribute whose value nests kvlists ``depth`` deep (protobuf recursion)."""
    value = b"\x0a\x01x"  # AnyValue{string_value: "x"}
    for _ in range(depth):
        kv = b"\x0a\x01k" + b"\x12" + _varint(len(value)) + value  # KeyValue{key, value}
        kvlist = b"\x0a" + _varint(len(kv)) + kv  # KeyValueList{values}
        value = b"\x32" + _varint(len(kvlist)) + kvlist  # AnyValue{kvlist_value}
    kv = b"\x0a\x14device.serial_number" + b"\x12" + _varint(len(value)) + value
    res = b"\x0a" + _varint(len(kv)) + kv  # Resource{attributes}
    rm = b"\x0a" + _varint(len(res)) + res  # ResourceMetrics{resource}
    return b"\x0a" + _varint(len(rm)) + rm


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def http(
    body: bytes, *headers: str, declared: int | None = None, path: str = "/v1/metrics"
) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: corpus", *headers]
    if declared is not None or not any(h.lower().startswith("transfer-encoding") for h in headers):
        lines.append(f"Content-Length: {len(body) if declared is None else declared}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


PROTO = "Content-Type: application/x-protobuf"
JSON = "Content-Type: application/json"
AUTH = "Authorization: Bearer {TOKEN}"


def entries() -> dict[str, bytes]:
    good = resource({"device.serial_number": "C02CORPUS", "service.name": "claude-code"})
    identityless = bomb(int(3.9 * MiB))
    out: dict[str, bytes] = {
        # 1. attribution bombs (unauthenticated, identity-less; and with identity first)
        "body-attribution-bomb-3.7MiB.bin": bomb(int(3.7 * MiB)),
        "body-attribution-bomb-identity-first.bin": bomb(
            int(3.7 * MiB), {"device.serial_number": "C02BOMB"}
        ),
        # 4. an authenticated request of identity-less resources (error answer capped)
        "body-identityless-3.9MB.bin": identityless,
        "body-nested-kvlist-2000.bin": nested_kvlist(2000),
        "body-varint-overflow.bin": b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
        "body-truncated-resource.bin": good[: len(good) // 2],
        "body-length-past-end.bin": b"\x0a\xff\xff\xff\x7f" + good,
        "body-wrong-wire-type.bin": b"\x0b" + good,
        "body-invalid-utf8-key.bin": good.replace(
            b"device.serial_number", b"device.serial\xff\xfeber"
        ),
        "body-empty.bin": b"",
        # 4. multi-member gzip (valid: `cat a.gz b.gz`) and gzip's other faults
        "http-multi-member-gzip.raw": http(
            gzip_(good) + gzip_(resource({"host.id": "H2"})),
            PROTO,
            AUTH,
            "Content-Encoding: gzip",
        ),
        "http-gzip-bomb-64MiB.raw": http(
            gzip_(b"\0" * (64 * MiB), 9), PROTO, AUTH, "Content-Encoding: gzip"
        ),
        "http-gzip-many-members.raw": http(
            gzip_(b"") * 2000, PROTO, AUTH, "Content-Encoding: gzip"
        ),
        "http-gzip-truncated.raw": http(gzip_(good)[:-6], PROTO, AUTH, "Content-Encoding: gzip"),
        "http-gzip-trailing-garbage.raw": http(
            gzip_(good) + b"garbage", PROTO, AUTH, "Content-Encoding: gzip"
        ),
        "http-deflate-raw.raw": http(
            zlib.compress(good)[2:-4], PROTO, AUTH, "Content-Encoding: deflate"
        ),
        "http-unknown-encoding.raw": http(good, PROTO, AUTH, "Content-Encoding: br"),
        # 4. duplicate Authorization headers (valid + garbage, either order, twice the same)
        "http-duplicate-authorization.raw": http(good, PROTO, AUTH, "Authorization: Bearer x"),
        "http-duplicate-authorization-reversed.raw": http(
            good, PROTO, "Authorization: Bearer x", AUTH
        ),
        "http-duplicate-authorization-same.raw": http(good, PROTO, AUTH, AUTH),
        # 2. a declared 19 MiB body, half sent (the connection then closes)
        "http-half-sent-19MiB-unauthenticated.raw": http(
            b"\0" * (MiB // 2), PROTO, declared=19 * MiB
        ),
        "http-half-sent-19MiB-authenticated.raw": http(
            b"\0" * (MiB // 2), PROTO, AUTH, declared=19 * MiB
        ),
        "http-declared-over-limit.raw": http(b"", PROTO, AUTH, declared=21 * MiB),
        # HTTP parsing
        "http-header-flood.raw": (
            b"POST /v1/metrics HTTP/1.1\r\n"
            + b"".join(b"X-Pad-%d: %s\r\n" % (n, b"a" * 1000) for n in range(100))
            + b"\r\n"
        ),
        "http-bad-content-length.raw": b"POST /v1/metrics HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "http-two-content-lengths.raw": (
            b"POST /v1/metrics HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
        ),
        "http-chunked-huge-chunk.raw": http(
            b"FFFFFFFFFFFF\r\nabc", PROTO, AUTH, "Transfer-Encoding: chunked"
        ),
        "http-chunked-and-length.raw": http(
            b"5\r\nhello\r\n0\r\n\r\n", PROTO, AUTH, "Transfer-Encoding: chunked", declared=5
        ),
        "http-upgrade.raw": (
            b"GET /v1/metrics HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
        ),
        "http-expect-continue-no-body.raw": http(b"", PROTO, AUTH, "Expect: 100-continue"),
        "http-null-in-path.raw": b"POST /v1/met\x00rics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        "http-pipelined-mixed.raw": (
            http(good, PROTO, AUTH) + http(good, PROTO) + http(b"{", JSON, AUTH)
        ),
        # OTLP/JSON
        "http-json-deep-nesting.raw": http(b"[" * 100_000, JSON, AUTH),
        "http-json-huge-number.raw": http(
            b'{"resourceMetrics":[{"scopeMetrics":[{"metrics":[{"sum":{"dataPoints":'
            b'[{"asInt":"' + b"9" * 5000 + b'"}]}}]}]}]}',
            JSON,
            AUTH,
        ),
        "http-json-invalid-utf8.raw": http(b'{"resourceMetrics":"\xff\xfe"}', JSON, AUTH),
        "http-json-unauthenticated-bomb.raw": http(
            b'{"resourceMetrics":[' + b'{"resource":{}},' * 200_000 + b"{}]}", JSON
        ),
    }
    return out


def main() -> None:
    CORPUS.mkdir(exist_ok=True)
    for old in CORPUS.iterdir():
        old.unlink()
    for name, data in entries().items():
        if len(data) > 256 * 1024:
            (CORPUS / f"{name}.gz").write_bytes(gzip_(data))
        else:
            (CORPUS / name).write_bytes(data)


if __name__ == "__main__":
    main()
