"""`driftline …`: the composition root. Parses flags, builds settings, calls into the stages."""

from __future__ import annotations

import argparse
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
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
