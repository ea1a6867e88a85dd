"""The web console: fleet, endpoints, remediation, tokens and policies pages for security teams.

`driftline run` mounts it on the admin port under /console/ (``mount``); `driftline console
--clickhouse URL` serves the same pages from a ClickHouse server. The wiring is here (routes,
sessions, templates, static files); the SQL is in ``store.console``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import REGISTRY

from driftline import admin_auth
from driftline.console.metrics import StoreGauges
from driftline.console.pages import Console, api_routes, console_app

__all__ = ["Console", "mount"]


def mount(
    app: web.Application,
    client: Any,
    connect: Callable[[], Any],
    data: Path,
    token_registry: Path | None = None,
) -> Console:
    """The console under /console/, its API under /api/console/, its gauges in /metrics.

    `client` is a store client of the console's own; `connect` opens another, for read-only
    SQL sessions. Creates DATA/admin.token when there is none.
    """
    console = Console(
        client=client,
        connect=connect,
        data=data,
        admin_token=admin_auth.load_or_create(data),
        token_registry=token_registry,
    )
    app.add_routes(api_routes(console))
    app.router.add_get("/console", _to_console)
    app.add_subapp("/console/", console_app(console))
    gauges = StoreGauges(client)
    REGISTRY.register(gauges)
    app.on_cleanup.append(lambda _: _unregister(gauges))
    logging.getLogger(__name__).info(
        "console at /console/ on the admin port: sign in with `driftline console url`"
    )
    return console


async def _to_console(_: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/console/")


async def _unregister(gauges: StoreGauges) -> None:
    REGISTRY.unregister(gauges)


def run_file(data: Path) -> Path:
    """Where a running `driftline console --clickhouse` says how to reach it."""
    return data / "console.json"


async def serve(dsn: str, data: Path, host: str, port: int) -> None:
    """`driftline console --clickhouse URL`: the same pages (and gauges) from a ClickHouse
    server, for the Kafka deployment, with its own admin token under DATA. It only reads: a
    ClickHouse user with SELECT on the database will do, if its profile lets it change
    settings (readonly 0 or 2), which the SQL sandbox needs for its tenant filters."""
    import json
    import os

    import store
    from driftline.ingest_runner import until_signalled
    from ingest import admin

    client = store.connect(dsn)  # read only: the sink migrates the server
    app = admin.build_app(lambda: True)
    registry = data / "tokens.db"
    mount(app, client, lambda: store.connect(dsn), data, registry if registry.exists() else None)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    run_file(data).write_text(json.dumps({"pid": os.getpid(), "admin": f"http://{host}:{port}"}))
    try:
        await until_signalled()
    finally:
        run_file(data).unlink(missing_ok=True)
        await runner.cleanup()
        client.close()
