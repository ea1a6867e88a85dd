"""`driftline record` captures what real OTel exporters send, without their credentials, and
`driftline replay` sends it to a real `driftline run` under another token."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
)

from loadtest.record import REMOVED, read, scrub
from tests.support.embedded import Run
from tests.support.otel import claude_resource, export_logs, export_metrics
from tests.support.processes import free_port

SECRET = "dlt_0123abcd_" + "s" * 43


def test_scrub_removes_every_credential_header() -> None:
    kept = scrub(
        {
            "Authorization": f"Bearer {SECRET}",
            "X-Api-Key": SECRET,
            "Cookie": f"session={SECRET}",
            "Proxy-Authorization": SECRET,
            "x-auth-token": SECRET,
            "Content-Type": "application/x-protobuf",
            "Content-Encoding": "gzip",
            "User-Agent": "OTel-OTLP-Exporter-Python/1.27",
        }
    )
    assert SECRET not in json.dumps(kept)
    assert kept["authorization"] == REMOVED and kept["x-api-key"] == REMOVED
    assert kept["content-type"] == "application/x-protobuf"
    assert "user-agent" not in kept and "content-encoding" not in kept  # bodies are stored decoded


@pytest.mark.slow
def test_record_then_replay_against_another_token(tmp_path: Path) -> None:
    out = tmp_path / "fleet.otlp.jsonl"
    ports = {"grpc": free_port(), "http": free_port()}
    recorder = subprocess.Popen(
        [sys.executable, "-m", "driftline.cli", "record", "--out", str(out),
         "--grpc-port", str(ports["grpc"]), "--http-port", str(ports["http"])],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while not out.exists() or out.stat().st_size == 0:
            assert time.monotonic() < deadline and recorder.poll() is None
            time.sleep(0.1)
        time.sleep(0.5)
        for serial, protocol in (("C02REC0001", "http"), ("C02REC0002", "grpc")):
            resource = claude_resource(serial=serial, service_version="2.0.9")
            assert export_metrics(protocol, ports[protocol], SECRET, resource, "2.0.9")  # type: ignore[arg-type]
            assert export_logs(protocol, ports[protocol], SECRET, resource, "2.0.9")  # type: ignore[arg-type]
        assert export_metrics("http", ports["http"], SECRET, claude_resource(), compression=True)
    finally:
        recorder.send_signal(signal.SIGTERM)
        stderr = recorder.communicate(timeout=30)[1].decode()
    assert "recorded 5 requests" in stderr
    text = out.read_text()
    assert SECRET not in text and "s" * 43 not in text
    requests = list(read(out))
    assert [(r.protocol, r.signal) for r in requests] == [
        ("http", "metrics"), ("http", "logs"), ("grpc", "metrics"), ("grpc", "logs"),
        ("http", "metrics"),
    ]  # fmt: skip
    gzipped = ExportMetricsServiceRequest.FromString(requests[-1].body)  # stored decoded
    assert gzipped.resource_metrics[0].scope_metrics[0].metrics[0].name.startswith("claude_code.")
    assert all(r.headers["authorization"] == REMOVED for r in requests)
    assert [r.at for r in requests] == sorted(r.at for r in requests)

    run = Run(tmp_path / "data")
    run.start()
    try:
        token = run.cli("tokens", "create", "--tenant", "acme").strip().splitlines()[-1]
        token_file = tmp_path / "token"
        token_file.write_text(token)
        for protocol in ("http", "grpc"):
            report = tmp_path / f"replay-{protocol}.json"
            replayed = subprocess.run(
                [sys.executable, "-m", "driftline.cli", "replay", str(out), "--speed", "max",
                 "--token-file", str(token_file), "--protocol", protocol, "--json", str(report),
                 "--target", f"127.0.0.1:{run.ports[protocol]}"],
                capture_output=True, text=True,
            )  # fmt: skip
            assert report.exists(), replayed.stderr[-2000:]
            result = json.loads(report.read_text())
            assert (result["sent"], result["accepted"], result["failed"]) == (5, 5, 0), (
                result["errors"],
                result["unexpected_examples"],
            )
            assert replayed.returncode == 0
        for serial in ("C02REC0001", "C02REC0002", "C02TEST0001"):
            history = json.loads(
                run.cli("endpoint", f"acme/{serial}", "--tenant", "acme", "--json")
            )
            assert history["states"], serial  # replayed and stored under the new tenant
        # without a valid token nothing is accepted
        token_file.write_text("dlt_00000000_" + "x" * 43)
        refused = subprocess.run(
            [sys.executable, "-m", "driftline.cli", "replay", str(out), "--speed", "10",
             "--token-file", str(token_file), "--target", f"127.0.0.1:{run.ports['http']}"],
            capture_output=True, text=True,
        )  # fmt: skip
        assert refused.returncode == 1 and "5 rejected" in refused.stdout
    finally:
        run.stop()
