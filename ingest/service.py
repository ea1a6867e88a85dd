"""The receiver's core, shared by the gRPC and HTTP transports.

admit (load, memory) → authenticate from headers/metadata → read the body → decode → extract
snapshots → publish and wait for the bus's acknowledgement. A request without a valid token
never has its body read whole: the transport keeps at most a prefix, ``refuse`` attributes it
within a budget and counts it in a coalesced AuthEvent. Transports only translate an Outcome
into their status codes, so both speak the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Final

from bus import Bus, BusUnavailable, Record
from ingest import metrics
from ingest.admission import LoadShedder, MemoryBudget, ShedOptions
from ingest.attribution import PREFIX_BYTES, attribute
from ingest.authevents import Coalescer
from ingest.codec import SERVICES, MalformedRequest, decode_json, decode_protobuf
from ingest.ratelimit import KeyedBuckets, TokenBucket
from ingest.snapshots import (
    ExportRequest,
    Extraction,
    Limits,
    combined,
    extract,
    resource_count,
)
from ingest.tokens import Authenticator, Denied, Granted
from schemas import DEFAULT_IDENTITY_ATTRIBUTES, AuthEvent, Signal, endpoint_id, topics

log = logging.getLogger(__name__)

MIN_ATTRIBUTION_COST: Final = 4096  # bytes a refused body is charged at least
MAX_MESSAGE_BYTES: Final = 64 * 1024  # an error answer's message; the rest is "… and N more"
SLICE: Final = 1024  # resources extracted between two yields to the event loop
_REQUEST_TYPES: Final = {service.signal: service.request_type for service in SERVICES}


class Status(Enum):
    OK = "ok"
    UNAUTHENTICATED = "unauthenticated"
    INVALID = "invalid"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class Outcome:
    status: Status
    message: str = ""
    rejected: int = 0  # items refused inside an OK answer (OTLP partial success)
    retry_after: int | None = None
    errors: tuple[str, ...] = ()  # the reasons ``message`` was made of, for a tighter cap
    error_total: int = 0

    def message_within(self, limit: int) -> str:
        """``message``, re-capped to ``limit`` bytes where it lists reasons."""
        if len(self.message.encode()) <= limit or not self.errors:
            return self.message
        return capped_message(self.errors, self.error_total, limit)


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, as the transport saw it."""

    transport: str  # "grpc" | "http"
    address: str  # client IP, no port: the unit the per-source budget counts
    authorizations: tuple[str, ...]  # every Authorization value, in order (never logged)


@dataclass(frozen=True, slots=True)
class IngestOptions:
    identity_attributes: tuple[str, ...] = DEFAULT_IDENTITY_ATTRIBUTES
    limits: Limits = field(default_factory=Limits)
    max_inflight: int = 4096  # requests waiting on the bus; beyond it, answer "retry later"
    retry_after: int = 5
    shed_retry_after: int = 1  # seconds a shed client waits: capacity frees up quickly
    # request bodies held at once, all connections of the process (see MemoryBudget)
    max_body_bytes_in_flight: int = 256 * 1024 * 1024
    shedding: ShedOptions | None = field(default_factory=ShedOptions)  # None: never shed
    # bytes of refused bodies looked into for an identity, per process and per source address
    # (NATs share one): 500 and 50 full 64 KiB prefixes a second. Counted in bytes, not
    # requests: a laptop's refused export is ~3 KB, and counting requests let a rotation storm
    # of 10,000 laptops (1,000+ refusals a second) leave half of them unattributed, and so
    # never flagged stale, at a small fraction of the work the budget allows for bombs
    attribution_bytes_per_second: float = 500.0 * PREFIX_BYTES
    attribution_bytes_per_source: float = 50.0 * PREFIX_BYTES
    auth_event_interval: float = 1.0  # per (reason, token or source, endpoint); 0 = each
    max_auth_event_keys: int = 10_000  # keys the coalescer remembers
    max_pending_auth_events: int = 1024  # AuthEvent publications in flight


class IngestService:
    def __init__(
        self,
        authenticator: Authenticator,
        bus: Bus,
        options: IngestOptions | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """``monotonic`` paces the attribution budgets; tests freeze it to count exactly."""
        self.options = options or IngestOptions()
        self._auth = authenticator
        self._bus = bus
        self._clock = clock
        self._inflight = 0
        opts = self.options
        self.budget = MemoryBudget(opts.max_body_bytes_in_flight)
        self.shedder = LoadShedder(opts.shedding) if opts.shedding is not None else None
        if self.shedder is not None:
            self.shedder.waiting = lambda: self._inflight > 0 or self.budget.in_use > 0
        rate, per_source = opts.attribution_bytes_per_second, opts.attribution_bytes_per_source
        self._attribution_budget = TokenBucket(rate, rate, monotonic)
        self._per_source = KeyedBuckets(per_source, per_source, clock=monotonic)
        self._coalescer = Coalescer(opts.auth_event_interval, opts.max_auth_event_keys)
        self._auth_tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self._wake_flusher = asyncio.Event()
        self._flusher_until = float("inf")  # when the flusher wakes next by itself

    def start(self) -> None:
        """Start the background parts (lag sampling); call on the serving loop."""
        if self.shedder is not None:
            self.shedder.start()

    def ready(self) -> bool:
        return self._bus.ready()

    # ------------------------------------------------------------------------- admission

    def admit(self) -> Outcome | None:
        """None to go on, or the "retry later" answer for a receiver past its capacity."""
        if self.shedder is not None and not self.shedder.admit(self._inflight):
            return Outcome(
                Status.UNAVAILABLE, "receiver overloaded", retry_after=self.options.shed_retry_after
            )
        return None

    def served(self, seconds: float) -> None:
        """An admitted request's time from arrival to answer (the shedder's queue signal)."""
        if self.shedder is not None:
            self.shedder.waited(seconds)

    def over_budget(self) -> Outcome:
        return Outcome(
            Status.UNAVAILABLE,
            "receiver memory budget for request bodies is full",
            retry_after=self.options.shed_retry_after,
        )

    def authenticate(self, caller: Caller) -> Granted | Denied:
        return self._auth.authenticate_all(caller.authorizations)

    def count(self, signal: Signal, caller: Caller, outcome: Outcome) -> Outcome:
        """Count an answer decided by a transport (shed, over budget, refused)."""
        metrics.requests(caller.transport, signal.value, outcome.status.value).inc()
        return outcome

    # ---------------------------------------------------------------------------- export

    async def export(
        self,
        signal: Signal,
        body: bytes,
        caller: Caller,
        *,
        json: bool = False,
        grant: Granted | Denied | None = None,
    ) -> Outcome:
        """One whole request. ``grant`` is the transport's earlier ``authenticate``, if any."""
        if grant is None:
            grant = self.authenticate(caller)
        if isinstance(grant, Denied):
            outcome = self.refuse(signal, grant, caller, body, json=json, complete=True)
        else:
            outcome = await self._export(signal, body, json, grant)
        return self.count(signal, caller, outcome)

    async def _export(self, signal: Signal, body: bytes, json: bool, grant: Granted) -> Outcome:
        try:
            request = _decode(signal, body, json)
        except MalformedRequest as error:
            metrics.rejects("malformed_request").inc()
            return Outcome(Status.INVALID, str(error))
        extraction = await self._extract(request, grant.tenant_id, grant.token_id)
        errors = extraction.errors
        if errors:
            metrics.rejects("invalid_resource").inc(extraction.error_count)
        message = capped_message(errors, extraction.error_count)
        reasons, total = tuple(errors), extraction.error_count
        if extraction.rejected_all:
            return Outcome(Status.INVALID, message, errors=reasons, error_total=total)
        if extraction.snapshots:
            if self._inflight >= self.options.max_inflight:
                metrics.rejects("overloaded").inc()
                return Outcome(
                    Status.UNAVAILABLE, "receiver at capacity", retry_after=self.options.retry_after
                )
            records = [
                Record(topics.SNAPSHOTS, s.endpoint_id, s.to_json(), s)
                for s in extraction.snapshots
            ]
            self._inflight += 1
            started = time.perf_counter()
            try:
                await self._bus.publish(records)
            except BusUnavailable as error:
                metrics.rejects("bus_unavailable").inc()
                return Outcome(Status.UNAVAILABLE, str(error), retry_after=self.options.retry_after)
            finally:
                self._inflight -= 1
            metrics.PUBLISH_SECONDS.observe(time.perf_counter() - started)
            metrics.snapshots(extraction.snapshots[0].signal.value).inc(len(records))
        rejected = extraction.rejected_items
        return Outcome(Status.OK, message, rejected, errors=reasons, error_total=total)

    async def _extract(
        self, request: ExportRequest, tenant_id: str, token_id: str | None = None
    ) -> Extraction:
        """Extract in slices of ``SLICE`` resources, yielding to the loop in between: a
        request of 200,000 resources takes about a second, and other requests must not
        wait for all of it."""
        received_at = self._clock()
        opts = self.options
        total = resource_count(request)
        parts: list[Extraction] = []
        for start in range(0, max(total, 1), SLICE):
            if start:
                await asyncio.sleep(0)
            parts.append(
                extract(
                    request,
                    tenant_id,
                    received_at,
                    opts.identity_attributes,
                    opts.limits,
                    start,
                    start + SLICE,
                    token_id=token_id,  # which token, for `tokens usage` (never the token)
                )
            )
        return combined(parts)

    # ----------------------------------------------------------------------- rejections

    def refuse(
        self,
        signal: Signal,
        denied: Denied,
        caller: Caller,
        prefix: bytes,
        *,
        json: bool = False,
        complete: bool = False,
        budgeted: bool = False,
    ) -> Outcome:
        """The 401 for a request without a valid token, counted in an AuthEvent.

        ``prefix`` is what the transport kept of the body (at most ``PREFIX_BYTES``, decoded;
        ``complete`` if that is all of it). It is looked into for an identity only within the
        attribution budgets (``budgeted``: the transport charged them already); the rejection
        is counted either way.
        """
        metrics.rejects(denied.reason.value).inc()
        identity: str | None = None
        if prefix and (budgeted or self.may_attribute(caller, len(prefix))):
            identity = attribute(
                prefix,
                _REQUEST_TYPES[signal],
                json,
                complete,
                self.options.identity_attributes,
                self.options.limits,
            )
        else:
            metrics.auth_events("unattributed").inc()
        self._note_denied(denied, identity, caller.address)
        message = f"ingest token {denied.reason.value}"
        if denied.detail:
            message += f": {denied.detail}"
        return Outcome(Status.UNAUTHENTICATED, message)

    def may_attribute(self, caller: Caller, size: int) -> bool:
        """Whether ``size`` bytes of a refused request's body may be looked into (takes them
        from both budgets; at least MIN_ATTRIBUTION_COST, so tiny bodies are not free)."""
        cost = max(size, MIN_ATTRIBUTION_COST)
        return self._per_source.take(caller.address, cost) and self._attribution_budget.take(cost)

    def may_read_to_attribute(self, caller: Caller) -> bool:
        """gRPC: whether a refused call's message may be read to look into it. Its size is
        known only once read, so both budgets are charged with it then (``read_to_attribute``)."""
        source = self._per_source.bucket(caller.address)
        cost = MIN_ATTRIBUTION_COST
        return source.has(cost) and self._attribution_budget.has(cost)

    def read_to_attribute(self, caller: Caller, size: int) -> None:
        cost = max(size, MIN_ATTRIBUTION_COST)
        self._per_source.bucket(caller.address).charge(cost)
        self._attribution_budget.charge(cost)

    def _note_denied(self, denied: Denied, identity: str | None, address: str) -> None:
        now = self._clock()
        event = AuthEvent(
            tenant_id=denied.tenant_id,
            endpoint_id=endpoint_id(denied.tenant_id, identity)
            if denied.tenant_id and identity
            else None,
            identity=identity,
            token_id=denied.token_id,
            reason=denied.reason,
            source=address,
            observed_at=now,
        )
        key: Hashable = (denied.reason, denied.token_id or address, identity)
        ready = self._coalescer.add(key, event, time.monotonic())
        if ready is None:
            metrics.auth_events("coalesced").inc()
            self._ensure_flusher()
        elif not self._publish(ready):
            self._coalescer.later(ready, key, time.monotonic() + 0.1)
            self._ensure_flusher()

    def _publish(self, event: AuthEvent, force: bool = False) -> bool:
        """Publish in the background, without delaying the 401; False when too many are."""
        if not force and len(self._auth_tasks) >= self.options.max_pending_auth_events:
            return False
        key = event.endpoint_id or event.identity or event.source
        record = Record(topics.AUTH_EVENTS, key, event.to_json())
        task = asyncio.create_task(self._publish_auth_event(record))
        self._auth_tasks.add(task)
        task.add_done_callback(self._auth_tasks.discard)
        return True

    def _ensure_flusher(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever())
        due = self._coalescer.next_due()
        if due is not None and due < self._flusher_until:
            self._wake_flusher.set()  # only when it sleeps past the new due time

    async def _flush_forever(self) -> None:
        """Publish held AuthEvents as their intervals end (at most a few every tick)."""
        while True:
            self._wake_flusher.clear()
            due = self._coalescer.next_due()
            self._flusher_until = float("inf") if due is None else due
            if due is None:
                await self._wake_flusher.wait()
                continue
            delay = due - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake_flusher.wait()
                continue
            room = self.options.max_pending_auth_events - len(self._auth_tasks)
            for event in self._coalescer.due(time.monotonic(), limit=max(0, room)):
                self._publish(event)
            if room <= 0:
                await asyncio.sleep(0.05)  # the bus is slow: let publications finish
            else:
                await asyncio.sleep(0)

    async def _publish_auth_event(self, record: Record) -> None:
        try:
            await self._bus.publish([record])
        except BusUnavailable as error:
            metrics.auth_events("failed").inc()
            log.debug("auth event not published: %s", error)
        else:
            metrics.auth_events("published").inc()

    async def drain(self) -> None:
        """Publish every held AuthEvent and wait for them, e.g. before shutdown."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        for event in self._coalescer.flush():
            self._publish(event, force=True)
        if self._auth_tasks:
            await asyncio.gather(*self._auth_tasks, return_exceptions=True)

    async def stop(self) -> None:
        await self.drain()
        if self.shedder is not None:
            await self.shedder.stop()


def _decode(signal: Signal, body: bytes, json: bool) -> ExportRequest:
    request_type = _REQUEST_TYPES[signal]
    if json:
        return decode_json(body, request_type)
    return decode_protobuf(body, request_type)


def capped_message(
    errors: Sequence[str], total: int | None = None, limit: int = MAX_MESSAGE_BYTES
) -> str:
    """``errors`` joined with "; " up to ``limit`` bytes, then "… and N more".

    An identity-less 4 MB request once produced an 18 MB answer; a client needs the first
    reasons and the count, not every one.
    """
    total = len(errors) if total is None else total
    parts: list[str] = []
    size = 0
    for error in errors:
        size += len(error.encode()) + 2
        if size > limit - 64:
            break
        parts.append(error)
    message = "; ".join(parts)
    if len(parts) < total:
        message += f"; … and {total - len(parts)} more"
    return message
