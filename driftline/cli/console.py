"""`driftline console`, `sql`, `query` and `report`: the console's sign-in links, and the store
read by a person (read-only, one tenant), on the embedded store or a ClickHouse server alike."""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from driftline.cli.common import add_setting_flags, print_table, settings_of

_WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]")  # noqa: S104 -- replaced, never listened on


def _running(data: Path) -> str | None:
    """The admin address of a live `driftline run` or `driftline console` over DATA, if any."""
    from driftline import console, datadir

    pipeline = datadir.running(data)
    if pipeline is not None:
        return str(pipeline["admin"])
    path = console.run_file(data)
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    if not datadir.pid_alive(info.get("pid")):
        return None
    base: str = info["admin"]
    for wildcard in _WILDCARD_HOSTS:
        base = base.replace(f"//{wildcard}:", "//127.0.0.1:")
    return base


def _call(data: Path, base: str, path: str, body: dict[str, Any]) -> Any:
    """POST JSON to the running process's admin API with the admin token."""
    import httpx

    from driftline import admin_auth

    token = admin_auth.read(data)
    if token is None:
        raise ValueError(
            f"no admin token at {admin_auth.token_path(data)}: start `driftline run --data {data}`"
        )
    response = httpx.post(
        f"{base}{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=120,
    )
    if response.status_code in (400, 401, 403, 415):
        raise ValueError(response.json().get("error", response.text))
    response.raise_for_status()
    return response.json()


def _local(
    args: argparse.Namespace, path: str, body: dict[str, Any], work: Callable[..., Any]
) -> Any:
    """Through the running process (it holds the embedded store), else on the store itself:
    ``work(client, connect)`` with a client of ``--clickhouse`` or of DATA's embedded store."""
    settings = settings_of(args)
    base = None if args.clickhouse else _running(settings.data)
    if base is not None:
        return _call(settings.data, base, path, body)
    import store
    from driftline.datadir import store_path

    dsn = args.clickhouse or f"chdb://{store_path(settings.data).resolve()}"
    if not args.clickhouse and not store_path(settings.data).exists():
        raise ValueError(f"no store under {settings.data}: nothing has run there yet")
    client = store.connect(dsn)
    try:
        if not args.clickhouse:  # a server is migrated by its sink; a reader may not write DDL
            store.migrate(client)
        from store import console as queries

        if body.get("tenant") and body["tenant"] not in queries.known_tenants(client):
            raise ValueError(
                f"unknown tenant {body['tenant']!r}: no endpoints, flags or rejections"
            )
        return work(client, lambda: store.connect(dsn))
    finally:
        client.close()


def _params(pairs: list[str]) -> dict[str, str]:
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--param takes key=value, not {pair!r}")
        params[key] = value
    return params


def _print_rows(columns: list[str], rows: list[Any], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps([dict(zip(columns, r, strict=True)) for r in rows], default=str, indent=2))
    elif fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in r] for r in rows])
        sys.stdout.write(out.getvalue())
    else:
        print_table([dict(zip(columns, r, strict=True)) for r in rows], columns)


def _cmd_url(args: argparse.Namespace) -> int:
    settings = settings_of(args)
    base = _running(settings.data)
    if base is None:
        raise ValueError(
            f"no running `driftline run` or `driftline console` under {settings.data}: "
            "sign-in links live in the running process"
        )
    answer = _call(settings.data, base, "/api/console/sign-in-links", {"tenant": args.tenant})
    minutes = round(answer["expires_in_s"] / 60)
    print(f"one-time sign-in link for {answer['scope']}, valid {minutes} min:", file=sys.stderr)
    print(answer["url"])
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    import asyncio

    from driftline import console

    if not args.clickhouse:
        raise ValueError(
            "`driftline run` already serves the console (driftline console url); "
            "for the Kafka deployment give --clickhouse URL"
        )
    settings = settings_of(args)
    asyncio.run(console.serve(args.clickhouse, settings.data, settings.host, args.port))
    return 0


def _cmd_sql(args: argparse.Namespace) -> int:
    from store import readonly

    params = _params(args.param)
    body = {"sql": args.sql, "tenant": args.tenant, "params": params}

    def work(_: Any, connect: Callable[[], Any]) -> dict[str, Any]:
        columns, rows = readonly.run(connect, args.sql, [args.tenant], params)
        return {"columns": columns, "rows": rows}

    answer = _local(args, "/api/console/sql", body, work)
    _print_rows(answer["columns"], answer["rows"], args.format)
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from driftline.console import reports

    if args.list or not args.name:
        print("\n".join(reports.saved_names()))
        return 0
    params = _params(args.param)
    body = {"name": args.name, "tenant": args.tenant, "params": params}

    def work(_: Any, connect: Callable[[], Any]) -> dict[str, Any]:
        columns, rows = reports.run_saved(connect, args.name, args.tenant, params)
        return {"columns": columns, "rows": rows}

    reports.saved_sql(args.name)  # an unknown name fails before anything is opened
    answer = _local(args, "/api/console/query", body, work)
    _print_rows(answer["columns"], answer["rows"], args.format)
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from driftline.console import reports

    report = _local(
        args,
        "/api/console/report",
        {"tenant": args.tenant},
        lambda client, _: reports.build(client, args.tenant),
    )
    sys.stdout.write(reports.render(report, args.format).rstrip("\n") + "\n")
    return 0


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clickhouse", default=None, help="DSN of a ClickHouse server")
    add_setting_flags(parser, "--data")


def add_commands(commands: Any) -> None:
    console = commands.add_parser(
        "console",
        help="the web console: sign-in links (url), or serve it from a ClickHouse server",
        description="`driftline run` serves the console at http://127.0.0.1:8888/console/. "
        "`driftline console url` prints a one-time sign-in link; `driftline console "
        "--clickhouse URL` serves the same pages from a ClickHouse server (Kafka deployment).",
    )
    console.add_argument("--clickhouse", default=None, help="serve from this ClickHouse server")
    console.add_argument("--port", type=int, default=8889, help="with --clickhouse (8889)")
    add_setting_flags(console, "--data", "--host")
    console.set_defaults(func=_cmd_serve)
    actions = console.add_subparsers(dest="console_command", required=False, metavar="ACTION")
    url = actions.add_parser("url", help="print a one-time sign-in link (valid 5 minutes)")
    url.add_argument(
        "--tenant", default=None, help="a viewer of this tenant (default: administrator)"
    )
    add_setting_flags(url, "--data")
    url.set_defaults(func=_cmd_url)

    sql = commands.add_parser("sql", help="run your own SELECT over one tenant's rows (read-only)")
    sql.add_argument("sql", help='e.g. "SELECT kind, count() FROM drift_current GROUP BY kind"')
    sql.add_argument("--tenant", required=True)
    sql.add_argument("--param", action="append", default=[], help="key=value for {key:Type}")
    sql.add_argument("--format", choices=["table", "csv", "json"], default="table")
    _store_flags(sql)
    sql.set_defaults(func=_cmd_sql)

    query = commands.add_parser("query", help="run a saved query (store/saved/NAME.sql)")
    query.add_argument("name", nargs="?", help="e.g. drift_by_team; --list shows them all")
    query.add_argument("--list", action="store_true", help="list the saved queries")
    query.add_argument("--tenant", default=None)
    query.add_argument("--param", action="append", default=[], help="key=value, e.g. days=30")
    query.add_argument("--format", choices=["table", "csv", "json"], default="table")
    _store_flags(query)
    query.set_defaults(func=_cmd_query)

    report = commands.add_parser(
        "report", help="a tenant's fleet summary: compliance, versions, drift by team, MTTR"
    )
    report.add_argument("--tenant", required=True)
    report.add_argument("--format", choices=["md", "csv", "json"], default="md")
    _store_flags(report)
    report.set_defaults(func=_cmd_report)
