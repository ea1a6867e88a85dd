"""A small HTTP/1.1 server for the OTLP/HTTP hot path: llhttp (httptools) parses, we answer.

Why not aiohttp: on the bench machine, serving a trivial handler at 2,000 requests/s cost
0.13 ms of CPU per request with aiohttp and 0.04 ms with this (the receiver as a whole went
from 0.26 to 0.19 ms per export), and at that rate the difference is a tenth of two cores
shared with Kafka and the processors. The admin port (health, metrics) stays on aiohttp.

What it does, and no more: keep-alive and pipelined requests (answered in order, at most
``_MAX_QUEUED`` queued before reading pauses, and no answering while the client reads none);
request line and headers capped at 64 KiB; Content-Length and chunked bodies capped at
``max_body_bytes`` (a declared size over it is refused before reading, and the connection
closed); gzip/deflate bodies decoded under the same cap, so a small bomb cannot balloon;
``Expect: 100-continue``; idle and slow-request timeouts; a graceful ``stop``. Requests the
transport refuses (too large, an unknown encoding) still reach the handler, with ``problem``
set and no body, so errors are formatted in one place. Unparseable HTTP gets a plain 400 and
the connection is closed; every other connection keeps being served.

Admission happens at the end of the headers, before any of the body is read: an optional
``gate`` decides from the headers whether to answer at once (the body is never read and the
connection closes), to read only a prefix of the body (a body longer than that is answered
as soon as the prefix is in, and the connection closed unread: an unauthenticated caller
costs at most that much memory and reading), or to read it all; and an optional
``MemoryBudget`` shared by every connection must have room for the declared body, or the
request gets 503 with nothing more read. A body's reservation lasts until it is answered.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl as ssl_module
import time
import zlib
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Final

import httptools

from bus.aio import wait_at_most
from ingest.admission import MemoryBudget

log = logging.getLogger(__name__)

_MAX_QUEUED: Final = 8  # pipelined requests waiting per connection before reading pauses
_MAX_HEAD_BYTES: Final = 64 * 1024  # request line and headers
_MAX_DISCARD: Final = 64 * 1024  # a refused body up to this is read past (keep-alive)
_MAX_MEMBERS: Final = 1024  # gzip members in one body (`cat a.gz b.gz …`)
_INFLATE_CHUNK: Final = 64 * 1024
_REASONS: Final = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    431: "Request Header Fields Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased; a repeated header keeps its last value
    peer: str
    body: bytes = b""  # decoded (Content-Encoding undone)
    problem: tuple[int, str] | None = None  # refused by the transport; body is then empty
    authorizations: tuple[str, ...] = ()  # every Authorization value, in order
    context: object = None  # what the gate said about it (Admission.context)
    complete: bool = True  # False when only a prefix of the body was kept
    reserved: int = 0  # bytes charged to the memory budget until the answer is written
    arrived: float = 0.0  # time.monotonic() when its first byte was read
    answer: Response | None = None  # decided at the headers (Admission.answer)

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-cased (aiohttp's default when absent)."""
        value = self.headers.get("content-type", "application/octet-stream")
        return value.partition(";")[0].strip().lower()


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "text/plain"
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Admission:
    """A gate's decision on a request whose headers have arrived and body has not."""

    answer_now: bool = False  # read no body: hand the request to the handler at once, close
    keep: int | None = None  # keep at most this many body bytes (decoded); None: the limit
    discard: bool = False  # keep none: read a small body past (the connection stays open)
    context: object = None  # passed on as Request.context
    # the whole answer, decided from the headers (a shed request): sent without the handler,
    # and without a task when nothing is queued before it on the connection
    answer: Response | None = None


Gate = Callable[[Request], Admission]


@dataclass(frozen=True, slots=True)
class ServerOptions:
    max_body_bytes: int = 20 * 1024 * 1024
    idle_timeout: float = 75.0  # a keep-alive connection with no request is closed after this
    request_timeout: float = 60.0  # … and one whose request has not fully arrived by then


class Server:
    """Serves ``handler`` on listening sockets; ``stop`` lets answered requests finish."""

    def __init__(
        self,
        handler: Handler,
        options: ServerOptions | None = None,
        gate: Gate | None = None,
        budget: MemoryBudget | None = None,
    ) -> None:
        self.handler = handler
        self.gate = gate
        self.budget = budget
        self.options = options or ServerOptions()
        self._servers: list[asyncio.AbstractServer] = []
        self._connections: set[_Connection] = set()
        self._all_closed = asyncio.Event()
        self._sweeper: asyncio.Task[None] | None = None
        self._date = b""
        self._date_second = 0
        self.closing = False

    def date(self) -> bytes:
        """The Date header, formatted once a second."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second = now
            self._date = formatdate(now, usegmt=True).encode()
        return self._date

    async def start(self, sock: socket.socket, ssl: ssl_module.SSLContext | None = None) -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Connection(self), sock=sock, ssl=ssl)
        self._servers.append(server)
        if self._sweeper is None:
            self._sweeper = loop.create_task(self._sweep_forever(), name="http1-sweeper")

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting; finish requests already received (up to ``grace``); close."""
        self.closing = True
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.close_when_idle()
        if self._connections:
            await wait_at_most(self._all_closed, grace)
        for connection in list(self._connections):
            connection.abort()
        for server in self._servers:
            await server.wait_closed()
        if self._sweeper is not None:
            self._sweeper.cancel()

    async def _sweep_forever(self) -> None:
        """Close idle and stalled connections: one timer for all of them, not one per request."""
        period = min(self.options.idle_timeout, self.options.request_timeout, 5.0) / 2
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for connection in list(self._connections):
                connection.expire(now)


class _Connection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.peer = ""
        self.queue: deque[tuple[Request, bool]] = deque()  # request, keep-alive
        self.worker: asyncio.Task[None] | None = None
        self.paused = False
        self.writable = asyncio.Event()  # cleared while the client is not reading our answers
        self.writable.set()
        self.closing = False
        self.active_since = time.monotonic()  # start of the current request, or of idleness
        self.receiving = False  # between a request's first byte and its last
        # the request being received
        self.url = b""
        self.headers: dict[str, str] = {}
        self.head_bytes = 0
        self.encoding = "identity"
        self.chunks: list[bytes] = []
        self.size = 0
        self.problem: tuple[int, str] | None = None
        self.authorizations: list[str] = []
        self.context: object = None
        self.keep: int | None = None  # body bytes kept (None: up to the limit)
        self.kept = 0
        self.discard = False
        self.answer: Response | None = None
        self.reserved = 0  # the current request's charge to the memory budget
        self.arrived = 0.0

    # ------------------------------------------------------------------- asyncio.Protocol

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if peer else ""
        self.server._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        # a request being handled is finished, not cancelled: its snapshot may be on its way
        # to Kafka already, and the client, with no answer, sends it again (at least once)
        self.server._connections.discard(self)
        self._release(self.reserved)  # a body cut off half-way
        self.reserved = 0
        self.chunks = []
        for queued, _ in self.queue:  # not started: nobody is left to answer
            self._release(queued.reserved)
        self.queue.clear()
        self.closing = True
        self.writable.set()  # an answer waiting for room finds the transport closed
        if self.server.closing and not self.server._connections:
            self.server._all_closed.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not supported")
        except httptools.HttpParserError as error:
            self._refuse(400, f"malformed HTTP request: {error}")

    # --------------------------------------------------------------- httptools callbacks

    def on_message_begin(self) -> None:
        self.receiving = True
        self.active_since = self.arrived = time.monotonic()
        self.url = b""
        self.headers = {}
        self.head_bytes = 0
        self.encoding = "identity"
        self.chunks = []
        self.size = 0
        self.problem = None
        self.authorizations = []
        self.context = None
        self.keep = None
        self.kept = 0
        self.discard = False
        self.answer = None
        self.reserved = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = text
        if key == "authorization" and len(self.authorizations) < 8:
            self.authorizations.append(text)
        self._count_head(len(name) + len(value))

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > _MAX_HEAD_BYTES and not self.closing:
            self._refuse(431, f"request line and headers over {_MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        if self.closing:
            return
        server = self.server
        limit = server.options.max_body_bytes
        length = self.headers.get("content-length")
        declared = int(length) if length is not None and length.isdigit() else 0
        if declared > limit:
            self.problem = _too_large(limit)
            self._answer_early()
            return
        if server.gate is not None:
            admission = server.gate(self._request(b"", None))
            self.context = admission.context
            self.keep = 0 if admission.discard else admission.keep
            self.discard = admission.discard
            self.answer = admission.answer
            if admission.answer_now or (self.discard and declared > _MAX_DISCARD):
                self._answer_early()
                return
        if self.keep is None and server.budget is not None:
            if not server.budget.try_reserve(declared):
                self.problem = (503, "receiver memory budget for request bodies is full")
                self._answer_early()
                return
            self.reserved = declared
        self.encoding = self.headers.get("content-encoding", "identity").strip().lower()
        if self.encoding not in ("identity", "gzip", "deflate"):
            self.problem = (415, f"unsupported content encoding {self.encoding!r}; use gzip")
        elif self.headers.get("expect", "").lower() == "100-continue":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        if self.problem is not None or self.closing:
            return  # refused already: the body is read past, not kept
        self.size += len(body)
        if self.discard:  # a small body read past, so the connection can stay open
            if self.size > _MAX_DISCARD:
                self._answer_early()
            return
        if self.keep is not None:  # a prefix only: answered once it is full, rest unread
            room = self.keep - self.kept
            if room > 0:
                piece = body[:room]
                self.chunks.append(piece)
                self.kept += len(piece)
            if len(body) > room:
                prefix = b"".join(self.chunks)
                if prefix and self.encoding != "identity":
                    prefix = _decoded_prefix(prefix, self.keep, False)[0]
                self._answer_early(prefix)
            return
        limit = self.server.options.max_body_bytes
        if self.size > limit:
            self.chunks = []
            self.problem = _too_large(limit)
            self._answer_early()
            return
        if self.size > self.reserved and self.server.budget is not None:
            self.server.budget.reserve(self.size - self.reserved)  # chunked: as it arrives
            self.reserved = self.size
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.receiving = False
        self.active_since = time.monotonic()
        if self.closing:
            return
        body = b"".join(self.chunks)
        self.chunks = []
        problem = self.problem
        complete = True
        if problem is None and body and self.encoding != "identity":
            if self.keep is None:
                body, problem = _decoded(body, self.encoding, self.server.options.max_body_bytes)
            else:  # a prefix: decode what it holds, up to the same number of bytes
                body, complete = _decoded_prefix(body, self.keep, complete)
        if self.server.budget is not None and self.keep is None and len(body) > self.reserved:
            self.server.budget.reserve(len(body) - self.reserved)  # decoded: larger
            self.reserved = len(body)
        request = self._request(body, problem)
        if problem is None:
            request.answer = self.answer
        request.complete = complete
        request.reserved, self.reserved = self.reserved, 0
        self._enqueue(request, self.parser.should_keep_alive())

    # -------------------------------------------------------------------------- answering

    def _request(self, body: bytes, problem: tuple[int, str] | None) -> Request:
        method = self.parser.get_method().decode("latin-1")
        path = self.url.partition(b"?")[0].decode("latin-1")
        return Request(
            method,
            path,
            self.headers,
            self.peer,
            body,
            problem,
            tuple(self.authorizations),
            self.context,
            arrived=self.arrived,
        )

    def _release(self, size: int) -> None:
        if size and self.server.budget is not None:
            self.server.budget.release(size)

    def _answer_early(self, prefix: bytes = b"") -> None:
        """Answer without reading the rest of the body (the handler sees ``prefix`` of it, and
        ``complete`` False), then close: what was not read is never read."""
        request = self._request(prefix, self.problem)
        request.complete = False
        self._release(self.reserved)
        self.reserved = 0
        self.chunks = []
        self.receiving = False
        self.closing = True  # read no further; the parser's state is abandoned with it
        self.transport.pause_reading()
        self.queue.append((request, False))
        self._start_worker()

    def _enqueue(self, request: Request, keep_alive: bool) -> None:
        idle = not self.queue and (self.worker is None or self.worker.done())
        if request.answer is not None and idle and self.writable.is_set():
            # A shed request, nothing before it: answer here. At three times capacity most
            # requests are these, and a task each cost a third of the receiver's time for them.
            self._write(request.answer, keep_alive, request.method == "HEAD")
            return
        self.queue.append((request, keep_alive))
        if len(self.queue) >= _MAX_QUEUED and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._start_worker()

    def _start_worker(self) -> None:
        if self.worker is None or self.worker.done():
            self.worker = asyncio.get_running_loop().create_task(self._answer_queued())

    async def _answer_queued(self) -> None:
        while self.queue:
            # answers wait while the client reads none (pipelining without reading): with
            # reading paused at _MAX_QUEUED too, a connection holds a bounded amount
            await self.writable.wait()
            request, keep_alive = self.queue.popleft()
            try:
                if request.answer is not None:
                    response = request.answer
                else:
                    response = await self.server.handler(request)
            except Exception:
                log.exception("handling %s %s failed", request.method, request.path)
                response = Response(500, b"internal error")
                keep_alive = False
            finally:
                request.body = b""  # the answer no longer needs it: memory goes back now
                self._release(request.reserved)
            if not self._write(response, keep_alive, request.method == "HEAD"):
                return
            if self.paused and len(self.queue) < _MAX_QUEUED // 2:
                self.paused = False
                self.transport.resume_reading()
        if self.server.closing and not self.receiving:
            self.transport.close()

    def _write(self, response: Response, keep_alive: bool, head: bool) -> bool:
        """Send one answer; False when the connection is done (closed, or closes now)."""
        keep_alive = keep_alive and not self.server.closing
        if self.transport.is_closing():
            return False
        self.transport.write(self._encode(response, keep_alive, head))
        if not self.receiving:
            self.active_since = time.monotonic()  # idle from here
        if not keep_alive:
            self.transport.close()
            for queued, _ in self.queue:
                self._release(queued.reserved)
            self.queue.clear()
            return False
        return True

    def _encode(self, response: Response, keep_alive: bool, head: bool = False) -> bytes:
        lines = [
            b"HTTP/1.1 %d %s" % (response.status, _REASONS.get(response.status, "").encode()),
            b"Date: " + self.server.date(),
            b"Content-Type: " + response.content_type.encode("latin-1"),
            b"Content-Length: %d" % len(response.body),
        ]
        lines += [f"{name}: {value}".encode("latin-1") for name, value in response.headers.items()]
        if not keep_alive:
            lines.append(b"Connection: close")
        return b"\r\n".join(lines) + b"\r\n\r\n" + (b"" if head else response.body)

    def _refuse(self, status: int, message: str) -> None:
        """A request that cannot be parsed: answer plainly and close (no handler)."""
        self.closing = True
        if not self.transport.is_closing():
            self.transport.write(self._encode(Response(status, message.encode()), False))
            self.transport.close()

    # ------------------------------------------------------------------------ lifecycle

    def close_when_idle(self) -> None:
        if not self.receiving and (self.worker is None or self.worker.done()):
            self.transport.close()

    def expire(self, now: float) -> None:
        if self.worker is not None and not self.worker.done():
            return  # being answered
        options = self.server.options
        if self.receiving and now - self.active_since > options.request_timeout:
            self._refuse(408, "request not received in time")
        elif not self.receiving and now - self.active_since > options.idle_timeout:
            self.transport.close()

    def abort(self) -> None:
        self.transport.abort()


def _decoded(body: bytes, encoding: str, limit: int) -> tuple[bytes, tuple[int, str] | None]:
    """Undo gzip or deflate (zlib-wrapped, or raw as some clients send it) under ``limit``
    bytes of output. Concatenated gzip members (``cat a.gz b.gz``, valid gzip) are decoded
    one after another, under the same limit in total."""
    attempts = [zlib.MAX_WBITS | 32]  # a gzip or zlib header, detected
    if encoding == "deflate":
        attempts.append(-zlib.MAX_WBITS)
    failure: zlib.error | None = None
    for wbits in attempts:
        try:
            data, eof = _inflate(body, wbits, limit + 1, members=wbits > 0)
        except zlib.error as error:
            failure = error
            continue
        if len(data) > limit:
            return b"", _too_large(limit)
        if not eof:
            return b"", (400, f"cannot decode {encoding} body: truncated")
        return data, None
    return b"", (400, f"cannot decode {encoding} body: {failure}")


def _inflate(body: bytes, wbits: int, limit: int, members: bool) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of output, and whether the stream ended where the body does.

    With ``members``, data after a member's end starts the next one (at most
    ``_MAX_MEMBERS``; trailing zero bytes, as some writers pad with, are allowed). The body
    is fed in ``_INFLATE_CHUNK`` pieces, so what follows a member's end is never copied
    whole, however many members there are.
    """
    view = memoryview(body)
    out: list[bytes] = []
    size = position = 0
    count = 1
    decoder = zlib.decompressobj(wbits)
    pending: bytes | memoryview = b""
    while pending or position < len(view):
        if pending:
            chunk, pending = pending, b""
        else:
            chunk = view[position : position + _INFLATE_CHUNK]
            position += len(chunk)
        data = decoder.decompress(chunk, limit - size)
        out.append(data)
        size += len(data)
        if size >= limit:
            return b"".join(out), False
        if decoder.eof:
            rest = decoder.unused_data
            more = position < len(view)
            if not rest.strip(b"\0") and not (members and not rest and more):
                # the end, or zero padding: then it must pad to the end (checked once)
                return b"".join(out), not view[position:].tobytes().strip(b"\0")
            if not members:
                return b"".join(out), False
            count += 1
            if count > _MAX_MEMBERS:
                raise zlib.error(f"more than {_MAX_MEMBERS} gzip members")
            decoder = zlib.decompressobj(wbits)
            pending = rest
    return b"".join(out), decoder.eof


def _decoded_prefix(body: bytes, limit: int, complete: bool) -> tuple[bytes, bool]:
    """As much of a compressed prefix as decodes, at most ``limit`` bytes; whether that is
    the whole body. Corrupt data just ends the prefix: it is only looked into, never
    trusted."""
    try:
        data, eof = _inflate(body, zlib.MAX_WBITS | 32, limit + 1, members=True)
    except zlib.error:
        return b"", False
    return data[:limit], complete and eof and len(data) <= limit


def _too_large(limit: int) -> tuple[int, str]:
    return 413, f"request body over {limit} bytes"
