"""`driftline actions`: plan and send force-syncs, serve, the kill switch."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from driftline import datadir
from driftline.cli.common import (
    ACTIONS_FLAGS,
    add_setting_flags,
    clickhouse_of,
    operate,
    print_table,
    settings_of,
    tenant_arg,
)

HELD = 4  # a live run waiting for --yes: nothing was sent


def _cmd_actions_run(args: argparse.Namespace) -> int:
    result = operate(
        args,
        "actions-run",
        {
            "tenant": args.tenant,
            "live": args.live,
            "max_devices": args.max_devices,
            "cooldown": args.cooldown,
            "confirm": True,
            "yes": args.yes,
            "confirm_over": args.confirm_over,
        },
    )
    if args.json:
        print(json.dumps(result, indent=2))
        return HELD if result["held"] else 0
    by_reason = ", ".join(f"{label} {n}" for label, n in result["summary"].items())
    print(f"plan: {result['devices']} devices ({by_reason or 'nothing to do'})")
    if result["held"]:
        print(
            f"not sent: {result['held']}. Check the plan (dry-run without --live), then "
            "re-run with --yes.",
            file=sys.stderr,
        )
        return HELD
    mode = "DRY RUN (nothing sent; --live to act)" if result["dry_run"] else "LIVE"
    print(f"remediation for {result['tenant']}: {mode}")
    final = final_steps(result["steps"])
    if final:
        print_table(
            final,
            ["vendor", "device_id", "serial_number", "endpoint_id", "state", "reason", "detail"],
        )
    if result["unresolvable"]:
        print("\nendpoints with drift but no single MDM device (not acted on):")
        print_table(result["unresolvable"], ["endpoint_id", "serial_number", "why"])
    print(
        "\n" + summary(final, dry_run=result["dry_run"], unresolvable=len(result["unresolvable"]))
    )
    return 1 if result["counts"]["failed"] else 0


def final_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each action's last audit step: the row the table shows for it."""
    final: dict[str, dict[str, Any]] = {}
    for step in steps:
        final[step["action_id"]] = step
    return list(final.values())


def summary(final: list[dict[str, Any]], *, dry_run: bool, unresolvable: int = 0) -> str:
    """The closing line, counted from the rows above it, so the two never disagree."""
    if not final:
        why = (
            f"; {unresolvable} drifted endpoint(s) have no single MDM device"
            if unresolvable
            else ""
        )
        return f"nothing to do: no drifted endpoint to act on{why if unresolvable else ''}"
    if dry_run:
        would_skip = sum(1 for step in final if step["detail"].startswith("would skip"))
        return (
            f"{len(final)} planned: would send {len(final) - would_skip}, would skip "
            f"{would_skip}; nothing sent (dry run)"
        )
    by_state = {
        state: sum(1 for step in final if step["state"] == state)
        for state in ("succeeded", "failed", "skipped", "sent")
    }
    words = [f"{state} {n}" for state, n in by_state.items() if n or state != "sent"]
    line = f"{len(final)} planned: " + ", ".join(words)
    if by_state["sent"]:
        line += " (sent: no outcome recorded)"
    return line


def _cmd_actions_log(args: argparse.Namespace) -> int:
    rows = operate(
        args,
        "actions-log",
        {"tenant": args.tenant, "device": args.device, "since": args.since},
    )
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no remediation steps recorded for tenant {args.tenant} in that window")
        return 0
    for row in rows:
        row["mode"] = "dry-run" if row["dry_run"] else "live"
    columns = ["at", "mode", "state", "vendor", "device_id", "serial_number", "endpoint_id"]
    print_table(rows, [*columns, "reason", "detail", "request", "response_status"])
    return 0


def _cmd_actions_serve(args: argparse.Namespace) -> int:
    import uvloop

    from driftline.actions_runner import serve
    from driftline.datadir import store_path

    settings = settings_of(args)
    dsn = clickhouse_of(args) or f"chdb://{store_path(settings.data).resolve()}"
    uvloop.run(serve(settings, dsn, args.group, settle=args.settle))
    return 0


def _cmd_actions_switch(args: argparse.Namespace) -> int:
    # a kill switch engaged in the wrong directory would stop nothing: the directory must exist
    switch = datadir.require(datadir.data_of(args.data)) / "actions.disabled"
    if args.actions_command == "stop":
        if switch.exists():
            print(f"kill switch already engaged ({switch}): nothing changed")
            return 0
        switch.parent.mkdir(parents=True, exist_ok=True)
        switch.write_text("remediation stopped by `driftline actions stop`\n")
        print(f"kill switch engaged ({switch}): no MDM action will be sent")
    elif not switch.exists():
        print("kill switch was not engaged: nothing changed")
    else:
        switch.unlink()
        print("kill switch released: live runs may act again")
    return 0


def add_commands(commands: Any) -> None:
    actions = commands.add_parser("actions", help="remediation: plan, act, stop")
    action_commands = actions.add_subparsers(
        dest="actions_command", required=True, metavar="ACTION"
    )
    actions_run = action_commands.add_parser(
        "run", help="plan force-syncs for a tenant and audit them (dry-run unless --live)"
    )
    actions_run.add_argument("--tenant", required=True, type=tenant_arg)
    actions_run.add_argument("--live", action="store_true", help="send to the MDMs")
    actions_run.add_argument("--max-devices", type=int, default=100, help="cap per run")
    actions_run.add_argument("--cooldown", default="1h", help="per-device quiet time")
    actions_run.add_argument(
        "--yes",
        action="store_true",
        help="act without holding: needed for a tenant's first live run or above --confirm-over",
    )
    actions_run.add_argument(
        "--confirm-over",
        type=int,
        default=10,
        help="a live run acting on more devices waits for --yes (default 10)",
    )
    actions_run.add_argument("--json", action="store_true")
    actions_run.add_argument("--clickhouse", default=None, help="DSN of a ClickHouse server")
    actions_run.set_defaults(func=_cmd_actions_run)
    actions_serve = action_commands.add_parser(
        "serve",
        help="Kafka deployment: remediate on new drift from driftline.flags (dry-run unless "
        "DRIFTLINE_ACTIONS_LIVE=1)",
    )
    add_setting_flags(actions_serve, "--bootstrap", *ACTIONS_FLAGS)
    actions_serve.add_argument("--clickhouse", default=None, help="DSN of the ClickHouse server")
    actions_serve.add_argument("--group", default="driftline-actions", help="Kafka consumer group")
    actions_serve.add_argument(
        "--settle", type=float, default=2.0, help="seconds for the sink to store new flags"
    )
    actions_serve.set_defaults(func=_cmd_actions_serve)
    log = action_commands.add_parser(
        "log", help="the audit: every planned, sent, succeeded, failed and skipped step"
    )
    log.add_argument("--tenant", required=True)
    log.add_argument("--device", default=None, help="an MDM device id, serial or endpoint id")
    log.add_argument("--since", default=None, help="a duration back (24h, 7d) or an ISO time")
    log.add_argument("--json", action="store_true")
    log.add_argument("--clickhouse", default=None, help="DSN of a ClickHouse server")
    log.set_defaults(func=_cmd_actions_log)
    stop = action_commands.add_parser("stop", help="kill switch: no MDM action is sent")
    resume = action_commands.add_parser("resume", help="release the kill switch")
    for sub in (stop, resume):
        sub.set_defaults(func=_cmd_actions_switch)
    for sub in (actions_run, actions_serve, log, stop, resume):
        add_setting_flags(sub, "--data")
