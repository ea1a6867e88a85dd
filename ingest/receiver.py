"""The OTLP receiver: gRPC and HTTP transports around one IngestService."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from ingest import grpc_server, http_server
from ingest.admission import pin_malloc_thresholds
from ingest.http1 import Server, ServerOptions
from ingest.service import IngestService

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """PEM files. With ``client_ca`` every client must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca is not None:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    def grpc_credentials(self) -> grpc.ServerCredentials:
        client_ca = self.client_ca.read_bytes() if self.client_ca is not None else None
        return grpc.ssl_server_credentials(
            [(self.key.read_bytes(), self.cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )


@dataclass(frozen=True, slots=True)
class ReceiverOptions:
    host: str = "127.0.0.1"
    grpc_port: int = 4317
    http_port: int = 4318
    max_grpc_bytes: int = 4 * 1024 * 1024  # gRPC's own default receive limit
    max_http_bytes: int = 20 * 1024 * 1024  # the OpenTelemetry Collector's HTTP default
    reuse_port: bool = False  # True when several worker processes share the ports
    tls: TlsOptions | None = None  # None: plaintext (behind a TLS-terminating balancer)


class Receiver:
    def __init__(self, service: IngestService, options: ReceiverOptions) -> None:
        self.service = service
        self.options = options
        self._grpc = grpc_server.build_server(service, options.max_grpc_bytes, options.reuse_port)
        self._http = Server(
            http_server.build_handler(service),
            ServerOptions(max_body_bytes=options.max_http_bytes),
            gate=http_server.build_gate(service),
            budget=service.budget,
        )
        self.grpc_port = 0
        self.http_port = 0

    async def start(self) -> None:
        """Bind both ports (0 picks a free one; the bound ports are then on the instance)."""
        opts = self.options
        pin_malloc_thresholds()
        address = f"{opts.host}:{opts.grpc_port}"
        if opts.tls is not None:
            self.grpc_port = self._grpc.add_secure_port(address, opts.tls.grpc_credentials())
        else:
            self.grpc_port = self._grpc.add_insecure_port(address)
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC port {opts.host}:{opts.grpc_port}")
        await self._grpc.start()
        sock = _listen(opts.host, opts.http_port, opts.reuse_port)
        self.http_port = sock.getsockname()[1]
        await self._http.start(sock, opts.tls.ssl_context() if opts.tls is not None else None)
        self.service.start()
        log.info(
            "OTLP receiver on %s: gRPC %d, HTTP %d%s",
            opts.host,
            self.grpc_port,
            self.http_port,
            " (TLS)" if opts.tls is not None else "",
        )

    async def stop(self, grace: float = 5.0) -> None:
        """Stop taking requests, let in-flight ones finish, then flush AuthEvents."""
        await asyncio.gather(self._grpc.stop(grace), self._http.stop(grace))
        await self.service.stop()


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
