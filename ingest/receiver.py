"""The OTLP receiver: gRPC and HTTP transports around one IngestService."""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass

from ingest import grpc_server, http_server
from ingest.http1 import Server, ServerOptions
from ingest.service import IngestService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ReceiverOptions:
    host: str = "127.0.0.1"
    grpc_port: int = 4317
    http_port: int = 4318
    max_grpc_bytes: int = 4 * 1024 * 1024  # gRPC's own default receive limit
    max_http_bytes: int = 20 * 1024 * 1024  # the OpenTelemetry Collector's HTTP default
    reuse_port: bool = False  # True when several worker processes share the ports


class Receiver:
    def __init__(self, service: IngestService, options: ReceiverOptions) -> None:
        self.service = service
        self.options = options
        self._grpc = grpc_server.build_server(service, options.max_grpc_bytes, options.reuse_port)
        self._http = Server(
            http_server.build_handler(service), ServerOptions(max_body_bytes=options.max_http_bytes)
        )
        self.grpc_port = 0
        self.http_port = 0

    async def start(self) -> None:
        """Bind both ports (0 picks a free one; the bound ports are then on the instance)."""
        opts = self.options
        self.grpc_port = self._grpc.add_insecure_port(f"{opts.host}:{opts.grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC port {opts.host}:{opts.grpc_port}")
        await self._grpc.start()
        sock = _listen(opts.host, opts.http_port, opts.reuse_port)
        self.http_port = sock.getsockname()[1]
        await self._http.start(sock)
        log.info("OTLP receiver on %s: gRPC %d, HTTP %d", opts.host, self.grpc_port, self.http_port)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, let in-flight ones finish, then flush AuthEvents."""
        await asyncio.gather(self._grpc.stop(grace), self._http.stop(grace))
        await self.service.drain()


def _listen(host: str, port: int, reuse_port: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
