"""What every command shares: setting flags, settings, tables, the channel to a running pipeline."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from driftline.settings import Settings

# flag → Settings field, for the settings a flag can override (None keeps env/default)
SETTING_FLAGS: dict[str, tuple[str, type, str]] = {
    "--data": ("data", Path, "data directory (DRIFTLINE_DATA, default ./.driftline)"),
    "--bus": ("bus", str, "memory (in-process) or kafka (DRIFTLINE_BUS)"),
    "--bootstrap": ("bootstrap", str, "Kafka bootstrap servers (DRIFTLINE_BOOTSTRAP)"),
    "--host": ("host", str, "address to listen on (DRIFTLINE_HOST, default 127.0.0.1)"),
    "--grpc-port": ("grpc_port", int, "OTLP/gRPC port (DRIFTLINE_GRPC_PORT, default 4317)"),
    "--http-port": ("http_port", int, "OTLP/HTTP port (DRIFTLINE_HTTP_PORT, default 4318)"),
    "--admin-port": ("admin_port", int, "health and metrics port (DRIFTLINE_ADMIN_PORT, 8888)"),
    "--workers": ("workers", int, "receiver processes, 0 = one per core (DRIFTLINE_WORKERS)"),
    "--tokens": ("tokens", Path, "token registry file (DRIFTLINE_TOKENS, default DATA/tokens.db)"),
    "--max-grpc-bytes": ("max_grpc_bytes", int, "largest gRPC message (default 4 MiB)"),
    "--max-http-bytes": ("max_http_bytes", int, "largest decoded HTTP body (default 20 MiB)"),
    "--max-attributes": ("max_attributes", int, "attributes per resource (default 128)"),
    "--max-attribute-value-length": (
        "max_attribute_value_length",
        int,
        "characters per attribute value (default 4096)",
    ),
}


def add_setting_flags(parser: argparse.ArgumentParser, *flags: str) -> None:
    for flag in flags:
        _, kind, help_text = SETTING_FLAGS[flag]
        parser.add_argument(flag, type=kind, default=None, help=help_text)


def settings_of(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for flag, (field, _, _) in SETTING_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = [columns] + [
        ["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def query(args: argparse.Namespace, path: str, params: dict[str, str | None]) -> Any:
    """Through the running `driftline run` if there is one (it holds the embedded store)."""
    import store
    from driftline import embedded

    if not args.all_tenants and not args.tenant:
        raise ValueError("name a tenant with --tenant (or --all-tenants, for administrators)")
    tenant = None if args.all_tenants else args.tenant
    settings = settings_of(args)
    running = embedded.run_file(settings.data)
    if args.clickhouse is None and running.exists():
        import httpx

        base = json.loads(running.read_text())["admin"]
        query = {k: v for k, v in {**params, "tenant": tenant}.items() if v is not None}
        response = httpx.get(f"{base}/api/{path}", params=query, timeout=30)
        response.raise_for_status()
        return response.json()
    dsn = args.clickhouse or f"chdb://{embedded.store_path(settings.data).resolve()}"
    client = store.connect(dsn)
    try:
        store.migrate(client)
        from store import queries

        if path == "drift":
            return queries.drift(client, tenant, params["kind"], params["team"], params["service"])
        return queries.endpoint_history(client, tenant, str(params["id"]))
    finally:
        client.close()


@contextmanager
def terminal_progress() -> Iterator[Any]:
    """A progress callback ``(what, done, total)`` drawing a bar on a terminal (stderr); None
    when stderr is not a terminal, so pipes and logs stay quiet. rich is imported only then."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        tasks: dict[str, Any] = {}

        def advance(what: str, done: int, total: int) -> None:
            key = what.split(" ", 1)[0]
            if key not in tasks:
                tasks[key] = bar.add_task(what, total=total)
            bar.update(tasks[key], description=what, completed=done, total=total)

        yield advance


def operate(args: argparse.Namespace, name: str, params: dict[str, Any]) -> Any:
    """Run a store-backed operation here, or in the `driftline run` that holds the store."""
    import asyncio

    from driftline import actions_runner, embedded

    settings = settings_of(args)
    running = embedded.run_file(settings.data)
    clickhouse = getattr(args, "clickhouse", None)
    if clickhouse is None and running.exists():
        import httpx

        base = json.loads(running.read_text())["admin"]
        response = httpx.post(f"{base}/api/operations/{name}", json=params, timeout=600)
        if response.status_code == 400:
            raise ValueError(response.json()["error"])
        response.raise_for_status()
        return response.json()
    dsn = clickhouse or f"chdb://{embedded.store_path(settings.data).resolve()}"
    with terminal_progress() as progress:
        return asyncio.run(
            actions_runner.run_local(
                dsn, settings.data, settings.integrations_file, name, params, progress
            )
        )


def policies_of(settings: Settings) -> Any:
    from driftline.policies import PolicyDirectory

    return PolicyDirectory(settings.data / "policies")


def utc(timestamp: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC)


def publish_policy(settings: Settings, policy: Any) -> None:
    """Embedded: the data directory is the source. Kafka: also the compacted policy topic."""
    if settings.bus == "kafka":
        import asyncio

        from driftline.policies import publish

        asyncio.run(publish(settings.bootstrap, policy))
