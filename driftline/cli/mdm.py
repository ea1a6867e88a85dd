"""`driftline mdm`: MDM integrations, credentials and compliance reports."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from driftline import datadir
from driftline.cli.common import add_setting_flags, operate, print_table, settings_of, tenant_arg
from schemas.durations import parse_duration


def _integrations(args: argparse.Namespace) -> Any:
    from actions.integrations import IntegrationStore

    return IntegrationStore(settings_of(args).integrations_file)


def _cmd_mdm_connect(args: argparse.Namespace) -> int:
    from actions.mdm import Integration
    from schemas.identity import check_tenant_id
    from schemas.remediation import Vendor

    check_tenant_id(args.tenant)
    integration = _integrations(args).configure(
        Integration(
            tenant_id=args.tenant,
            vendor=Vendor(args.vendor),
            base_url=args.base_url.rstrip("/"),
            token_url=args.token_url,
            force_sync=args.force_sync,
            profile_id=args.profile_id,
            blueprint_id=args.blueprint_id,
        )
    )
    state = "with a credential" if integration.current else "push-only until `credentials set`"
    print(f"{integration.vendor.value} integration of tenant {integration.tenant_id}: {state}")
    return 0


def _cmd_mdm_credentials_set(args: argparse.Namespace) -> int:
    """The secret comes from a file or stdin, never argv (argv is visible to every user)."""
    from datetime import UTC, datetime

    from schemas.remediation import Vendor

    if args.secret_file is not None:
        secret = Path(args.secret_file).read_text(encoding="utf-8")
    else:
        if sys.stdin.isatty():
            print("secret (then Enter, Ctrl-D): ", end="", file=sys.stderr, flush=True)
        secret = sys.stdin.read()
    updated = _integrations(args).set_credential(
        args.tenant,
        Vendor(args.vendor),
        secret,
        datetime.now(UTC),
        client_id=args.client_id,
        grace=parse_duration(args.grace),
    )
    note = (
        f"; the previous one works until {updated.grace_until:%Y-%m-%d %H:%M}Z"
        if (updated.previous and updated.grace_until)
        else ""
    )
    print(f"credential set for {args.vendor} of tenant {args.tenant}{note}")
    return 0


def _cmd_mdm_credentials_status(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    datadir.require(datadir.data_of(args.data))
    rows = [
        {
            "tenant_id": r.tenant_id,
            "vendor": r.vendor.value,
            "client_id": r.client_id,
            "set_at": r.set_at,
            "rotation_due": r.due_at,
            "state": r.state,
            "previous_until": r.previous_until,
        }
        for r in _integrations(args).status(datetime.now(UTC))
    ]
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
    elif not rows:
        print("no MDM integrations yet (driftline mdm connect)")
    else:
        print_table(
            rows,
            [
                "tenant_id",
                "vendor",
                "client_id",
                "state",
                "set_at",
                "rotation_due",
                "previous_until",
            ],
        )
    return 0


def _cmd_mdm_import(args: argparse.Namespace) -> int:
    text = Path(args.file).read_text(encoding="utf-8-sig")
    result = operate(
        args, "mdm-import", {"tenant": args.tenant, "vendor": args.vendor, "csv": text}
    )
    print(f"imported {result['imported']} {args.vendor} compliance records for {args.tenant}")
    return 0


def _cmd_mdm_pull(args: argparse.Namespace) -> int:
    if not any(i.current for i in _integrations(args).for_tenant(args.tenant)):
        # decided here, without opening the store: there is nothing to pull from
        print(
            f"nothing pulled: tenant {args.tenant} has no MDM integration with a credential "
            "(driftline mdm connect, then mdm credentials set; push-only ones are skipped)"
        )
        return 0
    result = operate(args, "mdm-pull", {"tenant": args.tenant})
    for vendor, count in result["imported"].items():
        print(f"{vendor}: {count} compliance records imported")
    for vendor, why in result["errors"].items():
        print(f"{vendor}: not pulled: {why}", file=sys.stderr)
    return 1 if result["errors"] else 0


def add_commands(commands: Any) -> None:
    mdm = commands.add_parser("mdm", help="MDM integrations, credentials and compliance reports")
    mdm_commands = mdm.add_subparsers(dest="mdm_command", required=True, metavar="ACTION")
    vendors = ["jamf", "intune", "iru"]
    connect = mdm_commands.add_parser(
        "connect", help="add or change a tenant's MDM integration (credentials kept)"
    )
    connect.add_argument("--tenant", required=True, type=tenant_arg)
    connect.add_argument("--vendor", required=True, choices=vendors)
    connect.add_argument("--base-url", required=True, help="the MDM's API root")
    connect.add_argument("--token-url", default=None, help="Intune: the Entra token endpoint")
    connect.add_argument(
        "--force-sync", action="store_true", help="the customer granted the force-sync privilege"
    )
    connect.add_argument("--profile-id", default=None, help="the Claude Code profile's MDM id")
    connect.add_argument("--blueprint-id", default=None, help="Iru: blueprint of the profile")
    connect.set_defaults(func=_cmd_mdm_connect)
    credentials = mdm_commands.add_parser("credentials", help="set and check MDM credentials")
    credential_commands = credentials.add_subparsers(
        dest="credentials_command", required=True, metavar="ACTION"
    )
    cred_set = credential_commands.add_parser(
        "set", help="install a credential (secret from --secret-file or stdin, never argv)"
    )
    cred_set.add_argument("--tenant", required=True, type=tenant_arg)
    cred_set.add_argument("--vendor", required=True, choices=vendors)
    cred_set.add_argument("--client-id", default=None, help="Jamf/Intune OAuth client id")
    cred_set.add_argument("--secret-file", default=None, help="read the secret from this file")
    cred_set.add_argument("--grace", default="7d", help="how long the replaced one still works")
    cred_set.set_defaults(func=_cmd_mdm_credentials_set)
    cred_status = credential_commands.add_parser(
        "status", help="credentials and rotation due dates (90 days, warning 14 days ahead)"
    )
    cred_status.add_argument("--json", action="store_true")
    cred_status.set_defaults(func=_cmd_mdm_credentials_status)
    mdm_import = mdm_commands.add_parser("import", help="import a compliance CSV export")
    mdm_import.add_argument("file", type=Path)
    mdm_import.add_argument("--vendor", required=True, choices=vendors)
    mdm_import.add_argument("--tenant", required=True, type=tenant_arg)
    mdm_import.set_defaults(func=_cmd_mdm_import)
    pull = mdm_commands.add_parser("pull", help="import compliance through each MDM's API")
    pull.add_argument("--tenant", required=True, type=tenant_arg)
    pull.set_defaults(func=_cmd_mdm_pull)
    for sub in (connect, cred_set, cred_status, mdm_import, pull):
        add_setting_flags(sub, "--data")
    for sub in (mdm_import, pull):
        sub.add_argument("--clickhouse", default=None, help="DSN of a ClickHouse server")
