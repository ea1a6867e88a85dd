"""`driftline run`: receiver, detectors and store in one process, no Kafka.

The same detectors and the same SQL as the Kafka deployment, with the in-process bus between
them. A request is answered only once its snapshot and any flags it caused are written to the
store (group commit), and the detectors' state is rebuilt from the store on start, so a crash
or restart loses nothing that was acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

import store
from actions import operations
from actions.integrations import IntegrationStore
from bus import MemoryBus, Record
from driftline import admin_auth, answers, console, datadir, startup
from driftline.datadir import dead_letter_path, run_file, store_path
from driftline.errors import NotFound
from driftline.ingest_runner import build_service, receiver_options, start_admin, until_signalled
from driftline.policies import PolicyDirectory
from driftline.settings import Settings
from ingest import admin
from ingest.receiver import Receiver
from processors.engine import DriftEngine
from processors.recovery import load_states
from schemas import AuthEvent, DriftFlag, EndpointSnapshot, topics

log = logging.getLogger(__name__)


class Pipeline:
    """Detectors and store behind the in-process bus."""

    def __init__(
        self,
        engine: DriftEngine,
        writer: store.BatchWriter,
        bus: MemoryBus,
        heartbeats: store.Heartbeats | None = None,
    ) -> None:
        self.engine = engine
        self.writer = writer
        self.bus = bus
        self.heartbeats = heartbeats or store.Heartbeats(0)
        bus.subscribe(self.on_record)

    async def on_record(self, record: Record) -> None:
        event: EndpointSnapshot | AuthEvent
        if isinstance(record.message, EndpointSnapshot | AuthEvent):
            event = record.message  # published in this process: no need to decode it again
        elif record.topic == topics.SNAPSHOTS:
            event = EndpointSnapshot.from_json(record.value)
        elif record.topic == topics.AUTH_EVENTS:
            event = AuthEvent.from_json(record.value)
        else:
            return
        flags = self.engine.on_event(event)
        if isinstance(event, EndpointSnapshot):
            if not flags and not self.heartbeats.needed(event):
                return  # the store already has this state, seen recently enough
            await self.writer.add_durably([event, *flags])
            self.heartbeats.stored(event)
        else:
            await self.writer.add_durably([event, *flags])
        await self._announce(flags)

    async def apply_policies(self, directory: PolicyDirectory) -> None:
        now = datetime.now(UTC)
        for policy in directory.all():
            flags = self.engine.set_policy(policy, now)
            if flags:
                log.info(
                    "policy v%d of %s: %d flag changes", policy.version, policy.tenant, len(flags)
                )
                await self.writer.add_durably(flags)
                await self._announce(flags)

    async def _announce(self, flags: list[DriftFlag]) -> None:
        """Flags go on the bus too, for in-process consumers (remediation)."""
        if flags:
            await self.bus.publish(
                [Record(topics.FLAGS, f.endpoint_id, f.to_json()) for f in flags]
            )


async def _watch_policies(pipeline: Pipeline, directory: PolicyDirectory) -> None:
    stamp = directory.stamp()
    while True:
        await asyncio.sleep(1.0)
        if (current := directory.stamp()) != stamp:
            stamp = current
            try:
                await pipeline.apply_policies(directory)
            except ValueError as error:  # a bad file must not stop the pipeline
                log.error("policy not applied: %s", error)


def query_routes(client: Any, known: Callable[[str], bool]) -> list[web.RouteDef]:
    """Read-only query API for `driftline drift/endpoint` while this process holds the store.

    No ``tenant`` means all tenants; the CLI sends none only for ``--all-tenants``, and only
    the admin token's holder gets here at all."""

    async def answer(question: Callable[..., Any], *args: Any) -> web.Response:
        try:
            result = await asyncio.to_thread(question, client, known, *args)
        except NotFound as error:
            return web.json_response({"error": str(error)}, status=404)
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(result, dumps=_dumps)

    async def drift(request: web.Request) -> web.Response:
        q = request.query
        return await answer(
            answers.drift, q.get("tenant"), q.get("kind"), q.get("team"), q.get("service")
        )

    async def endpoint(request: web.Request) -> web.Response:
        if "id" not in request.query:
            return web.json_response({"error": "name the endpoint: ?id=…"}, status=400)
        return await answer(answers.endpoint, request.query.get("tenant"), request.query["id"])

    async def services(request: web.Request) -> web.Response:
        tenant = request.query.get("tenant")
        if not tenant:
            return web.json_response({"error": "name the tenant: ?tenant=…"}, status=400)
        names = await asyncio.to_thread(store.queries.service_names, client, tenant)
        return web.json_response(names)

    async def flags(request: web.Request) -> web.Response:
        tenant = request.query.get("tenant")
        if not tenant:
            return web.json_response({"error": "name a tenant"}, status=400)
        rows = await asyncio.to_thread(store.queries.flag_transitions, client, tenant)
        return web.json_response(rows, dumps=_dumps)

    return [
        web.get("/api/drift", drift),
        web.get("/api/endpoint", endpoint),
        web.get("/api/services", services),
        web.get("/api/flags", flags),
    ]


def operation_routes(ctx: operations.Context) -> list[web.RouteDef]:
    """`driftline actions/mdm/policy push …` run here while this process holds the store."""

    async def operate(request: web.Request) -> web.Response:
        try:
            args = await request.json()
            if not isinstance(args, dict):
                raise ValueError("the body must be a JSON object")
            result = await operations.run_operation(ctx, request.match_info["name"], args)
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        return web.json_response(result, dumps=_dumps)

    return [web.post("/api/operations/{name}", operate)]


def _dumps(value: Any) -> str:
    return json.dumps(value, default=str)


async def run(settings: Settings) -> None:
    data = settings.data
    admin_token = admin_auth.load_or_create(data)  # also makes the data directory 0700
    dsn = f"chdb://{store_path(data).resolve()}"
    client = store.connect(dsn)
    applied = store.migrate(client)
    if applied:
        log.info("store migrated to version %d", applied[-1])
    engine = DriftEngine(load_states(client))
    log.info("recovered %d endpoint states from %s", len(engine.states), store_path(data))
    writer = store.BatchWriter(
        client, max_delay=settings.store_batch_delay, dead_letter=dead_letter_path(data)
    )
    bus = MemoryBus(keep=1000)
    pipeline = Pipeline(engine, writer, bus, store.Heartbeats(settings.last_seen_resolution))
    directory = PolicyDirectory(data / "policies")
    await pipeline.apply_policies(directory)
    watcher = asyncio.create_task(_watch_policies(pipeline, directory))

    service = build_service(settings, bus)
    receiver = Receiver(service, receiver_options(settings, reuse_port=False))
    await receiver.start()
    app = admin.build_app(service.ready)
    app.middlewares.append(
        admin_auth.guard(admin_token, admin_auth.allowed_hosts(settings.host, settings.admin_port))
    )
    known = answers.registry_tenants(data, settings.token_registry, settings.integrations_file)
    app.add_routes(query_routes(client, known))
    ctx = operations.Context(
        store=client,
        writer=writer,
        data=data,
        integrations=IntegrationStore(settings.integrations_file),
        policies=directory.get,
        bus=bus,
    )
    app.add_routes(operation_routes(ctx))
    console_client = store.connect(dsn)  # the console reads in a session of its own
    console.mount(app, console_client, lambda: store.connect(dsn), data, settings.token_registry)
    wake = asyncio.Event()

    async def on_flag(record: Record) -> None:
        if record.topic == topics.FLAGS:
            wake.set()

    bus.subscribe(on_flag)
    remediation = asyncio.create_task(operations.remediate_forever(ctx, settings.schedule(), wake))
    admin_runner = await start_admin(settings, app)
    address = admin_auth.host_header(admin_auth.client_address(settings.host), settings.admin_port)
    datadir.write_private(
        run_file(data), json.dumps({"pid": os.getpid(), "admin": f"http://{address}"})
    )
    console_address = f"http://{address}/console/ (sign in: driftline console url)"
    print(startup.startup_block(startup.gather(settings, console=console_address)), flush=True)
    try:
        await until_signalled()
    finally:
        log.info("stopping")
        run_file(data).unlink(missing_ok=True)
        for task in (watcher, remediation):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await receiver.stop()
        await admin_runner.cleanup()
        await writer.close()
        console_client.close()
        client.close()
        log.info("stopped")
