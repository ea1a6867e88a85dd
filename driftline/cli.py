"""`driftline …`: the composition root. Parses flags, builds settings, calls into the stages."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from driftline.settings import Settings
from schemas.durations import parse_duration

# flag → Settings field, for the settings a flag can override (None keeps env/default)
_SETTING_FLAGS: dict[str, tuple[str, type, str]] = {
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


def _add_setting_flags(parser: argparse.ArgumentParser, *flags: str) -> None:
    for flag in flags:
        _, kind, help_text = _SETTING_FLAGS[flag]
        parser.add_argument(flag, type=kind, default=None, help=help_text)


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for flag, (field, _, _) in _SETTING_FLAGS.items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"), None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


def _cmd_ingest(args: argparse.Namespace) -> int:
    from driftline import ingest_runner
    from ingest.tokens import TokenStore

    settings = _settings(args)
    if not TokenStore(settings.token_registry).records():
        logging.warning(
            "no ingest tokens yet in %s: create one with `driftline tokens create --tenant NAME`",
            settings.token_registry,
        )
    ingest_runner.run(settings)
    return 0


def _token_store(args: argparse.Namespace) -> Any:
    from ingest.tokens import TokenStore

    return TokenStore(_settings(args).token_registry)


def _cmd_tokens_create(args: argparse.Namespace) -> int:
    token_id, token = _token_store(args).create(args.tenant)
    print(f"created token {token_id} for tenant {args.tenant}; it is shown once:", file=sys.stderr)
    print(token)
    return 0


def _cmd_tokens_rotate(args: argparse.Namespace) -> int:
    from ingest.tokens import format_time

    settings = _settings(args)
    store = _token_store(args)
    grace = parse_duration(args.grace)
    token_id, token, rotation = store.rotate(
        args.tenant, grace, parse_duration(settings.token_memory)
    )
    # the processors learn of the rotation through the tenant's policy, like any policy change
    _publish_policy(
        settings, _policies(settings).record_rotation(args.tenant, _utc(rotation.rotated_at))
    )
    print(
        f"rotated tenant {args.tenant}: new token {token_id}; previous tokens work until "
        f"{format_time(rotation.grace_ends)}. The new token is shown once:",
        file=sys.stderr,
    )
    print(token)
    return 0


def _cmd_tokens_revoke(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        record = _token_store(args).revoke(args.token_id, parse_duration(settings.token_memory))
    except KeyError as error:
        print(f"error: {error.args[0]}", file=sys.stderr)
        return 1
    print(f"revoked token {record.token_id} of tenant {record.tenant_id}")
    return 0


def _cmd_tokens_list(args: argparse.Namespace) -> int:
    import time

    from ingest.tokens import format_time

    now = time.time()
    rows = [("TOKEN ID", "TENANT", "STATE", "CREATED", "GRACE ENDS", "REVOKED")]
    for r in _token_store(args).records(args.tenant):
        state = r.state(now)
        rows.append(
            (
                r.token_id,
                r.tenant_id,
                state.value if state else "forgotten",
                format_time(r.created_at),
                format_time(r.expires_at),
                format_time(r.revoked_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _policies(settings: Settings) -> Any:
    from driftline.policies import PolicyDirectory

    return PolicyDirectory(settings.data / "policies")


def _utc(timestamp: float) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC)


def _publish_policy(settings: Settings, policy: Any) -> None:
    """Embedded: the data directory is the source. Kafka: also the compacted policy topic."""
    if settings.bus == "kafka":
        import asyncio

        from driftline.policies import publish

        asyncio.run(publish(settings.bootstrap, policy))


def _cmd_policy_set(args: argparse.Namespace) -> int:
    from schemas.policy import PolicyError, TenantPolicy

    settings = _settings(args)
    try:
        policy = TenantPolicy.from_file(args.file)
    except PolicyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from ingest.tokens import TokenStore

    rotations = TokenStore(settings.token_registry).rotations(policy.tenant)
    if rotations and policy.token_rotated_at is None:
        policy = policy.model_copy(update={"token_rotated_at": _utc(rotations[-1].rotated_at)})
    stored = _policies(settings).put(policy)
    _publish_policy(settings, stored)
    print(f"policy of tenant {stored.tenant} is now version {stored.version}")
    return 0


def _cmd_policy_show(args: argparse.Namespace) -> int:
    from schemas.policy import TenantPolicy

    policy = _policies(_settings(args)).get(args.tenant)
    if policy is None:
        print(
            f"no policy published for tenant {args.tenant}; the default applies:", file=sys.stderr
        )
        policy = TenantPolicy.default(args.tenant)
    print(json.dumps(json.loads(policy.to_json()), indent=2))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    import uvloop

    from driftline import embedded

    uvloop.run(embedded.run(_settings(args)))
    return 0


def _query(args: argparse.Namespace, path: str, params: dict[str, str | None]) -> Any:
    """Through the running `driftline run` if there is one (it holds the embedded store)."""
    from driftline import embedded, store

    if not args.all_tenants and not args.tenant:
        raise ValueError("name a tenant with --tenant (or --all-tenants, for administrators)")
    tenant = None if args.all_tenants else args.tenant
    settings = _settings(args)
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
        from driftline import queries

        if path == "drift":
            return queries.drift(client, tenant, params["kind"], params["team"], params["service"])
        return queries.endpoint_history(client, tenant, str(params["id"]))
    finally:
        client.close()


def _print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    table = [columns] + [
        ["" if row.get(c) is None else str(row.get(c)) for c in columns] for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def _cmd_drift(args: argparse.Namespace) -> int:
    rows = _query(args, "drift", {"kind": args.kind, "team": args.team, "service": args.service})
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
    else:
        columns = [
            "tenant_id",
            "endpoint_id",
            "kind",
            "team_id",
            "service_name",
            "app_version",
            "detail",
            "first_seen",
        ]
        _print_table(rows, columns)
    return 0


def _cmd_endpoint(args: argparse.Namespace) -> int:
    history = _query(args, "endpoint", {"id": args.endpoint_id})
    if args.json:
        print(json.dumps(history, default=str, indent=2))
        return 0
    print(f"endpoint {history['endpoint_id']}")
    print("\nstates:")
    _print_table(
        history["states"],
        ["first_seen", "last_seen", "service_name", "app_version", "team_id", "serial_number"],
    )
    print("\nflags:")
    _print_table(history["flags"], ["last_seen", "kind", "state", "detail", "policy_version"])
    print("\nrejected requests:")
    _print_table(history["rejections"], ["observed_at", "reason", "token_id", "source"])
    return 0


def _cmd_processors_worker(args: argparse.Namespace) -> int:
    from driftline.processors_runner import run_worker

    settings = _settings(args)
    run_worker(
        settings.bootstrap,
        settings.data / "processors",
        partitions=args.partitions,
        app_id=args.app_id,
    )
    return 0


def _cmd_sink(args: argparse.Namespace) -> int:
    from driftline.embedded import store_path
    from driftline.sink import SinkOptions, serve

    settings = _settings(args)
    serve(
        settings.bootstrap,
        args.clickhouse or f"chdb://{store_path(settings.data).resolve()}",
        SinkOptions(group_id=args.group),
    )
    return 0


def _cmd_kafka(args: argparse.Namespace) -> int:
    from driftline import kafka_local

    argv = [args.kafka_command]
    if args.kafka_command == "up" and args.port is not None:
        argv += ["--port", str(args.port)]
    if args.kafka_data is not None:
        argv += ["--data", str(args.kafka_data)]
    return kafka_local.main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftline",
        description="Keep AI coding agents on managed laptops inside policy.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ingest = commands.add_parser(
        "ingest",
        help="run the OTLP receiver (gRPC :4317, HTTP :4318, admin :8888)",
        description="Authenticate OTLP exports by tenant token and publish one endpoint "
        "snapshot per resource to the bus.",
    )
    _add_setting_flags(ingest, *_SETTING_FLAGS)
    ingest.set_defaults(func=_cmd_ingest)

    tokens = commands.add_parser("tokens", help="issue, rotate, revoke and list ingest tokens")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create = token_commands.add_parser(
        "create", help="issue a token for a tenant (printed once, as the last line of stdout)"
    )
    create.add_argument("--tenant", required=True)
    create.set_defaults(func=_cmd_tokens_create)
    rotate = token_commands.add_parser(
        "rotate", help="issue a new token; the tenant's old tokens keep working for --grace"
    )
    rotate.add_argument("--tenant", required=True)
    rotate.add_argument("--grace", default="24h", help="e.g. 10m, 12h (default 24h)")
    rotate.set_defaults(func=_cmd_tokens_rotate)
    revoke = token_commands.add_parser("revoke", help="stop accepting a token at once")
    revoke.add_argument("token_id", help="the token id shown by `tokens list`")
    revoke.set_defaults(func=_cmd_tokens_revoke)
    listing = token_commands.add_parser("list", help="list tokens and their states (never secrets)")
    listing.add_argument("--tenant", default=None)
    listing.set_defaults(func=_cmd_tokens_list)
    for sub in (create, rotate, revoke, listing):
        _add_setting_flags(sub, "--data", "--tokens")
    _add_setting_flags(rotate, "--bus", "--bootstrap")

    run = commands.add_parser(
        "run",
        help="the embedded pipeline: receiver + detectors + store in one process, no Kafka",
        description="Receive OTLP, detect drift and keep history in the embedded ClickHouse "
        "(chDB) under --data. State survives restarts.",
    )
    _add_setting_flags(
        run, *(f for f in _SETTING_FLAGS if f not in ("--bus", "--bootstrap", "--workers"))
    )
    run.set_defaults(func=_cmd_run)

    policy = commands.add_parser("policy", help="publish and show tenant policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    policy_set = policy_commands.add_parser(
        "set", help="publish a tenant policy file (YAML or JSON) as its next version"
    )
    policy_set.add_argument("file", type=Path)
    policy_set.set_defaults(func=_cmd_policy_set)
    policy_show = policy_commands.add_parser("show", help="print a tenant's current policy")
    policy_show.add_argument("--tenant", required=True)
    policy_show.set_defaults(func=_cmd_policy_show)
    for sub in (policy_set, policy_show):
        _add_setting_flags(sub, "--data", "--tokens", "--bus", "--bootstrap")

    drift = commands.add_parser("drift", help="list open drift (one tenant, filters optional)")
    endpoint = commands.add_parser("endpoint", help="one endpoint's versions, attributes, flags")
    endpoint.add_argument("endpoint_id", help="tenant/identity, e.g. acme/C02XYZ")
    for sub in (drift, endpoint):
        sub.add_argument("--tenant", default=None, help="the tenant to look at")
        sub.add_argument("--all-tenants", action="store_true", help="administrators: no scoping")
        sub.add_argument(
            "--clickhouse", default=None, help="DSN, e.g. https://user:pass@host:8443/db"
        )
        sub.add_argument("--json", action="store_true", help="JSON for machines")
        _add_setting_flags(sub, "--data")
    drift.add_argument("--kind", choices=["outdated_client", "missing_policy", "stale_token"])
    drift.add_argument("--team", default=None)
    drift.add_argument("--service", default=None)
    drift.set_defaults(func=_cmd_drift)
    endpoint.set_defaults(func=_cmd_endpoint)

    processors = commands.add_parser("processors", help="drift processors on Kafka (Faust workers)")
    processor_commands = processors.add_subparsers(
        dest="processors_command", required=True, metavar="ACTION"
    )
    worker = processor_commands.add_parser(
        "worker", help="run one worker; start several to share the partitions"
    )
    _add_setting_flags(worker, "--data", "--bootstrap")
    worker.add_argument("--partitions", type=int, default=12, help="must match the input topics")
    worker.add_argument("--app-id", default="driftline-processors")
    worker.set_defaults(func=_cmd_processors_worker)

    sink = commands.add_parser(
        "sink", help="write Kafka snapshots, auth events and flags to ClickHouse"
    )
    _add_setting_flags(sink, "--data", "--bootstrap")
    sink.add_argument(
        "--clickhouse",
        default=None,
        help="DSN (default chdb://DATA/clickhouse; a server in production)",
    )
    sink.add_argument("--group", default="driftline-sink", help="Kafka consumer group")
    sink.set_defaults(func=_cmd_sink)

    kafka = commands.add_parser("kafka", help="run a local single-node Kafka for development")
    kafka.add_argument("kafka_command", choices=["up", "down", "status"])
    kafka.add_argument("--port", type=int, default=None, help="default $KAFKA_PORT or 9092")
    kafka.add_argument("--kafka-data", type=Path, default=None, help="broker data directory")
    kafka.set_defaults(func=_cmd_kafka)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
