"""Recording OTLP traffic and reading it back: `driftline record` and `driftline replay`.

A recording is JSON lines: a header, then one request per line with its time from the first,
protocol, path (or gRPC method), headers and base64 body (decoded: a gzip body is stored and
replayed plain). Secrets never reach the file: ``Authorization`` and every header whose name
says it holds a credential are replaced by ``<removed>``, so a recording can be shared, and
replayed against another token.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

FORMAT: Final = "driftline-otlp-recording"
REMOVED: Final = "<removed>"
_SECRET_WORDS: Final = ("auth", "token", "secret", "key", "cookie", "password", "credential")
# what a replay needs besides the body; the rest (user agents, lengths) is left out
KEPT: Final = frozenset({"content-type"})

SIGNAL_OF_PATH: Final = {"/v1/metrics": "metrics", "/v1/logs": "logs", "/v1/traces": "traces"}
SIGNAL_OF_METHOD: Final = {
    "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export": "metrics",
    "/opentelemetry.proto.collector.logs.v1.LogsService/Export": "logs",
    "/opentelemetry.proto.collector.trace.v1.TraceService/Export": "traces",
}


def scrub(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers a recording keeps; any credential is replaced by ``<removed>``."""
    kept: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if any(word in lower for word in _SECRET_WORDS):
            kept[lower] = REMOVED
        elif lower in KEPT:
            kept[lower] = value
    return kept


@dataclass(frozen=True, slots=True)
class Request:
    at: float  # seconds from the recording's first request
    protocol: str  # "http" | "grpc"
    path: str  # HTTP path or gRPC method
    headers: dict[str, str]
    body: bytes

    @property
    def signal(self) -> str:
        table = SIGNAL_OF_PATH if self.protocol == "http" else SIGNAL_OF_METHOD
        return table[self.path]


class Recorder:
    """Appends requests to a recording, flushing each line (a crash loses at most one)."""

    def __init__(self, out: IO[str], clock: Any = time.monotonic) -> None:
        self._out = out
        self._clock = clock
        self._first: float | None = None
        self.count = 0
        out.write(json.dumps({"format": FORMAT, "version": 1}) + "\n")
        out.flush()

    def add(self, protocol: str, path: str, headers: Mapping[str, str], body: bytes) -> None:
        known = SIGNAL_OF_PATH if protocol == "http" else SIGNAL_OF_METHOD
        if path not in known:
            raise ValueError(f"not an OTLP export: {path}")
        now = self._clock()
        if self._first is None:
            self._first = now
        line = {
            "at": round(now - self._first, 6),
            "protocol": protocol,
            "path": path,
            "headers": scrub(headers),
            "body": base64.b64encode(body).decode(),
        }
        self._out.write(json.dumps(line) + "\n")
        self._out.flush()
        self.count += 1


def read(path: Path) -> Iterator[Request]:
    """The requests of a recording, in order; a file that is not one is an error."""
    with path.open(encoding="utf-8") as lines:
        header = json.loads(next(lines, "{}") or "{}")
        if header.get("format") != FORMAT:
            raise ValueError(f"{path} is not a driftline recording")
        for number, line in enumerate(lines, start=2):
            try:
                item = json.loads(line)
                yield Request(
                    float(item["at"]),
                    str(item["protocol"]),
                    str(item["path"]),
                    dict(item["headers"]),
                    base64.b64decode(item["body"], validate=True),
                )
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{path}:{number}: not a recorded request ({error})") from None


async def serve(recorder: Recorder, host: str, http_port: int, grpc_port: int) -> Any:
    """OTLP/HTTP and OTLP/gRPC endpoints that record every export and answer success."""
    import grpc
    from aiohttp import web

    async def export(request: web.Request) -> web.Response:
        body = await request.read()  # aiohttp has undone any Content-Encoding
        recorder.add("http", request.path, dict(request.headers), body)
        json_body = request.content_type == "application/json"
        return web.Response(
            body=b"{}" if json_body else b"",
            content_type="application/json" if json_body else "application/x-protobuf",
        )

    app = web.Application(client_max_size=20 * 1024 * 1024)
    app.add_routes([web.post(path, export) for path in SIGNAL_OF_PATH])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, host, http_port).start()

    def handler(method: str) -> Any:
        async def unary(body: bytes, context: Any) -> bytes:
            headers = {key: str(value) for key, value in context.invocation_metadata()}
            recorder.add("grpc", method, headers, body)
            return b""  # an empty Export*ServiceResponse

        return grpc.unary_unary_rpc_method_handler(
            unary, request_deserializer=None, response_serializer=None
        )

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(
                method.strip("/").rsplit("/", 1)[0], {"Export": handler(method)}
            )
            for method in SIGNAL_OF_METHOD
        )
    )
    server.add_insecure_port(f"{host}:{grpc_port}")
    await server.start()
    return runner, server
