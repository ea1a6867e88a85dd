"""`driftline drift` and `driftline endpoint`: what drifted, and one endpoint's story."""

from __future__ import annotations

import argparse
import json
from typing import Any

from driftline.cli.common import add_setting_flags, operate, print_table, query, tenant_arg


def _cmd_drift(args: argparse.Namespace) -> int:
    if args.remediation:
        return _remediation(args)
    rows = query(args, "drift", {"kind": args.kind, "team": args.team, "service": args.service})
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
        print_table(rows, columns)
        if not rows:
            print(f"no open drift for {_scope(args)}")
    return 0


def _scope(args: argparse.Namespace) -> str:
    return "any tenant" if args.all_tenants else f"tenant {args.tenant}"


def _remediation(args: argparse.Namespace) -> int:
    if not args.all_tenants and not args.tenant:
        raise ValueError("name a tenant with --tenant (or --all-tenants, for administrators)")
    rows = operate(
        args,
        "remediation",
        {"tenant": None if args.all_tenants else args.tenant, "stuck_after": args.stuck_after},
    )
    if args.json:
        print(json.dumps(rows, default=str, indent=2))
        return 0
    from schemas.durations import format_duration

    for row in rows:
        row["time_to_remediate"] = format_duration(row.get("time_to_remediate_s"))
    columns = ["status", "vendor", "device_id", "serial_number", "endpoint_id", "reason"]
    print_table(rows, [*columns, "synced_at", "remediated_at", "time_to_remediate"])
    if not rows:
        print(f"no force-synced device for {_scope(args)}")
    return 0


def _cmd_endpoint(args: argparse.Namespace) -> int:
    history = query(args, "endpoint", {"id": args.endpoint_id})
    if args.json:
        print(json.dumps(history, default=str, indent=2))
        return 0
    print(f"endpoint {history['endpoint_id']}")
    if not (history["states"] or history["flags"] or history["rejections"]):
        print(
            f"nothing received from this endpoint for {_scope(args)} (ids are tenant/identity, "
            "e.g. acme/C02XYZ; `driftline drift` lists them)"
        )
        return 1
    print("\nstates (first_seen/last_seen: when Driftline received them; telemetry_time: the")
    print("endpoint's own clock, first and last, which may be wrong):")
    states = [
        {
            **state,
            "first_seen": state["first_seen"] or "(not recorded)",
            "telemetry_time": f"{state['telemetry_first']} .. {state['telemetry_last']}",
        }
        for state in history["states"]
    ]
    print_table(
        states,
        [
            "first_seen",
            "last_seen",
            "service_name",
            "app_version",
            "team_id",
            "serial_number",
            "telemetry_time",
        ],
    )
    print("\nflags:")
    print_table(history["flags"], ["last_seen", "kind", "state", "detail", "policy_version"])
    print("\nrejected requests:")
    print_table(history["rejections"], ["observed_at", "reason", "token_id", "source"])
    print("\nremediation (flags and MDM reports; `driftline actions log` for every step):")
    for action in history.get("actions", []):
        action["mode"] = "dry-run" if action["dry_run"] else "live"
    print_table(
        history.get("actions", []),
        ["last_at", "mode", "last_state", "vendor", "device_id", "reason"],
    )
    return 0


def add_commands(commands: Any) -> None:
    drift = commands.add_parser("drift", help="list open drift (one tenant, filters optional)")
    endpoint = commands.add_parser("endpoint", help="one endpoint's versions, attributes, flags")
    endpoint.add_argument(
        "endpoint_id", help="tenant/identity, e.g. acme/C02XYZ, or the identity alone if unique"
    )
    for sub in (drift, endpoint):
        sub.add_argument("--tenant", default=None, type=tenant_arg, help="the tenant to look at")
        sub.add_argument("--all-tenants", action="store_true", help="administrators: no scoping")
        sub.add_argument(
            "--clickhouse",
            default=None,
            help="the ClickHouse server the sink writes (DRIFTLINE_CLICKHOUSE), "
            "e.g. https://user:pass@host:8443/db",
        )
        sub.add_argument("--json", action="store_true", help="JSON for machines")
        add_setting_flags(sub, "--data")
    drift.add_argument("--kind", choices=["outdated_client", "missing_policy", "stale_token"])
    drift.add_argument("--team", default=None)
    drift.add_argument("--service", default=None)
    drift.add_argument(
        "--remediation",
        action="store_true",
        help="force-synced devices instead (for drift or an MDM's own report, with the reason): "
        "pending, remediated (time to remediate) or stuck",
    )
    drift.add_argument("--stuck-after", default="24h", help="with --remediation (default 24h)")
    drift.set_defaults(func=_cmd_drift)
    endpoint.set_defaults(func=_cmd_endpoint)
