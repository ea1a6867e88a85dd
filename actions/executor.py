"""Carries out a plan safely: dry-run by default, and every step audited.

``gate`` is the pure part: given the plan, what was sent before (from the audit), the
integrations and the options, it decides per action *send* or *skip, and why*. ``Executor`` is
the shell: it audits each decision, writes the ``sent`` row durably *before* the request leaves
(so a crash and restart can never fire the same action twice: the restarted run sees ``sent``
without an outcome and skips it), calls the MDM, and audits the outcome.

Safety rules, in the order they apply:
1. kill switch engaged: nothing is sent;
2. no integration, no credential (push-only), or force-sync not granted: skipped;
3. the same action already succeeded, or was sent with no recorded outcome: skipped;
   one that failed is tried again, up to ``max_attempts``;
4. the device was synced within ``cooldown``: skipped;
5. more devices to act on than ``max_devices``: the whole run refuses ("would exceed the cap");
   acting on part of a fleet chosen by sort order is not a decision anyone made.
Per-vendor rate limits, retries and Retry-After live in ``actions.mdm.Session``; the per-tenant
action rate here paces sends instead of dropping them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Protocol

from actions.mdm import Integration, MdmClient, MdmError, RateLimit
from schemas.remediation import (
    ActionKind,
    AuditRecord,
    AuditState,
    Plan,
    PlannedAction,
    Vendor,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExecutorOptions:
    live: bool = False
    cooldown: timedelta = timedelta(hours=1)
    max_devices: int = 100
    max_attempts: int = 3
    tenant_rate: tuple[int, float] = (60, 60.0)  # actions per seconds, per tenant
    kill_switch: Path | None = None  # this file existing stops every send

    def killed(self) -> bool:
        if os.environ.get("DRIFTLINE_ACTIONS_KILL_SWITCH", "").strip() not in ("", "0"):
            return True
        return self.kill_switch is not None and self.kill_switch.exists()


@dataclass(frozen=True)
class Past:
    """What the audit says about one action id: its latest attempt and that attempt's states."""

    attempt: int
    states: frozenset[AuditState]
    at: datetime


@dataclass(frozen=True)
class History:
    actions: Mapping[str, Past] = field(default_factory=dict)
    last_sync: Mapping[tuple[str, Vendor, str], datetime] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    action: PlannedAction
    attempt: int
    send: bool
    why: str  # empty when sending


def gate(
    plan: Plan,
    history: History,
    integrations: Mapping[tuple[str, Vendor], Integration],
    options: ExecutorOptions,
    now: datetime,
    killed: bool,
) -> list[Decision]:
    """Send or skip, per planned action (pure: the rules in the module docstring)."""
    decisions = [_decide(a, history, integrations, options, now, killed) for a in plan.actions]
    sending = [d for d in decisions if d.send]
    if len(sending) > options.max_devices:
        why = (
            f"would exceed the cap: {len(sending)} devices to act on, at most "
            f"{options.max_devices} per run; nothing sent (raise --max-devices to proceed)"
        )
        return [Decision(d.action, d.attempt, False, why) if d.send else d for d in decisions]
    return decisions


def _decide(
    action: PlannedAction,
    history: History,
    integrations: Mapping[tuple[str, Vendor], Integration],
    options: ExecutorOptions,
    now: datetime,
    killed: bool,
) -> Decision:
    past = history.actions.get(action.action_id)
    attempt = 1 if past is None else past.attempt + (1 if _was_sent(past) else 0)

    def skip(why: str) -> Decision:
        return Decision(action, attempt, False, why)

    if killed:
        return skip("kill switch engaged")
    integration = integrations.get((action.tenant_id, action.vendor))
    if integration is None:
        return skip(f"no {action.vendor.value} integration configured for the tenant")
    if integration.current is None:
        return skip("push-only integration: no credential to act with")
    if action.kind is ActionKind.FORCE_SYNC and not integration.force_sync:
        return skip("force-sync not granted by the customer (integration force_sync is off)")
    if past is not None:
        if AuditState.SUCCEEDED in past.states:
            return Decision(
                action, past.attempt, False, f"already succeeded at {past.at:%Y-%m-%d %H:%M:%S}Z"
            )
        if AuditState.SENT in past.states and AuditState.FAILED not in past.states:
            return Decision(
                action,
                past.attempt,
                False,
                f"sent at {past.at:%Y-%m-%d %H:%M:%S}Z with no recorded outcome "
                "(interrupted); not sent twice",
            )
        if AuditState.FAILED in past.states and past.attempt >= options.max_attempts:
            return Decision(
                action, past.attempt, False, f"gave up after {past.attempt} failed attempts"
            )
    synced = history.last_sync.get((action.tenant_id, action.vendor, action.device_id))
    if synced is not None and now - synced < options.cooldown:
        until = synced + options.cooldown
        return skip(f"device cooldown until {until:%Y-%m-%d %H:%M:%S}Z")
    return Decision(action, attempt, True, "")


def needs_confirmation(
    decisions: list[Decision], *, threshold: int, first_live: bool
) -> str | None:
    """Why a live run from the command line waits for ``--yes``, or None to go ahead.

    A tenant's first live run, or one that would act on more than ``threshold`` devices, is
    shown first: a fleet-wide force-sync driven by MDM compliance is by design, but it should
    never be a surprise. Nothing to send needs no confirmation.
    """
    sending = sum(1 for d in decisions if d.send)
    if sending == 0:
        return None
    if first_live:
        return f"the tenant's first live run would act on {sending} devices"
    if sending > threshold:
        return f"{sending} devices to act on, more than {threshold} (--confirm-over)"
    return None


def _was_sent(past: Past) -> bool:
    return bool(past.states & {AuditState.SENT, AuditState.SUCCEEDED, AuditState.FAILED})


class AuditSink(Protocol):
    async def __call__(self, record: AuditRecord, *, durable: bool) -> None:
        """Record one audit step; ``durable`` returns only once it is stored."""


@dataclass
class RunReport:
    dry_run: bool
    planned: int = 0
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    skipped: int = 0
    records: list[AuditRecord] = field(default_factory=list)


ClientFor = Callable[[Integration], MdmClient]
Progress = Callable[[str, int, int], None]
"""(what, done, total): called as work advances, for a progress bar on a terminal."""


class Executor:
    def __init__(
        self,
        audit: AuditSink,
        client_for: ClientFor,
        options: ExecutorOptions,
        clock: Callable[[], datetime],
        progress: Progress | None = None,
    ) -> None:
        self.audit = audit
        self.client_for = client_for
        self.options = options
        self.clock = clock
        self.progress = progress
        self._tenant_rates: dict[str, RateLimit] = {}

    async def execute(
        self,
        plan: Plan,
        history: History,
        integrations: Mapping[tuple[str, Vendor], Integration],
        decisions: list[Decision] | None = None,
    ) -> RunReport:
        """``decisions``: the gate's answer when the caller already asked it (to confirm)."""
        live = self.options.live
        report = RunReport(dry_run=not live)
        if decisions is None:
            decisions = gate(
                plan, history, integrations, self.options, self.clock(), self.options.killed()
            )
        clients: dict[tuple[str, Vendor], MdmClient] = {}
        sending = sum(1 for d in decisions if d.send) if live else 0
        done = 0
        try:
            for decision in decisions:
                note = "" if decision.send else f"would skip: {decision.why}"
                await self._record(report, decision, AuditState.PLANNED, note)
                if not live:
                    continue
                if not decision.send:
                    await self._record(report, decision, AuditState.SKIPPED, decision.why)
                    continue
                action = decision.action
                key = (action.tenant_id, action.vendor)
                if key not in clients:
                    clients[key] = self.client_for(integrations[key])
                await self._send(report, decision, clients[key])
                done += 1
                if self.progress is not None:
                    self.progress("force-sync", done, sending)
        finally:
            for client in clients.values():
                await client.aclose()
        return report

    async def _send(self, report: RunReport, decision: Decision, client: MdmClient) -> None:
        if self.options.killed():  # checked again per send: flipping it mid-run stops the rest
            await self._record(report, decision, AuditState.SKIPPED, "kill switch engaged")
            return
        await self._tenant_rate(decision.action.tenant_id).acquire()
        # Durably, before the request: if we crash after this line, a restart skips the action.
        await self._record(report, decision, AuditState.SENT, "", durable=True)
        try:
            sent = await client.force_sync(decision.action.device_id)
        except MdmError as error:
            await self._record(
                report,
                decision,
                AuditState.FAILED,
                f"{type(error).__name__}: {error}",
                request=error.request,
                status=error.status,
            )
            return
        detail = "previous credential (in grace) used" if sent.credential == "previous" else ""
        await self._record(
            report, decision, AuditState.SUCCEEDED, detail, request=sent.request, status=sent.status
        )

    def _tenant_rate(self, tenant_id: str) -> RateLimit:
        limiter = self._tenant_rates.get(tenant_id)
        if limiter is None:
            limiter = self._tenant_rates[tenant_id] = RateLimit(*self.options.tenant_rate)
        return limiter

    async def _record(
        self,
        report: RunReport,
        decision: Decision,
        state: AuditState,
        detail: str,
        *,
        durable: bool = False,
        request: str = "",
        status: int | None = None,
    ) -> None:
        action = decision.action
        record = AuditRecord(
            tenant_id=action.tenant_id,
            action_id=action.action_id,
            attempt=decision.attempt,
            state=state,
            endpoint_id=action.endpoint_id or "",
            serial_number=action.serial_number,
            vendor=action.vendor,
            device_id=action.device_id,
            action=action.kind,
            reason="; ".join(
                [reason.detail for reason in action.reasons]
                + ([action.route] if action.route else [])
            ),
            detail=detail,
            dry_run=not self.options.live,
            request=request,
            response_status=status,
            at=self.clock(),
        )
        await self.audit(record, durable=durable or state is not AuditState.PLANNED)
        report.records.append(record)
        counter = {
            AuditState.PLANNED: "planned",
            AuditState.SENT: "sent",
            AuditState.SUCCEEDED: "succeeded",
            AuditState.FAILED: "failed",
            AuditState.SKIPPED: "skipped",
        }[state]
        setattr(report, counter, getattr(report, counter) + 1)
