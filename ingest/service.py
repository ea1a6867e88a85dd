"""The receiver's core, shared by the gRPC and HTTP transports.

authenticate → decode → extract snapshots → publish and wait for the bus's acknowledgement.
Transports only translate an Outcome into their status codes, so both speak the same rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum

from bus import Bus, BusUnavailable, Record
from ingest import metrics
from ingest.codec import MalformedRequest
from ingest.ratelimit import KeyedBuckets, TokenBucket
from ingest.snapshots import ExportRequest, Limits, extract, identity_of
from ingest.tokens import Authenticator, Denied
from schemas import DEFAULT_IDENTITY_ATTRIBUTES, AuthEvent, Signal, endpoint_id, topics

log = logging.getLogger(__name__)

Decoder = Callable[[bytes], ExportRequest]


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


@dataclass(frozen=True, slots=True)
class Caller:
    """Who sent a request, as the transport saw it."""

    transport: str  # "grpc" | "http"
    address: str  # client IP, no port: the unit the per-source budget counts
    authorization: str | None


@dataclass(frozen=True, slots=True)
class IngestOptions:
    identity_attributes: tuple[str, ...] = DEFAULT_IDENTITY_ATTRIBUTES
    limits: Limits = field(default_factory=Limits)
    max_inflight: int = 4096  # requests waiting on the bus; beyond it, answer "retry later"
    retry_after: int = 5
    auth_events_per_second: float = 500.0  # all rejected requests we decode, per process
    auth_events_per_source: float = 50.0  # per source address (NATs share one)
    auth_event_interval: float = 10.0  # per (reason, token, endpoint)
    max_pending_auth_events: int = 1024


class IngestService:
    def __init__(
        self,
        authenticator: Authenticator,
        bus: Bus,
        options: IngestOptions | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.options = options or IngestOptions()
        self._auth = authenticator
        self._bus = bus
        self._clock = clock
        self._inflight = 0
        opts = self.options
        self._decode_budget = TokenBucket(opts.auth_events_per_second, opts.auth_events_per_second)
        self._per_source = KeyedBuckets(opts.auth_events_per_source, opts.auth_events_per_source)
        self._per_endpoint = KeyedBuckets(1 / opts.auth_event_interval, 1)
        self._auth_tasks: set[asyncio.Task[None]] = set()

    def ready(self) -> bool:
        return self._bus.ready()

    async def export(self, signal: Signal, body: bytes, decode: Decoder, caller: Caller) -> Outcome:
        outcome = await self._export(body, decode, caller)
        metrics.requests(caller.transport, signal.value, outcome.status.value).inc()
        return outcome

    async def _export(self, body: bytes, decode: Decoder, caller: Caller) -> Outcome:
        grant = self._auth.authenticate(caller.authorization)
        if isinstance(grant, Denied):
            metrics.rejects(grant.reason.value).inc()
            self._note_denied(grant, body, decode, caller.address)
            return Outcome(Status.UNAUTHENTICATED, f"ingest token {grant.reason.value}")
        try:
            request = decode(body)
        except MalformedRequest as error:
            metrics.rejects("malformed_request").inc()
            return Outcome(Status.INVALID, str(error))
        extraction = extract(
            request,
            grant.tenant_id,
            self._clock(),
            self.options.identity_attributes,
            self.options.limits,
            token_id=grant.token_id,  # which token, for `tokens usage` (never the token)
        )
        if extraction.errors:
            metrics.rejects("invalid_resource").inc(len(extraction.errors))
        if extraction.rejected_all:
            return Outcome(Status.INVALID, "; ".join(extraction.errors))
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
        return Outcome(Status.OK, "; ".join(extraction.errors), rejected=extraction.rejected_items)

    def _note_denied(self, denied: Denied, body: bytes, decode: Decoder, address: str) -> None:
        """Publish an AuthEvent in the background, within budgets, without delaying the 401."""
        if len(self._auth_tasks) >= self.options.max_pending_auth_events or not (
            self._per_source.take(address) and self._decode_budget.take()
        ):
            metrics.auth_events("suppressed").inc()
            return
        identity: str | None = None
        with contextlib.suppress(MalformedRequest):
            identity = identity_of(
                decode(body), self.options.identity_attributes, self.options.limits
            )
        if not self._per_endpoint.take((denied.reason, denied.token_id or address, identity)):
            metrics.auth_events("suppressed").inc()
            return
        event = AuthEvent(
            tenant_id=denied.tenant_id,
            endpoint_id=endpoint_id(denied.tenant_id, identity)
            if denied.tenant_id and identity
            else None,
            identity=identity,
            token_id=denied.token_id,
            reason=denied.reason,
            source=address,
            observed_at=self._clock(),
        )
        key = event.endpoint_id or identity or address
        record = Record(topics.AUTH_EVENTS, key, event.to_json())
        task = asyncio.create_task(self._publish_auth_event(record))
        self._auth_tasks.add(task)
        task.add_done_callback(self._auth_tasks.discard)

    async def _publish_auth_event(self, record: Record) -> None:
        try:
            await self._bus.publish([record])
        except BusUnavailable as error:
            metrics.auth_events("failed").inc()
            log.debug("auth event not published: %s", error)
        else:
            metrics.auth_events("published").inc()

    async def drain(self) -> None:
        """Wait for background AuthEvents, e.g. before shutdown."""
        if self._auth_tasks:
            await asyncio.gather(*self._auth_tasks, return_exceptions=True)
