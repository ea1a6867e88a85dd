"""The remediation commands, written once and run in one of two places.

Each operation takes a ``Context`` (a store client, a batch writer, settings, where audit rows
go) and JSON-able arguments, and returns JSON-able results. The CLI runs it in its own process
against ``--data``/``--clickhouse``, or, when a ``driftline run`` holds the embedded store, asks
that process to run it (``POST /api/operations/NAME`` on the admin port, with the admin token). Same
code, same results, whichever process owns the store.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client

from actions import compliance_csv, metrics, planner
from actions.clients import client_for
from actions.executor import Decision, Executor, ExecutorOptions, Progress, needs_confirmation
from actions.integrations import IntegrationStore
from actions.mdm import Integration, MdmClient
from actions.schedule import Schedule
from actions.service import (
    Lookups,
    PushEntry,
    Remediation,
    action_history,
    push_policy,
)
from bus import Bus, Record
from bus.aio import wait_at_most
from schemas import check_tenant_id, topics
from schemas.durations import parse_duration
from schemas.messages import aware
from schemas.policy import TenantPolicy
from schemas.remediation import (
    ActionKind,
    AuditRecord,
    ComplianceRecord,
    Plan,
    PlannedAction,
    Reason,
    ReasonSource,
    Vendor,
)
from store import BatchWriter, queries, query_dicts

log = logging.getLogger(__name__)


@dataclass
class Context:
    store: Client
    writer: BatchWriter
    data: Path
    integrations: IntegrationStore
    policies: Callable[[str], TenantPolicy | None]
    bus: Bus | None = None
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    client_for: Callable[[Integration], MdmClient] = client_for
    lookups: Lookups = field(default_factory=Lookups)  # kept across passes of one process
    progress: Progress | None = None  # a progress bar, when a terminal watches

    def kill_switch(self) -> Path:
        return self.data / "actions.disabled"

    async def audit(self, record: AuditRecord, *, durable: bool) -> None:
        """Audit rows go to ClickHouse and, when there is a bus, to driftline.actions."""
        if durable:
            await self.writer.add_durably([record])
        else:
            await self.writer.add(record)
        if self.bus is not None:
            await self.bus.publish(
                [Record(topics.ACTIONS, record.endpoint_id or record.device_id, record.to_json())]
            )


Operation = Callable[[Context, dict[str, Any]], Awaitable[Any]]


def executor_options(ctx: Context, args: dict[str, Any]) -> ExecutorOptions:
    return ExecutorOptions(
        live=bool(args.get("live", False)),
        cooldown=parse_duration(str(args.get("cooldown") or "1h")),
        max_devices=int(args.get("max_devices") or 100),
        kill_switch=ctx.kill_switch(),
    )


CONFIRM_OVER = 10  # a command-line live run acting on more devices waits for --yes


def _has_acted(store: Client, tenant: str) -> bool:
    rows = query_dicts(
        store,
        "SELECT count() AS n FROM remediation_audit WHERE tenant_id = {tenant:String} "
        "AND NOT dry_run AND state IN ('sent', 'succeeded', 'failed')",
        {"tenant": tenant},
    )
    return bool(rows and rows[0]["n"])


async def actions_run(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Plan and (with live) act for one tenant; the plan, every decision and the counts.

    With ``confirm`` (the command line sets it), a live run without ``yes`` is held, untouched,
    when it is the tenant's first or would act on more than ``confirm_over`` devices: the
    result then carries the plan's size by reason and ``held`` (why). The background loop does
    not ask; its device cap (``max_devices``) still applies.
    """
    tenant = str(args["tenant"])
    options = executor_options(ctx, args)
    remediation = Remediation(
        ctx.store,
        ctx.integrations,
        options,
        ctx.audit,
        client_for=ctx.client_for,
        clock=ctx.clock,
        lookups=ctx.lookups,
        progress=ctx.progress,
    )
    confirm = None
    if options.live and args.get("confirm") and not args.get("yes"):
        first_live = not await asyncio.to_thread(_has_acted, ctx.store, tenant)
        threshold = int(args.get("confirm_over") or CONFIRM_OVER)

        def confirm(plan: Plan, decisions: list[Decision]) -> str | None:
            return needs_confirmation(decisions, threshold=threshold, first_live=first_live)

    outcome = await remediation.run(tenant, confirm)
    await ctx.writer.flush()
    report = outcome.report
    return {
        "tenant": tenant,
        "held": outcome.held,
        "devices": len(outcome.plan.actions),
        "summary": planner.summarize(outcome.plan.actions),
        "dry_run": report.dry_run,
        "counts": {
            "planned": report.planned,
            "sent": report.sent,
            "succeeded": report.succeeded,
            "failed": report.failed,
            "skipped": report.skipped,
        },
        "steps": [r.model_dump(mode="json") for r in report.records],
        "unresolvable": [u.model_dump(mode="json") for u in outcome.plan.unresolvable],
    }


async def mdm_import(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """A CSV export into compliance_records (refused whole if any row is bad)."""
    records = compliance_csv.parse(
        str(args["csv"]), str(args["tenant"]), Vendor(args["vendor"]), ctx.clock()
    )
    await _store_compliance(ctx, records)
    return {"tenant": args["tenant"], "vendor": args["vendor"], "imported": len(records)}


async def mdm_pull(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    """Each integration's own compliance view, through its API, into compliance_records."""
    tenant = str(args["tenant"])
    remediation = Remediation(
        ctx.store, ctx.integrations, ExecutorOptions(), ctx.audit, client_for=ctx.client_for
    )
    counts, errors = await remediation.import_compliance(
        tenant, lambda records: _store_compliance(ctx, records)
    )
    metrics.pulled(tenant, [v.value for v in counts], [v.value for v in errors])
    return {
        "tenant": tenant,
        "imported": {vendor.value: n for vendor, n in counts.items()},
        "errors": {vendor.value: why for vendor, why in errors.items()},
    }


async def _store_compliance(ctx: Context, records: list[ComplianceRecord]) -> None:
    await ctx.writer.add_durably(records)


async def policy_push(ctx: Context, args: dict[str, Any]) -> dict[str, Any]:
    tenant = str(args["tenant"])
    policy = ctx.policies(tenant)
    if policy is None:
        raise ValueError(
            f"tenant {tenant!r} has no policy; publish one with `driftline policy set`"
        )
    if not policy.managed_settings and not args.get("allow_empty"):
        # Claude Code's profile replaces managed-settings.json: an empty one wipes the
        # customer's settings on every Mac in scope.
        raise ValueError(
            f"the policy of tenant {tenant!r} has no managed_settings: pushing it would replace "
            "the customer's Claude Code profile with an empty one; add managed_settings to the "
            "policy, or pass --allow-empty if an empty profile is really meant"
        )
    integrations = ctx.integrations.for_tenant(tenant)
    if not integrations:
        raise ValueError(f"tenant {tenant!r} has no MDM integration (driftline mdm connect)")
    pushed = await asyncio.to_thread(_last_pushed, ctx.store, tenant)
    entries = await push_policy(
        policy,
        integrations,
        ctx.data / "policy-push",
        lambda vendor: pushed.get(vendor.value),
        live=bool(args.get("live", False)),
        client_for=ctx.client_for,
        now=ctx.clock(),
    )
    for entry in entries:
        await ctx.writer.add_row(
            "policy_changelog",
            {
                "tenant_id": entry.tenant_id,
                "vendor": entry.vendor.value,
                "policy_version": entry.policy_version,
                "digest": entry.digest,
                "outcome": entry.outcome,
                "detail": entry.detail,
                "payload_file": entry.payload_file,
                "at": entry.at,
            },
        )
    synced = None
    if args.get("force_sync"):
        pushed_now = [e for e in entries if e.outcome == "pushed"]
        synced = await _force_sync_after_push(ctx, tenant, pushed_now, args)
    await ctx.writer.flush()
    return {
        "tenant": tenant,
        "force_sync": synced,
        "entries": [
            {
                **entry.__dict__,
                "vendor": entry.vendor.value,
                "at": entry.at.isoformat(),
                "changes": list(entry.changes),
            }
            for entry in entries
        ],
    }


def _last_pushed(store: Client, tenant: str) -> dict[str, tuple[str, str]]:
    """Per vendor, the digest and payload file of the last complete push."""
    rows = query_dicts(
        store,
        "SELECT vendor, argMax((digest, payload_file), at) AS last FROM policy_changelog "
        "WHERE tenant_id = {tenant:String} AND outcome = 'pushed' GROUP BY vendor",
        {"tenant": tenant},
    )
    return {row["vendor"]: (row["last"][0], row["last"][1]) for row in rows}


async def _force_sync_after_push(
    ctx: Context, tenant: str, pushed: list[PushEntry], args: dict[str, Any]
) -> dict[str, int] | None:
    """Force-sync the devices each updated MDM is known to hold, through the executor.

    So these syncs obey the same gate as any other (kill switch, grant, cooldown, cap) and are
    audited the same way; the action id names the payload digest, so re-pushing the same policy
    does not sync the same devices twice.
    """
    if not pushed:
        return None
    actions = []
    for entry in pushed:
        rows = await asyncio.to_thread(
            query_dicts,
            ctx.store,
            "SELECT device_id, any(serial_number) AS serial FROM compliance_records "
            "WHERE tenant_id = {tenant:String} AND vendor = {vendor:String} "
            "GROUP BY device_id ORDER BY device_id",
            {"tenant": tenant, "vendor": entry.vendor.value},
        )
        reason = Reason(
            source=ReasonSource.POLICY,
            detail=f"policy v{entry.policy_version} pushed ({entry.digest[:12]})",
            flag_id=None,
        )
        for row in rows:
            actions.append(
                PlannedAction(
                    action_id=planner.action_id(
                        tenant,
                        entry.vendor,
                        row["device_id"],
                        ActionKind.FORCE_SYNC,
                        [f"policy:{entry.digest}"],
                    ),
                    tenant_id=tenant,
                    vendor=entry.vendor,
                    device_id=row["device_id"],
                    serial_number=row["serial"],
                    endpoint_id=None,
                    kind=ActionKind.FORCE_SYNC,
                    reasons=(reason,),
                )
            )
    options = executor_options(ctx, {**args, "live": True})
    history = await asyncio.to_thread(
        action_history, ctx.store, tenant, options.cooldown, ctx.clock()
    )
    integrations = {(i.tenant_id, i.vendor): i for i in ctx.integrations.for_tenant(tenant)}
    executor = Executor(ctx.audit, ctx.client_for, options, ctx.clock)
    report = await executor.execute(
        Plan(actions=tuple(actions), unresolvable=()), history, integrations
    )
    return {"succeeded": report.succeeded, "failed": report.failed, "skipped": report.skipped}


async def remediation_status(ctx: Context, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Force-synced devices: pending, remediated (with time to remediate) or stuck."""
    stuck_after = parse_duration(str(args.get("stuck_after") or "24h"))
    tenant = args.get("tenant")
    if tenant is not None and not await asyncio.to_thread(queries.tenant_seen, ctx.store, tenant):
        raise ValueError(f"nothing stored for tenant {tenant!r}: an unknown tenant, or no data yet")
    rows = await asyncio.to_thread(
        query_dicts,
        ctx.store,
        "SELECT tenant_id, vendor, device_id, serial_number, endpoint_id, reason, synced_at, "
        "flags, resolved_flags, remediated_at, time_to_remediate_s FROM remediation_outcomes "
        "WHERE ({tenant:Nullable(String)} IS NULL OR tenant_id = {tenant:Nullable(String)}) "
        "ORDER BY synced_at",
        {"tenant": args.get("tenant")},
    )
    now = ctx.clock()
    for row in rows:
        if row["remediated_at"] is not None:
            row["status"] = "remediated"
        elif now - aware(row["synced_at"]) > stuck_after:
            row["status"] = "stuck"
        else:
            row["status"] = "pending"
    return rows


async def actions_log(ctx: Context, args: dict[str, Any]) -> list[dict[str, Any]]:
    """The audit: every planned, sent, succeeded, failed and skipped step of one tenant,
    oldest first; ``device`` matches an MDM device id, a serial or an endpoint id; ``since`` is
    a duration back from now (``24h``) or an ISO time."""
    tenant = str(args["tenant"])
    since = _since(args.get("since"), ctx.clock())
    device = str(args.get("device") or "").strip()
    rows = await asyncio.to_thread(
        query_dicts,
        ctx.store,
        "SELECT at, action_id, attempt, state, dry_run, vendor, device_id, serial_number, "
        "endpoint_id, action, reason, detail, request, response_status "
        "FROM remediation_audit FINAL WHERE tenant_id = {tenant:String} "
        "AND at >= {since:DateTime64(3, 'UTC')} AND ({device:String} = '' "
        "OR device_id = {device:String} OR endpoint_id = {device:String} "
        "OR lower(ifNull(serial_number, '')) = lower({device:String})) "
        "ORDER BY at, action_id, attempt, "
        "indexOf(['planned', 'sent', 'succeeded', 'failed', 'skipped'], state)",
        {"tenant": tenant, "since": since, "device": device},
    )
    if not rows and not ctx.integrations.for_tenant(tenant):
        known = await asyncio.to_thread(_has_audit, ctx.store, tenant)
        if not known:
            raise ValueError(f"tenant {tenant!r} has no MDM integration and no audit")
    for row in rows:
        row["at"] = aware(row["at"]).isoformat()
    return rows


def _has_audit(store: Client, tenant: str) -> bool:
    rows = query_dicts(
        store,
        "SELECT count() AS n FROM remediation_audit WHERE tenant_id = {tenant:String}",
        {"tenant": tenant},
    )
    return bool(rows and rows[0]["n"])


def _since(value: object, now: datetime) -> datetime:
    if value is None or value == "":
        return datetime(1970, 1, 1, tzinfo=UTC)
    text = str(value).strip()
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return aware(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise ValueError(f"--since {text!r}: a duration (24h, 7d) or an ISO time") from None


async def token_usage(ctx: Context, args: dict[str, Any]) -> list[dict[str, Any]]:
    """Per endpoint and ingest token id, the first and last accepted request (for `driftline
    tokens usage`, which knows from the token registry which ids are retiring)."""
    from store import queries

    rows = await asyncio.to_thread(queries.endpoint_tokens, ctx.store, str(args["tenant"]))
    for row in rows:
        row["first_seen"] = aware(row["first_seen"]).isoformat()
        row["last_seen"] = aware(row["last_seen"]).isoformat()
    return rows


OPERATIONS: dict[str, Operation] = {
    "actions-log": actions_log,
    "actions-run": actions_run,
    "mdm-import": mdm_import,
    "mdm-pull": mdm_pull,
    "policy-push": policy_push,
    "remediation": remediation_status,
    "token-usage": token_usage,
}


async def run_operation(ctx: Context, name: str, args: dict[str, Any]) -> Any:
    operation = OPERATIONS.get(name)
    if operation is None:
        raise ValueError(f"unknown operation {name!r}; known: {', '.join(OPERATIONS)}")
    if args.get("tenant") is not None:  # None: all tenants, where an operation allows it
        check_tenant_id(args["tenant"])
    return await operation(ctx, args)


async def remediate_forever(ctx: Context, schedule: Schedule, wake: asyncio.Event) -> None:
    """The actions stage of a long-running process: tenants are those with an integration.

    A failing pull or pass is logged and tried again next time; it never stops the process.
    """
    pulled_at: float | None = None
    loop = asyncio.get_running_loop()
    while True:
        await wait_at_most(wake, schedule.interval)
        wake.clear()
        await asyncio.sleep(schedule.settle)
        tenants = sorted({i.tenant_id for i in ctx.integrations.all() if i.current is not None})
        if pulled_at is None or loop.time() - pulled_at >= schedule.compliance_interval:
            pulled_at = loop.time()
            for tenant in tenants:
                try:
                    pulled = await mdm_pull(ctx, {"tenant": tenant})
                except Exception:
                    log.exception("compliance pull for tenant %s failed", tenant)
                    continue
                for vendor, why in pulled["errors"].items():
                    log.warning("compliance of %s from %s not pulled: %s", tenant, vendor, why)
        for tenant in tenants:
            try:
                result = await actions_run(ctx, {"tenant": tenant, "live": schedule.live})
            except Exception:
                log.exception("remediation pass for tenant %s failed", tenant)
                continue
            counts = result["counts"]
            if counts["sent"] or counts["failed"]:
                log.info("remediation for %s: %s", tenant, counts)
