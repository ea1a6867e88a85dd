"""What every command shares: setting flags, settings, tables, the channel to a running pipeline."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from driftline import datadir
from driftline.errors import NoData, NotFound, Unreachable

if TYPE_CHECKING:
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
    "--max-body-bytes-in-flight": (
        "max_body_bytes_in_flight",
        int,
        "request bodies held at once per receiver process; past it 503 (default 256 MiB)",
    ),
    "--tls-cert": ("tls_cert", Path, "PEM certificate chain: serve both receivers over TLS"),
    "--tls-key": ("tls_key", Path, "PEM private key of --tls-cert"),
    "--tls-client-ca": (
        "tls_client_ca",
        Path,
        "PEM CA: require client certificates it signed (mutual TLS)",
    ),
    "--integrations": (
        "integrations",
        Path,
        "MDM integrations file (DRIFTLINE_INTEGRATIONS, default DATA/mdm/integrations.json)",
    ),
    "--actions-live": (
        "actions_live",
        bool,
        "act on the MDMs; without it remediation is a dry run (DRIFTLINE_ACTIONS_LIVE)",
    ),
    "--actions-interval": (
        "actions_interval",
        float,
        "seconds between remediation passes (DRIFTLINE_ACTIONS_INTERVAL, default 60)",
    ),
    "--compliance-interval": (
        "compliance_interval",
        float,
        "seconds between compliance pulls (DRIFTLINE_COMPLIANCE_INTERVAL, default 900)",
    ),
}
# the remediation stage's settings: flags of `run` and `actions serve`, not of the receiver
ACTIONS_FLAGS = ("--integrations", "--actions-live", "--actions-interval", "--compliance-interval")
RECEIVER_FLAGS = tuple(f for f in SETTING_FLAGS if f not in ACTIONS_FLAGS)


def add_setting_flags(parser: argparse.ArgumentParser, *flags: str) -> None:
    for flag in flags:
        _, kind, help_text = SETTING_FLAGS[flag]
        if kind is bool:  # a switch; absent keeps the environment's value
            parser.add_argument(
                flag, action="store_const", const=True, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, type=kind, default=None, help=help_text)


def settings_of(args: argparse.Namespace) -> Settings:
    from driftline.settings import Settings

    overrides: dict[str, Any] = {}
    for flag, (field, _, _) in SETTING_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


def data_flag(args: argparse.Namespace) -> str:
    """`` --data DIR`` for a suggested next command, when this one was given one."""
    import shlex

    data = getattr(args, "data", None)
    return f" --data {shlex.quote(str(data))}" if data is not None else ""


def tenant_arg(value: str) -> str:
    """argparse type of ``--tenant``: the documented charset, checked before anything runs."""
    from schemas.identity import check_tenant_id

    try:
        return check_tenant_id(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def clickhouse_of(args: argparse.Namespace) -> str | None:
    """``--clickhouse``, else ``DRIFTLINE_CLICKHOUSE`` (the server the sink writes)."""
    return getattr(args, "clickhouse", None) or os.environ.get("DRIFTLINE_CLICKHOUSE") or None


# columns a table cuts to this many characters (the full text is in --json)
WIDE = 60


def clip(text: str, width: int = WIDE) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def print_table(rows: list[dict[str, Any]], columns: list[str], wide: int = WIDE) -> None:
    table = [columns] + [[clip(cell(row.get(c)), wide) for c in columns] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def cell(value: Any) -> str:
    """One line per row (newlines in a detail would break the table); times to the second."""
    if value is None:
        return ""
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-" and value[10] in " T":
        with contextlib.suppress(ValueError):  # a time that came through the admin API as text
            value = datetime.fromisoformat(value)
    if isinstance(value, datetime):
        utc = value.astimezone(UTC) if value.tzinfo else value  # the store's times are UTC
        return str(utc.strftime("%Y-%m-%d %H:%M:%SZ"))
    return " ".join(str(value).split())


def _tenant_scope(args: argparse.Namespace) -> str | None:
    if not args.all_tenants and not args.tenant:
        raise ValueError("name a tenant with --tenant (or --all-tenants, for administrators)")
    return None if args.all_tenants else str(args.tenant)


def query(args: argparse.Namespace, path: str, params: dict[str, str | None]) -> Any:
    """Through the running `driftline run` if there is one (it holds the embedded store),
    else from the store: ``--clickhouse`` / ``DRIFTLINE_CLICKHOUSE``, or ``DATA/clickhouse``."""
    tenant = _tenant_scope(args)
    data = datadir.data_of(args.data)
    clickhouse = clickhouse_of(args)
    if clickhouse is None:
        datadir.require(data)
        info = datadir.running(data)
        if info is not None:
            query = {k: v for k, v in {**params, "tenant": tenant}.items() if v is not None}
            answer = call_api(info, data, "GET", f"/api/{path}?{urlencode(query)}")
            if answer is not _GONE:
                return answer
    return _query_store(args, data, clickhouse, path, tenant, params)


def _query_store(
    args: argparse.Namespace,
    data: Path,
    clickhouse: str | None,
    path: str,
    tenant: str | None,
    params: dict[str, str | None],
) -> Any:
    from driftline import answers

    settings = settings_of(args)
    known = answers.registry_tenants(data, settings.token_registry, settings.integrations_file)
    client = open_store(data, clickhouse)
    try:
        if path == "drift":
            return answers.drift(
                client, known, tenant, params["kind"], params["team"], params["service"]
            )
        return answers.endpoint(client, known, tenant, str(params["id"]))
    finally:
        client.close()


def store_dsn(data: Path, clickhouse: str | None, *, create: bool = False) -> str:
    """The store to open in this process; a chDB path only when no other process holds it.
    Only commands that write (``create``) may start a store that is not there yet."""
    if clickhouse is not None:
        return clickhouse
    location = datadir.store_path(data)
    if not create and not location.is_dir():
        raise NoData(
            f"no store at {location.absolute()}: nothing received yet (`driftline run` makes "
            "it); on the Kafka deployment pass --clickhouse URL, the server the sink writes"
        )
    holder = datadir.store_holder(location)
    if holder is not None:
        raise Unreachable(
            f"the store at {location.absolute()} is held by another process (pid {holder}), "
            "and no running `driftline run` answers for it. On the Kafka deployment query the "
            "ClickHouse server the sink writes: --clickhouse URL (or DRIFTLINE_CLICKHOUSE)."
        )
    return f"chdb://{location.resolve()}"


def open_store(data: Path, clickhouse: str | None) -> Any:
    """A client for reading. An embedded store is brought to the current schema; a server is
    left to the sink, which owns its schema (a query never writes DDL to production)."""
    import store

    dsn = store_dsn(data, clickhouse)
    try:
        client = store.connect(dsn)
    except Exception as error:  # a server that is down, wrong credentials, a chDB refusal
        raise Unreachable(f"cannot open the store {_safe(dsn)}: {_first_line(error)}") from None
    if not dsn.startswith("chdb://"):
        return client
    try:
        store.migrate(client)
    except Exception as error:
        client.close()
        raise Unreachable(f"cannot use the store {_safe(dsn)}: {_first_line(error)}") from None
    return client


def _safe(dsn: str) -> str:
    """A DSN without its password, for messages."""
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    return dsn.replace(f":{parts.password}@", ":***@", 1)


def _first_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]


_GONE = object()  # run.json named a process that does not answer: read the store instead


def call_api(info: dict[str, Any], data: Path, method: str, path: str, body: Any = None) -> Any:
    """One request to the running pipeline's admin API, with the admin token.

    Stdlib HTTP on purpose: it imports in a few milliseconds, and one call is all the CLI
    makes. Returns ``_GONE`` when nothing listens where run.json says (a process that reused
    a dead pipeline's pid), so the caller falls back to the store.
    """
    import urllib.error
    import urllib.request

    from driftline import admin_auth

    try:
        token = admin_auth.read(data)
    except PermissionError:
        raise Unreachable(
            f"cannot read {admin_auth.token_path(data)}: the pipeline belongs to another user"
        ) from None
    if token is None:
        raise Unreachable(f"no admin token at {admin_auth.token_path(data)}")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    payload = None
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    base = str(info.get("admin", ""))
    if not base.startswith("http://"):
        raise Unreachable(f"{datadir.run_file(data)} names no admin address")
    request = urllib.request.Request(  # noqa: S310 - the scheme is checked just above
        f"{base}{path}", data=payload, headers=headers, method=method
    )
    try:
        # a query answers in well under a second; an operation may wait on MDM rate limits
        timeout = 60 if method == "GET" else 600
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        message = _error_of(error)
        if error.code == 404:
            raise NotFound(message) from None
        if error.code == 400:
            raise ValueError(message) from None
        raise Unreachable(
            f"the pipeline at {info['admin']} answered {error.code}: {message}"
        ) from None
    except urllib.error.URLError as error:
        if isinstance(error.reason, ConnectionRefusedError):
            return _GONE
        raise Unreachable(
            f"the pipeline at {info['admin']} did not answer: {error.reason}"
        ) from None
    except TimeoutError:
        raise Unreachable(f"the pipeline at {info['admin']} did not answer in time") from None


def _error_of(error: Any) -> str:
    try:
        return str(json.loads(error.read())["error"])
    except (ValueError, KeyError, TypeError):
        return str(error.reason)


# operations that store what they learn (the others only read)
WRITING_OPERATIONS = frozenset({"actions-run", "mdm-import", "mdm-pull", "policy-push"})


def reported_services(args: argparse.Namespace, tenant: str) -> tuple[list[str] | None, str | None]:
    """The service.names a tenant's endpoints reported, or None and why they could not be read.

    Read where `query` reads: the running `driftline run`, else the store itself. No store yet
    is said as such, never taken for "nothing reported".
    """
    data = datadir.data_of(args.data)
    clickhouse = clickhouse_of(args)
    try:
        if clickhouse is None:
            info = datadir.running(data)
            if info is not None:
                answer = call_api(
                    info, data, "GET", f"/api/services?{urlencode({'tenant': tenant})}"
                )
                if answer is not _GONE:
                    return list(answer), None
            path = datadir.store_path(data)
            if not path.exists():
                return None, f"no store yet at {path}: nothing has been received"
        from store import queries

        client = open_store(data, clickhouse)
        try:
            return queries.service_names(client, tenant), None
        finally:
            client.close()
    except Exception as error:  # any failure to look is reported as such, not as "unknown"
        return None, f"the store could not be read: {str(error).splitlines()[0][:200]}"


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

    data = datadir.data_of(args.data)
    clickhouse = clickhouse_of(args)
    datadir.require(data)  # integrations and policies live there, whichever store is used
    if clickhouse is None:
        info = datadir.running(data)
        if info is not None:
            answer = call_api(info, data, "POST", f"/api/operations/{name}", params)
            if answer is not _GONE:
                return answer
    dsn = store_dsn(data, clickhouse, create=name in WRITING_OPERATIONS)
    settings = settings_of(args)
    from driftline import actions_runner

    with terminal_progress() as progress:
        return asyncio.run(
            actions_runner.run_local(dsn, data, settings.integrations_file, name, params, progress)
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
