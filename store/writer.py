"""The batch writer: rows buffered per table, written in batches, retried, dead-lettered."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from clickhouse_connect.driver.client import Client

from bus.aio import wait_at_most
from store.refusals import Refused, about_data, append_line, describe, jsonable
from store.rows import TABLE_COLUMNS, StoreMessage, insert_rows, values_for, values_of_row

log = logging.getLogger(__name__)


class WriterClosed(RuntimeError):
    """The writer is closing or closed and takes no more rows."""


@dataclass(slots=True)
class _Buffer:
    rows: list[list[Any]] = field(default_factory=list)
    since: float = 0.0  # monotonic time of the oldest buffered row
    landed: asyncio.Future[None] | None = None  # for add_durably: set once these rows are written


@dataclass(slots=True)
class _Batch:
    number: int
    table: str
    rows: list[list[Any]]
    token: str  # the same on every retry, so a retry of a batch that did land is dropped
    landed: asyncio.Future[None] | None  # the buffer's, carried over when it was sealed


class BatchWriter:
    """Buffers rows per table and writes them in batches from one worker task.

    A buffer is written when it holds ``max_rows`` or its oldest row is ``max_delay`` seconds
    old (``delays`` overrides that per table: rows someone waits for go out sooner). Memory is
    bounded: once ``max_pending_rows`` are buffered or in flight, ``add`` waits, which passes
    ClickHouse's pace back to the consumer (a Kafka sink stops fetching instead of growing).
    Inserts run in a thread, one at a time, each batch with its own deduplication token. A batch
    that fails because the store is unavailable is kept and retried with exponential backoff
    until it lands or ``close`` gives up: ``retries`` and ``last_error`` show a writer that is
    stuck. A batch refused for its *data* would fail the same way forever and hold up every
    later row, so it is bisected instead: the good rows are written, each row ClickHouse can
    never take is logged at ERROR, appended to the ``dead_letter`` JSON-lines file (when given)
    and counted in ``rows_rejected``. Nothing is dropped silently. ``flush`` returns once
    everything added before it is written or dead-lettered (call it before committing consumer
    offsets).

    ``client`` may be a client or a factory; a factory is called in the worker (and retried) so
    the writer can start while ClickHouse is still down, and the client it made is closed with
    the writer.
    """

    def __init__(
        self,
        client: Client | Callable[[], Client],
        *,
        max_rows: int = 5000,
        max_delay: float = 1.0,
        delays: Mapping[str, float] | None = None,
        max_pending_rows: int = 50_000,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        close_timeout: float = 10.0,
        dead_letter: Path | None = None,
    ) -> None:
        if not 0 < max_rows <= max_pending_rows:
            raise ValueError("need 0 < max_rows <= max_pending_rows")
        if isinstance(client, Client):
            self._client: Client | None = client
            self._factory: Callable[[], Client] | None = None
        else:
            self._client = None
            self._factory = client
        self.max_rows = max_rows
        self.max_delay = max_delay
        self.delays = dict(delays or {})
        self.max_pending_rows = max_pending_rows
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.close_timeout = close_timeout
        self.dead_letter = dead_letter

        self.rows_added = 0
        self.rows_written = 0
        self.rows_rejected = 0  # refused for their data: logged and dead-lettered
        self.batches_written = 0
        self.retries = 0
        self.last_error: BaseException | None = None

        self._buffers: dict[str, _Buffer] = {}
        self._ready: deque[_Batch] = deque()
        self._pending = 0
        self._numbers = itertools.count(1)
        self._sealed = 0  # number of the last sealed batch
        self._written = 0  # batches are written in order, so this is a high-water mark
        self._column_types: dict[str, list[str]] = {}
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._closing = False
        self._worker: asyncio.Task[None] | None = None

    @property
    def pending_rows(self) -> int:
        """Rows accepted but not yet written (buffered or in a batch)."""
        return self._pending

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start the worker (``add`` does it too); needs a running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(
                self._run(), name="driftline-store-writer"
            )
            # wake adds and flushes waiting for progress that a dead worker will never make
            self._worker.add_done_callback(lambda _: self._progress.set())
            self._worker.add_done_callback(lambda _: self._fail_waiters())

    def _check_worker(self) -> None:
        """A worker that died of a bug must fail adds loudly, not block them forever."""
        if self._worker is None or not self._worker.done() or self._closing:
            return
        error = None if self._worker.cancelled() else self._worker.exception()
        raise WriterClosed("store writer stopped unexpectedly") from error

    async def add(self, message: StoreMessage) -> None:
        table, values = values_for(message)
        await self._add(table, values)

    async def add_row(self, table: str, row: Mapping[str, Any]) -> None:
        """A row for a table without a bus message (compliance_records, remediation_audit).

        Values must already have the column types (aware datetimes, ints, bools): a row with a
        value ClickHouse cannot take is rejected (dead-lettered), not written.
        """
        await self._add(table, values_of_row(table, row))

    async def _add(self, table: str, values: list[Any]) -> None:
        while self._pending >= self.max_pending_rows and not self._closing:
            self._check_worker()
            self._progress.clear()
            await self._progress.wait()
        if self._closing:
            raise WriterClosed("store writer is closed")
        self._check_worker()
        self.start()
        buffer = self._buffers.setdefault(table, _Buffer())
        if not buffer.rows:
            buffer.since = time.monotonic()
            self._wake.set()  # the worker must learn the new deadline
        buffer.rows.append(values)
        self._pending += 1
        self.rows_added += 1
        if len(buffer.rows) >= self.max_rows:
            self._seal(table)
            self._wake.set()

    async def add_durably(self, messages: Sequence[StoreMessage]) -> None:
        """Add, then return once every one of these rows is written (group commit).

        Concurrent callers share batches, so ``max_delay`` bounds the wait and the insert rate.
        Every caller whose rows went into one batch waits on that batch's one future, so a
        thousand callers per batch cost a thousand wake-ups, not a thousand futures and
        gathers. A rejected row counts as done: it is in the dead-letter file, and waiting for
        it would wait forever.
        """
        landings: list[asyncio.Future[None]] = []
        for message in messages:
            table, values = values_for(message)
            await self._add(table, values)
            landed = self._landing_of_last_row(table)
            if not landings or landings[-1] is not landed:
                landings.append(landed)
        for landed in landings:
            await landed

    def _landing_of_last_row(self, table: str) -> asyncio.Future[None]:
        """The future of the batch holding the row just added to ``table`` (no await since)."""
        holder: _Buffer | _Batch = self._buffers[table]
        if not holder.rows:  # the add filled the buffer and sealed it: it is the newest batch
            holder = self._ready[-1]
        if holder.landed is None:
            holder.landed = asyncio.get_running_loop().create_future()
        return holder.landed

    def _fail_waiters(self) -> None:
        holders: list[_Buffer | _Batch] = [*self._buffers.values(), *self._ready]
        for holder in holders:
            if holder.landed is not None and not holder.landed.done():
                holder.landed.set_exception(WriterClosed("store writer closed before the write"))
                holder.landed.exception()  # retrieved: nobody may be waiting any more

    async def flush(self) -> None:
        """Write (or reject) everything added so far; waits while ClickHouse is unavailable."""
        for table in list(self._buffers):
            self._seal(table)
        target = self._sealed
        self._wake.set()
        while self._written < target:
            if self._worker is None or self._worker.done():
                raise WriterClosed("store writer stopped before the flush completed")
            self._progress.clear()
            await self._progress.wait()

    async def close(self, grace: float | None = None) -> int:
        """Stop taking rows, write what can be written in ``grace`` seconds; return rows lost.

        Default grace: ``close_timeout``. Batches still unwritten then are abandoned and logged.
        """
        self._closing = True
        for table in list(self._buffers):
            self._seal(table)
        self._wake.set()
        self._progress.set()  # release adds waiting for room: they raise WriterClosed
        if self._worker is not None:
            limit = self.close_timeout if grace is None else grace
            done, _ = await asyncio.wait({self._worker}, timeout=limit)
            if not done:
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
        self._fail_waiters()
        lost = self._pending
        if lost:
            log.error(
                "store writer closed with %d rows unwritten (last error: %s)",
                lost,
                self.last_error,
            )
        if self._factory is not None and self._client is not None:
            client, self._client = self._client, None
            # an abandoned insert may still hold the client; don't let it hold up close too
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.to_thread(client.close), timeout=1.0)
        return lost

    def _seal(self, table: str) -> None:
        buffer = self._buffers.get(table)
        if buffer is None or not buffer.rows:
            return
        number = next(self._numbers)
        self._ready.append(_Batch(number, table, buffer.rows, uuid.uuid4().hex, buffer.landed))
        self._sealed = number
        buffer.rows = []
        buffer.landed = None

    def _seal_due(self) -> float | None:
        """Seal buffers whose oldest row waited max_delay; return seconds to the next deadline.

        Nothing is sealed by time while batches wait to be written: rows keep gathering in
        the buffer and go out as one larger batch, so a slow store gets fewer, bigger inserts
        instead of a growing queue of small ones.
        """
        if self._ready:
            return None
        now = time.monotonic()
        wait: float | None = None
        for table, buffer in self._buffers.items():
            if not buffer.rows:
                continue
            left = buffer.since + self.delays.get(table, self.max_delay) - now
            if left <= 0:
                self._seal(table)
            elif wait is None or left < wait:
                wait = left
        return wait

    async def _run(self) -> None:
        while True:
            wait = self._seal_due()
            if self._ready:
                batch = self._ready[0]
                rejected = await self._write(batch)
                self._ready.popleft()
                self._pending -= len(batch.rows)
                self._written = batch.number
                # rejected rows are done too (dead-lettered): their waiters must not hang
                if batch.landed is not None and not batch.landed.done():
                    batch.landed.set_result(None)
                self.rows_written += len(batch.rows) - rejected
                self.batches_written += 1
                self._progress.set()
                continue
            if self._closing:
                return
            self._wake.clear()
            await wait_at_most(self._wake, wait)

    async def _write(self, batch: _Batch) -> int:
        """Land a batch; returns how many of its rows were rejected for their data."""
        return await self._land(batch.table, batch.rows, batch.token)

    async def _land(
        self, table: str, rows: list[list[Any]], token: str, types_checked: bool = False
    ) -> int:
        """Insert ``rows`` until they land, bisecting around rows refused for their data.

        Halves get tokens derived from ``token`` (``token.0``, ``token.1``), and bisection is
        deterministic, so a retried half carries the same token and is deduplicated. A refusal
        under column types cached before this batch is retried once with fresh ones first
        (``types_checked``: already done for the batch being bisected).
        """
        delay = self.backoff_initial
        while True:
            try:
                await asyncio.to_thread(self._insert, table, rows, token)
                return 0
            except Refused as refused:
                error = refused.error
                self.last_error = error
                if not (refused.fresh_types or types_checked):
                    self._column_types.pop(table, None)
                    types_checked = True
                    continue  # types cached before a schema change refuse good rows too
                if len(rows) == 1:
                    await self._reject(table, rows[0], error)
                    return 1
                middle = len(rows) // 2
                log.warning(
                    "store refused %d rows for %s (%s): finding the bad ones",
                    len(rows),
                    table,
                    describe(error),
                )
                first = await self._land(table, rows[:middle], token + ".0", True)
                return first + await self._land(table, rows[middle:], token + ".1", True)
            except Exception as error:  # the store, not the rows: keep them, they are the data
                self.retries += 1
                self.last_error = error
                self._column_types.pop(table, None)  # the table may have been re-created
                log.warning(
                    "store write of %d rows to %s failed (retry in %.1fs): %s",
                    len(rows),
                    table,
                    delay,
                    error,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)

    def _insert(self, table: str, rows: list[list[Any]], token: str) -> None:
        """Runs in a worker thread: the client is synchronous.

        Only the insert itself can refuse the rows; failing to connect or to look up the
        column types is the store's trouble, whatever it raises.
        """
        if self._client is None:
            assert self._factory is not None
            self._client = self._factory()
        client = self._client
        types = self._column_types.get(table)
        fresh = types is None
        if types is None:
            context = client.create_insert_context(table, column_names=list(TABLE_COLUMNS[table]))
            types = [column_type.name for column_type in context.column_types]
            self._column_types[table] = types
        try:
            insert_rows(client, table, rows, dedup_token=token, column_types=types)
        except Exception as error:
            if about_data(error):
                raise Refused(error, fresh_types=fresh) from error
            raise

    async def _reject(self, table: str, values: list[Any], error: BaseException) -> None:
        """Record a row ClickHouse will never take: ERROR log, dead-letter file, counter."""
        self.rows_rejected += 1
        reason = describe(error)
        line = json.dumps(
            {
                "table": table,
                "error": reason,
                "rejected_at": datetime.now(UTC).isoformat(),
                "row": dict(zip(TABLE_COLUMNS[table], values, strict=True)),
            },
            default=jsonable,
        )
        if self.dead_letter is None:
            log.error("store rejected a row of %s: %s; row: %s", table, reason, line)
            return
        try:
            await asyncio.to_thread(append_line, self.dead_letter, line)
        except OSError as failure:
            log.error(
                "store rejected a row of %s: %s; cannot dead-letter it to %s (%s); row: %s",
                table,
                reason,
                self.dead_letter,
                failure,
                line,
            )
            return
        log.error("store rejected a row of %s: %s; recorded in %s", table, reason, self.dead_letter)
