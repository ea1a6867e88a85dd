"""TLS on both receivers, with the real OTel SDK exporters and a CA made for the test."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus import MemoryBus
from ingest.receiver import ReceiverOptions, TlsOptions
from ingest.tokens import TokenStore
from schemas import EndpointSnapshot, topics
from tests.conftest import RunningReceiver, start_receiver
from tests.support.otel import ClientTls, Protocol, claude_resource, export_metrics
from tests.support.processes import free_port, wait_ready
from tests.support.tls import Pki, make_pki


@pytest.fixture(autouse=True)
def _no_ca_bundle_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE win over a session's own CA file
    (psf/requests#3829), and the OTLP/HTTP exporter sets it on the session: with either set,
    the exporter's ``certificate_file`` is ignored. Some machines set both."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


async def _serve(tmp: Path, tls: TlsOptions) -> RunningReceiver:
    return await start_receiver(
        tmp, MemoryBus(), receiver_options=ReceiverOptions(grpc_port=0, http_port=0, tls=tls)
    )


@pytest.fixture
async def tls_receiver(tmp_path: Path, pki: Pki) -> AsyncIterator[RunningReceiver]:
    running = await _serve(tmp_path, TlsOptions(pki.server_cert, pki.server_key))
    yield running
    await running.receiver.stop(grace=0)


@pytest.fixture
async def mtls_receiver(tmp_path: Path, pki: Pki) -> AsyncIterator[RunningReceiver]:
    running = await _serve(tmp_path, TlsOptions(pki.server_cert, pki.server_key, pki.ca))
    yield running
    await running.receiver.stop(grace=0)


def _port(running: RunningReceiver, protocol: Protocol) -> int:
    return running.grpc_port if protocol == "grpc" else running.http_port


def _snapshots(running: RunningReceiver) -> list[EndpointSnapshot]:
    assert isinstance(running.bus, MemoryBus)
    return [EndpointSnapshot.from_json(r.value) for r in running.bus.tail(topics.SNAPSHOTS)]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_sdk_exporters_send_over_tls(
    tls_receiver: RunningReceiver, pki: Pki, protocol: Protocol
) -> None:
    port = _port(tls_receiver, protocol)
    ok = await asyncio.to_thread(
        export_metrics,
        protocol,
        port,
        tls_receiver.token,
        claude_resource("C02TLS"),
        tls=ClientTls(pki.ca),
    )
    assert ok
    assert [s.endpoint_id for s in _snapshots(tls_receiver)] == ["acme/C02TLS"]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_plaintext_and_untrusted_clients_get_nothing(
    tls_receiver: RunningReceiver, pki: Pki, protocol: Protocol
) -> None:
    port = _port(tls_receiver, protocol)
    plain = await asyncio.to_thread(
        export_metrics, protocol, port, tls_receiver.token, claude_resource(), timeout=2
    )
    # trusting another CA: the server's certificate does not verify
    other = await asyncio.to_thread(
        export_metrics,
        protocol,
        port,
        tls_receiver.token,
        claude_resource(),
        timeout=2,
        tls=ClientTls(pki.other_client_cert),
    )
    assert not plain and not other
    assert _snapshots(tls_receiver) == []


@pytest.mark.parametrize("protocol", ["grpc", "http"])
async def test_client_certificates_are_required_with_a_client_ca(
    mtls_receiver: RunningReceiver, pki: Pki, protocol: Protocol
) -> None:
    port = _port(mtls_receiver, protocol)
    token = mtls_receiver.token
    with_cert = ClientTls(pki.ca, pki.client_cert, pki.client_key)
    without = ClientTls(pki.ca)
    foreign = ClientTls(pki.ca, pki.other_client_cert, pki.other_client_key)
    send = export_metrics
    assert await asyncio.to_thread(send, protocol, port, token, claude_resource(), tls=with_cert)
    assert not await asyncio.to_thread(
        send, protocol, port, token, claude_resource(), timeout=2, tls=without
    )
    assert not await asyncio.to_thread(
        send, protocol, port, token, claude_resource(), timeout=2, tls=foreign
    )
    assert len(_snapshots(mtls_receiver)) == 1


async def test_a_failed_handshake_leaves_the_receiver_serving(
    tls_receiver: RunningReceiver, pki: Pki
) -> None:
    def garbage() -> None:
        with socket.create_connection(("127.0.0.1", tls_receiver.http_port), timeout=5) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # plaintext to a TLS port
            sock.recv(100)

    await asyncio.to_thread(garbage)
    context = ssl.create_default_context(cafile=pki.ca)

    def handshake() -> str:
        with (
            socket.create_connection(("127.0.0.1", tls_receiver.http_port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="localhost") as sock,
        ):
            return str(sock.version())

    assert (await asyncio.to_thread(handshake)).startswith("TLSv1.")
    assert await asyncio.to_thread(
        export_metrics,
        "http",
        tls_receiver.http_port,
        tls_receiver.token,
        claude_resource(),
        tls=ClientTls(pki.ca),
    )


def test_driftline_ingest_serves_mutual_tls_from_its_flags(tmp_path: Path, pki: Pki) -> None:
    token = TokenStore(tmp_path / "tokens.db").create("acme")[1]
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    process = subprocess.Popen(
        [sys.executable, "-m", "driftline.cli", "ingest", "--data", str(tmp_path),
         "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"]),
         "--admin-port", str(ports["admin"]), "--tls-cert", str(pki.server_cert),
         "--tls-key", str(pki.server_key), "--tls-client-ca", str(pki.ca)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_ready(ports["admin"], process)
        tls = ClientTls(pki.ca, pki.client_cert, pki.client_key)
        for protocol in ("grpc", "http"):
            assert export_metrics(protocol, ports[protocol], token, claude_resource(), tls=tls)
            assert not export_metrics(
                protocol, ports[protocol], token, claude_resource(), timeout=2,
                tls=ClientTls(pki.ca),
            )  # fmt: skip
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0].decode()
    assert "Traceback" not in output, output
    assert "(TLS)" in output


def test_half_a_tls_configuration_is_refused_at_start(tmp_path: Path, pki: Pki) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "driftline.cli", "ingest", "--data", str(tmp_path),
         "--tls-cert", str(pki.server_cert)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "TLS needs both --tls-cert and --tls-key" in result.stderr
