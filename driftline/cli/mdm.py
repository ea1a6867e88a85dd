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


def _run_checks(integrations: list[Any]) -> bool:
    """`mdm test` for each integration; prints every step; True when all passed."""
    import asyncio

    from actions.clients import check_integration

    async def run() -> list[Any]:
        return [check for i in integrations for check in await check_integration(i)]

    ok = True
    for check in asyncio.run(run()):
        mark = "ok" if check.ok else "FAILED"
        stream = sys.stdout if check.ok else sys.stderr
        print(f"{check.vendor.value} {check.step}: {mark}: {check.detail}", file=stream)
        ok = ok and check.ok
    return ok


def _cmd_mdm_connect(args: argparse.Namespace) -> int:
    from actions.integrations import validate
    from actions.mdm import Integration
    from schemas.identity import check_tenant_id
    from schemas.remediation import Vendor

    check_tenant_id(args.tenant)
    store = _integrations(args)
    integration = Integration(
        tenant_id=args.tenant,
        vendor=Vendor(args.vendor),
        base_url=args.base_url.rstrip("/"),
        token_url=args.token_url,
        force_sync=args.force_sync,
        profile_id=args.profile_id,
        profile_identifier=args.profile_identifier,
        blueprint_id=args.blueprint_id,
    )
    validate(integration, allow_http_loopback=args.allow_http_loopback)
    existing = store.get(args.tenant, integration.vendor)
    if existing is not None and existing.current is not None:
        candidate = integration.model_copy(
            update={
                "current": existing.current,
                "previous": existing.previous,
                "grace_until": existing.grace_until,
            }
        )
        if not args.no_test and not _run_checks([candidate]):
            print("error: not saved: the MDM refused the new settings (--no-test to save anyway)",
                  file=sys.stderr)  # fmt: skip
            return 1
    others = [
        i.vendor.value for i in store.for_tenant(args.tenant) if i.vendor != integration.vendor
    ]
    integration = store.configure(integration)
    if others:
        print(
            f"warning: tenant {args.tenant} now has {len(others) + 1} MDMs "
            f"({', '.join([*others, integration.vendor.value])}). A Mac enrolled in several is "
            "acted on through the one it last checked in with; see `driftline mdm list`.",
            file=sys.stderr,
        )
    state = "with a credential" if integration.current else "push-only until `credentials set`"
    print(f"{integration.vendor.value} integration of tenant {integration.tenant_id}: {state}")
    return 0


def _cmd_mdm_credentials_set(args: argparse.Namespace) -> int:
    """The secret comes from a file or stdin, never argv (argv is visible to every user). It is
    tried first (a token and one read) and stored only if the MDM accepts it."""
    from datetime import UTC, datetime

    from pydantic import SecretStr

    from actions.integrations import IntegrationError
    from actions.mdm import Credential
    from schemas.remediation import Vendor

    if args.secret_file is not None:
        secret = Path(args.secret_file).read_text(encoding="utf-8")
    else:
        if sys.stdin.isatty():
            print("secret (then Enter, Ctrl-D): ", end="", file=sys.stderr, flush=True)
        secret = sys.stdin.read()
    store = _integrations(args)
    vendor = Vendor(args.vendor)
    now = datetime.now(UTC)
    existing = store.get(args.tenant, vendor)
    if vendor in (Vendor.JAMF, Vendor.INTUNE) and not args.client_id:
        raise IntegrationError(f"{vendor.value} credentials need a client id (--client-id)")
    if existing is not None and secret.strip() and not args.no_test:
        candidate = existing.model_copy(
            update={
                "current": Credential(
                    client_id=args.client_id, secret=SecretStr(secret.strip()), created_at=now
                ),
                "previous": None,
                "grace_until": None,
            }
        )
        if not _run_checks([candidate]):
            raise IntegrationError(
                f"credential not stored: {args.vendor} refused it (the current one, if any, is "
                "unchanged; --no-test to store it anyway)"
            )
    updated = store.set_credential(
        args.tenant,
        vendor,
        secret,
        now,
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


def _cmd_mdm_test(args: argparse.Namespace) -> int:
    from schemas.remediation import Vendor

    store = _integrations(args)
    found = store.for_tenant(args.tenant)
    if args.vendor:
        found = [i for i in found if i.vendor == Vendor(args.vendor)]
    if not found:
        what = f"{args.vendor} integration" if args.vendor else "MDM integration"
        raise ValueError(f"tenant {args.tenant!r} has no {what} (driftline mdm connect)")
    return 0 if _run_checks(found) else 1


def _describe(integration: Any, now: Any) -> dict[str, Any]:
    """An integration as people read it: never the secret."""
    current, previous = integration.current, integration.previous
    in_grace = previous is not None and integration.grace_until and now < integration.grace_until
    return {
        "tenant_id": integration.tenant_id,
        "vendor": integration.vendor.value,
        "base_url": integration.base_url,
        "token_url": integration.token_url,
        "force_sync": integration.force_sync,
        "profile_id": integration.profile_id,
        "profile_identifier": integration.payload_identifier,
        "blueprint_id": integration.blueprint_id,
        "credential": "none (push-only)" if current is None else "set",
        "client_id": current.client_id if current else None,
        "credential_set_at": current.created_at.isoformat() if current else None,
        "previous_until": integration.grace_until.isoformat() if in_grace else None,
    }


def _cmd_mdm_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    store = _integrations(args)
    found = store.for_tenant(args.tenant) if args.tenant else store.all()
    if args.tenant and not found:
        raise ValueError(f"tenant {args.tenant!r} has no MDM integration (driftline mdm connect)")
    rows = [_describe(i, datetime.now(UTC)) for i in found]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    columns = ["tenant_id", "vendor", "base_url", "force_sync", "profile_id", "credential"]
    print_table(rows, [*columns, "profile_identifier"])
    return 0


def _cmd_mdm_show(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from actions.clients import allowed_routes
    from schemas.remediation import Vendor

    integration = _integrations(args).get(args.tenant, Vendor(args.vendor))
    if integration is None:
        raise ValueError(f"tenant {args.tenant!r} has no {args.vendor} integration")
    shown = _describe(integration, datetime.now(UTC))
    shown["allowed_requests"] = allowed_routes(integration)
    if args.json:
        print(json.dumps(shown, indent=2))
        return 0
    for key, value in shown.items():
        if key == "allowed_requests":
            print("allowed_requests (everything Driftline may call):")
            for route in value:
                print(f"    {route}")
        else:
            print(f"{key}: {'' if value is None else value}")
    return 0


def _cmd_mdm_disconnect(args: argparse.Namespace) -> int:
    from schemas.remediation import Vendor

    removed = _integrations(args).disconnect(args.tenant, Vendor(args.vendor))
    print(f"{removed.vendor.value} integration of tenant {removed.tenant_id} removed")
    if removed.current is not None:
        print(
            "revoke its credential in the MDM as well: removing it here does not",
            file=sys.stderr,
        )
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
    connect.add_argument(
        "--profile-id",
        default=None,
        help="the Claude Code profile's MDM id (Jamf: numeric; Intune: deviceConfiguration id; "
        "Iru: library item id)",
    )
    connect.add_argument(
        "--profile-identifier",
        default=None,
        help="adopt an existing profile: its PayloadIdentifier (default "
        "com.driftline.<tenant>.claudecode)",
    )
    connect.add_argument("--blueprint-id", default=None, help="Iru: blueprint of the profile")
    connect.add_argument(
        "--allow-http-loopback",
        action="store_true",
        help="accept plain http to a loopback address (emulators); https is required otherwise",
    )
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
    for sub in (connect, cred_set):
        sub.add_argument(
            "--no-test",
            action="store_true",
            help="save without first fetching a token and making one read call",
        )
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
    listing = mdm_commands.add_parser("list", help="the MDM integrations (never secrets)")
    listing.add_argument("--tenant", default=None)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(func=_cmd_mdm_list)
    show = mdm_commands.add_parser("show", help="one integration, with its allowed requests")
    disconnect = mdm_commands.add_parser("disconnect", help="remove an integration")
    test = mdm_commands.add_parser(
        "test", help="fetch a token and make one read call; say exactly what failed"
    )
    for sub in (show, disconnect, test):
        sub.add_argument("--tenant", required=True)
    for sub in (show, disconnect):
        sub.add_argument("--vendor", required=True, choices=vendors)
    test.add_argument("--vendor", default=None, choices=vendors)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=_cmd_mdm_show)
    disconnect.set_defaults(func=_cmd_mdm_disconnect)
    test.set_defaults(func=_cmd_mdm_test)
    for sub in (connect, cred_set, cred_status, mdm_import, pull, listing, show, disconnect, test):
        add_setting_flags(sub, "--data")
    for sub in (mdm_import, pull):
        sub.add_argument("--clickhouse", default=None, help="DSN of a ClickHouse server")
