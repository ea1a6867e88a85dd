"""`driftline tokens`: issue, rotate, revoke and list ingest tokens."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from driftline import datadir
from driftline.cli.common import (
    add_setting_flags,
    data_flag,
    policies_of,
    publish_policy,
    settings_of,
    tenant_arg,
    utc,
)
from driftline.errors import NoData, NotFound
from schemas.durations import parse_duration


def _token_store(args: argparse.Namespace) -> Any:
    from ingest.tokens import TokenStore

    return TokenStore(settings_of(args).token_registry)


def _require_registry(path: Any) -> None:
    """Read commands find the registry or say it is not there; they never create one."""
    if not path.exists():
        datadir.require(path.parent)
        raise NoData(f"no token registry at {path.absolute()} (use --data or --tokens)")


def _cmd_tokens_create(args: argparse.Namespace) -> int:
    token_id, token = _token_store(args).create(args.tenant)
    print(f"created token {token_id} for tenant {args.tenant}; it is shown once:", file=sys.stderr)
    print(token)
    if not policies_of(settings_of(args)).get(args.tenant):
        import shlex

        from driftline.startup import program

        print(
            'next: send telemetry with it (README, "Send telemetry") and publish a policy: '
            f"{program()} policy set {shlex.quote(args.tenant + '.yaml')}{data_flag(args)}",
            file=sys.stderr,
        )
    return 0


def _cmd_tokens_rotate(args: argparse.Namespace) -> int:
    from ingest.tokens import format_time

    settings = settings_of(args)
    store = _token_store(args)
    grace = parse_duration(args.grace)
    token_id, token, rotation = store.rotate(
        args.tenant, grace, parse_duration(settings.token_memory)
    )
    # the processors learn of the rotation through the tenant's policy, like any policy change
    publish_policy(
        settings, policies_of(settings).record_rotation(args.tenant, utc(rotation.rotated_at))
    )
    print(
        f"rotated tenant {args.tenant}: new token {token_id}; previous tokens work until "
        f"{format_time(rotation.grace_ends)}. The new token is shown once:",
        file=sys.stderr,
    )
    print(token)
    return 0


def _cmd_tokens_revoke(args: argparse.Namespace) -> int:

    settings = settings_of(args)
    _require_registry(settings.token_registry)
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
    _require_registry(settings_of(args).token_registry)
    rows = [("TOKEN ID", "TENANT", "STATE", "CREATED", "GRACE ENDS", "REVOKED")]
    records = _token_store(args).records(args.tenant)
    if args.tenant is not None and not records:
        raise NotFound(f"no tokens for tenant {args.tenant!r}: an unknown tenant")
    for r in records:
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


def _cmd_tokens_usage(args: argparse.Namespace) -> int:
    import json
    import time

    from driftline.cli.common import operate

    records = _token_store(args).records(args.tenant)
    if not records:
        raise ValueError(f"tenant {args.tenant!r} has no ingest tokens (driftline tokens create)")
    from driftline.rotation import rotation_progress
    from ingest.tokens import format_time

    seen = operate(args, "token-usage", {"tenant": args.tenant})
    progress = rotation_progress(records, seen, time.time())
    retiring = [r.token_id for r in progress.retiring]
    still = [{**row, "grace_ends": format_time(row["grace_ends"])} for row in progress.still]
    if args.json:
        print(json.dumps({"retiring_tokens": retiring, "endpoints": still}, indent=2))
        return 0
    if not retiring:
        print(f"tenant {args.tenant}: no token is in a rotation's grace window")
        return 0
    print(
        f"tenant {args.tenant}: {len(still)} endpoints still on retiring token(s) "
        f"{', '.join(retiring)}; {progress.moved} moved to a current token"
    )
    from driftline.cli.common import print_table

    print_table(still, ["endpoint_id", "token_id", "last_seen", "grace_ends"])
    return 0


def add_commands(commands: Any) -> None:
    tokens = commands.add_parser("tokens", help="issue, rotate, revoke and list ingest tokens")
    token_commands = tokens.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    create = token_commands.add_parser(
        "create", help="issue a token for a tenant (printed once, as the last line of stdout)"
    )
    create.add_argument("--tenant", required=True, type=tenant_arg)
    create.set_defaults(func=_cmd_tokens_create)
    rotate = token_commands.add_parser(
        "rotate", help="issue a new token; the tenant's old tokens keep working for --grace"
    )
    rotate.add_argument("--tenant", required=True, type=tenant_arg)
    rotate.add_argument("--grace", default="24h", help="e.g. 10m, 12h (default 24h)")
    rotate.set_defaults(func=_cmd_tokens_rotate)
    revoke = token_commands.add_parser("revoke", help="stop accepting a token at once")
    revoke.add_argument("token_id", help="the token id shown by `tokens list`")
    revoke.set_defaults(func=_cmd_tokens_revoke)
    listing = token_commands.add_parser("list", help="list tokens and their states (never secrets)")
    listing.add_argument("--tenant", default=None, type=tenant_arg)
    listing.set_defaults(func=_cmd_tokens_list)
    usage = token_commands.add_parser(
        "usage",
        help="during a rotation's grace window: the endpoints still on the retiring token",
    )
    usage.add_argument("--tenant", required=True)
    usage.add_argument("--json", action="store_true")
    usage.add_argument("--clickhouse", default=None, help="DSN of a ClickHouse server")
    usage.set_defaults(func=_cmd_tokens_usage)
    for sub in (create, rotate, revoke, listing, usage):
        add_setting_flags(sub, "--data", "--tokens")
    add_setting_flags(rotate, "--bus", "--bootstrap")
