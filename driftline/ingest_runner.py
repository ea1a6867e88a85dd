"""`driftline ingest`: wires settings into receivers, one process or one per core.

Several processes share the OTLP ports with SO_REUSEPORT (Python gRPC tops out around one core
per process); the parent supervises them and serves the admin port, aggregating readiness and
Prometheus metrics across workers.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.sharedctypes import SynchronizedArray
from typing import Any

import uvloop
from aiohttp import web
from prometheus_client import multiprocess as prom_multiprocess

from bus import Bus, KafkaBus, KafkaOptions, MemoryBus
from bus.aio import wait_at_most
from driftline.settings import Settings
from ingest import admin
from ingest.admission import ShedOptions
from ingest.receiver import Receiver, ReceiverOptions, TlsOptions
from ingest.service import IngestOptions, IngestService
from ingest.snapshots import Limits
from ingest.tokens import Authenticator

log = logging.getLogger(__name__)


def build_bus(settings: Settings, client_id: str = "driftline-ingest") -> Bus:
    if settings.bus == "kafka":
        return KafkaBus(
            KafkaOptions(
                settings.bootstrap, client_id=client_id, publish_timeout=settings.publish_timeout
            )
        )
    return MemoryBus()


def build_service(settings: Settings, bus: Bus) -> IngestService:
    options = IngestOptions(
        identity_attributes=tuple(settings.identity_attributes),
        limits=Limits(
            settings.max_attributes,
            settings.max_attribute_key_length,
            settings.max_attribute_value_length,
        ),
        max_inflight=settings.max_inflight,
        auth_event_interval=settings.auth_event_interval,
        max_body_bytes_in_flight=settings.max_body_bytes_in_flight,
        shedding=ShedOptions(target_lag=settings.shed_lag, target_queue=settings.shed_queue)
        if settings.shed_lag > 0
        else None,
    )
    return IngestService(Authenticator(settings.token_registry), bus, options)


def receiver_options(settings: Settings, reuse_port: bool) -> ReceiverOptions:
    return ReceiverOptions(
        host=settings.host,
        grpc_port=settings.grpc_port,
        http_port=settings.http_port,
        max_grpc_bytes=settings.max_grpc_bytes,
        max_http_bytes=settings.max_http_bytes,
        reuse_port=reuse_port,
        tls=tls_options(settings),
    )


def tls_options(settings: Settings) -> TlsOptions | None:
    """TLS when a certificate and key are set; one without the other is a mistake."""
    if settings.tls_cert is None and settings.tls_key is None:
        if settings.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if settings.tls_cert is None or settings.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    return TlsOptions(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


async def start_admin(settings: Settings, app: web.Application) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.admin_port).start()
    return runner


async def until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def serve(
    settings: Settings,
    *,
    reuse_port: bool = False,
    with_admin: bool = True,
    ready_flags: SynchronizedArray[Any] | None = None,
    slot: int = 0,
) -> None:
    bus = build_bus(settings)
    service = build_service(settings, bus)
    await bus.start()
    receiver = Receiver(service, receiver_options(settings, reuse_port))
    await receiver.start()
    admin_runner = (
        await start_admin(settings, admin.build_app(service.ready)) if with_admin else None
    )
    reporter = (
        asyncio.create_task(_report_ready(service, ready_flags, slot)) if ready_flags else None
    )
    try:
        await until_signalled()
    finally:
        if reporter:
            reporter.cancel()
        await receiver.stop()
        if admin_runner:
            await admin_runner.cleanup()
        await bus.stop()


async def _report_ready(service: IngestService, flags: SynchronizedArray[Any], slot: int) -> None:
    while True:
        flags[slot] = 1 if service.ready() else 0
        await asyncio.sleep(0.25)


def _worker(settings: Settings, flags: SynchronizedArray[Any], slot: int) -> None:
    logging.basicConfig(
        level=logging.INFO, format=f"%(asctime)s worker{slot} %(levelname)s %(name)s: %(message)s"
    )
    uvloop.run(serve(settings, reuse_port=True, with_admin=False, ready_flags=flags, slot=slot))


def run(settings: Settings) -> None:
    workers = settings.workers or os.cpu_count() or 1
    if workers == 1:
        uvloop.run(serve(settings))
        return
    asyncio.run(_supervise(settings, workers))


async def _supervise(settings: Settings, workers: int) -> None:
    metrics_dir = tempfile.mkdtemp(prefix="driftline-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("spawn")  # fork before gRPC starts is not enough
    flags = context.Array("b", workers)
    processes: list[Any] = [None] * workers

    def spawn(slot: int) -> None:
        flags[slot] = 0
        process = context.Process(target=_worker, args=(settings, flags, slot), daemon=True)
        process.start()
        processes[slot] = process

    for slot in range(workers):
        spawn(slot)

    def alive() -> bool:
        return all(p.is_alive() for p in processes)

    def ready() -> bool:
        return alive() and all(flags[i] for i in range(workers))

    runner = await start_admin(settings, admin.build_app(ready, alive))
    log.info("supervising %d receiver processes", workers)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    restarts: list[float] = []
    while not stop.is_set():
        for slot, process in enumerate(processes):
            if not process.is_alive():
                restarts.append(time.monotonic())
                log.error("receiver %d exited with %s; restarting", slot, process.exitcode)
                # its live gauges (bytes in flight, in-flight limit) would be summed forever
                prom_multiprocess.mark_process_dead(process.pid, metrics_dir)  # type: ignore[no-untyped-call]
                spawn(slot)
        restarts = [t for t in restarts if time.monotonic() - t < 60]
        if len(restarts) > 5 * workers:
            log.error("receivers keep crashing; giving up")
            break
        await wait_at_most(stop, 1.0)
    for process in processes:
        process.terminate()
    for process in processes:
        await asyncio.to_thread(process.join, 10)
    await runner.cleanup()
    shutil.rmtree(metrics_dir, ignore_errors=True)
