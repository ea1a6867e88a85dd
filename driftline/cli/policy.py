"""`driftline policy`: publish, show and push tenant policies."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from driftline import datadir
from driftline.cli.common import (
    add_setting_flags,
    data_flag,
    operate,
    policies_of,
    print_table,
    publish_policy,
    reported_services,
    settings_of,
    tenant_arg,
    utc,
)


def _cmd_policy_set(args: argparse.Namespace) -> int:
    from schemas.policy import PolicyError, TenantPolicy

    settings = settings_of(args)
    try:
        policy = TenantPolicy.from_file(args.file)
    except PolicyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if policy.tools:
        from driftline.policy_check import tool_warnings

        reported, why = reported_services(args, policy.tenant)
        warnings = tool_warnings(policy.tools, reported, why)
        for warning in warnings:
            print(f"{'error' if args.strict else 'warning'}: {warning}", file=sys.stderr)
        if warnings and args.strict:
            print("--strict: the policy was not published", file=sys.stderr)
            return 2
    from ingest.tokens import TokenStore

    rotations = TokenStore(settings.token_registry).rotations(policy.tenant)
    if rotations and policy.token_rotated_at is None:
        policy = policy.model_copy(update={"token_rotated_at": utc(rotations[-1].rotated_at)})
    stored = policies_of(settings).put(policy)
    publish_policy(settings, stored)
    print(f"policy of tenant {stored.tenant} is now version {stored.version}")
    import shlex

    from driftline.startup import program

    ask = f"{program()} drift --tenant {shlex.quote(stored.tenant)}{data_flag(args)}"
    print(f"ask what drifted: {ask}", file=sys.stderr)
    return 0


def _cmd_policy_show(args: argparse.Namespace) -> int:
    from schemas.policy import TenantPolicy

    settings = settings_of(args)
    datadir.require(settings.data)
    policy = policies_of(settings).get(args.tenant)
    if policy is None:
        print(
            f"no policy published for tenant {args.tenant}; the default applies:", file=sys.stderr
        )
        policy = TenantPolicy.default(args.tenant)
    print(json.dumps(json.loads(policy.to_json()), indent=2))
    return 0


PUSH_FAILED, PUSH_PARTIAL = 1, 3


def _cmd_policy_push(args: argparse.Namespace) -> int:
    """rc 0: every profile pushed, unchanged or dry-run; 1: some push failed; 3: some MDM was
    left part-way (the steps that succeeded are in the detail), none failed outright."""
    result = operate(
        args,
        "policy-push",
        {
            "tenant": args.tenant,
            "live": args.live,
            "force_sync": args.force_sync,
            "allow_empty": args.allow_empty,
        },
    )
    entries = result["entries"]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for entry in entries:
            if entry["outcome"] in ("unchanged", "republish_required"):
                continue
            print(f"{entry['vendor']}: changes against the last pushed payload:")
            for line in entry["changes"] or ["(none)"]:
                print(f"    {line}")
        print_table(entries, ["vendor", "policy_version", "outcome", "detail", "payload_file"])
        for line in push_summary(entries, result["force_sync"], args.force_sync):
            print(line)
    outcomes = {e["outcome"] for e in entries}
    if "failed" in outcomes:
        return PUSH_FAILED
    return PUSH_PARTIAL if "partial" in outcomes else 0


def push_summary(
    entries: list[dict[str, Any]], synced: dict[str, int] | None, force_sync: bool
) -> list[str]:
    """What the push did, from its rows; a push or sync that sent nothing says so and why."""
    outcomes: dict[str, list[str]] = {}
    for entry in entries:
        outcomes.setdefault(entry["outcome"], []).append(entry["vendor"])
    lines = [f"{outcome}: {', '.join(vendors)}" for outcome, vendors in sorted(outcomes.items())]
    # a partial push left an MDM part-way: which steps succeeded matters more than a table cell
    lines += [f"{e['vendor']}: {e['detail']}" for e in entries if e["outcome"] == "partial"]
    if "pushed" not in outcomes and "partial" not in outcomes:
        why = {
            "unchanged": "the policy's payload is what the MDM already has",
            "dry_run": "dry run (--live to push)",
            "republish_required": "push-only integrations: upload the payload file by hand",
            "failed": "the MDM refused",
        }
        reasons = "; ".join(why.get(o, o) for o in sorted(outcomes))
        lines.append(f"nothing pushed: {reasons}")
    if force_sync:
        if synced is None:
            lines.append("force-sync: nothing sent, because no profile was updated by this push")
        elif not any(synced.values()):
            lines.append(
                "force-sync: nothing sent, because no device of the updated MDMs is known "
                "(import compliance first: driftline mdm pull)"
            )
        else:
            lines.append(
                f"force-sync: succeeded {synced['succeeded']}, failed {synced['failed']}, "
                f"skipped {synced['skipped']}"
            )
    return lines


def add_commands(commands: Any) -> None:
    policy = commands.add_parser("policy", help="publish and show tenant policies")
    policy_commands = policy.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    policy_set = policy_commands.add_parser(
        "set", help="publish a tenant policy file (YAML or JSON) as its next version"
    )
    policy_set.add_argument("file", type=Path)
    policy_set.add_argument(
        "--strict",
        action="store_true",
        help="refuse tool names no endpoint has reported (or that cannot be checked)",
    )
    policy_set.add_argument(
        "--clickhouse", default=None, help="DSN of a ClickHouse server, to check tool names"
    )
    policy_set.set_defaults(func=_cmd_policy_set)
    policy_show = policy_commands.add_parser("show", help="print a tenant's current policy")
    policy_show.add_argument("--tenant", required=True, type=tenant_arg)
    policy_show.set_defaults(func=_cmd_policy_show)
    push = policy_commands.add_parser(
        "push", help="render the tenant's managed settings into its MDM profiles and update them"
    )
    push.add_argument("--tenant", required=True, type=tenant_arg)
    push.add_argument("--live", action="store_true", help="update the profiles (else dry-run)")
    push.add_argument("--force-sync", action="store_true", help="then force-sync known devices")
    push.add_argument(
        "--allow-empty",
        action="store_true",
        help="push even with no managed_settings (replaces the profile with an empty one)",
    )
    push.add_argument("--json", action="store_true")
    push.add_argument("--clickhouse", default=None, help="DSN of a ClickHouse server")
    push.set_defaults(func=_cmd_policy_push)
    add_setting_flags(push, "--data")
    for sub in (policy_set, policy_show):
        add_setting_flags(sub, "--data", "--tokens", "--bus", "--bootstrap")
