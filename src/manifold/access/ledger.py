"""The usage ledger: one row per API request (who, which model and deployment, status, tokens, cost, latency),
written to the store's database in batches.

- **Off the request's path.** A request's row is built when its record is finished (the observing layer, after
  the last byte of the answer: a stream's row has its tokens) and appended to an in-memory buffer; nothing
  waits for the database.
- **Batched.** A background task writes the buffer every `flush_interval_s` (sooner once `max_batch` rows wait),
  at most `max_batch` rows per statement: one multi-row INSERT, through the store's writer (`storage/writer.py`,
  group commit), so a batch is one transaction shared with the process's other durable writes.
- **Bounded.** A row leaves the buffer only once its batch is committed. While the database is down the task
  retries (every interval, backing off to 5 s) and keeps at most `max_buffered_rows` rows; a row that finds the
  buffer full is dropped, counted (`dropped`) and reported in one log line per interval.
- **Shutdown.** `aclose()` (graceful shutdown, after the server stopped taking requests and in-flight requests
  ended) writes what is buffered, for up to `SHUTDOWN_WAIT_S`. A SIGKILL loses the rows still in the buffer: those
  of requests that ended since the last committed flush, i.e. about one `flush_interval_s` (plus the commit in
  flight), or everything kept while the database was unreachable.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from manifold.config import LedgerSettings
from manifold.errors import ServiceUnavailableError
from manifold.observability.metrics import LEDGER_BACKLOG, LEDGER_DROPPED
from manifold.observability.record import RequestRecord

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from manifold.storage.store import Store

__all__ = ["SHUTDOWN_WAIT_S", "Ledger"]

log = logging.getLogger("manifold.ledger")
SHUTDOWN_WAIT_S = 10.0
MAX_BACKOFF_S = 5.0
Row = tuple[Any, ...]


def row_of(rec: RequestRecord) -> Row:
    """The ledger row of a finished request: its values in `COLUMNS` order."""
    cost = rec.cost_micros
    if cost is None and rec.cost is not None:
        cost = round(rec.cost * 1_000_000)
    ttft = rec.ttft
    cached, reasoning = rec._usage_details()  # one read of `usage` for both
    return (
        rec.request_id,
        round(rec.wall_start * 1000),
        rec.key_id,
        rec.key_alias,
        rec.team_id,
        rec.user,
        rec.model_label or rec.model,
        rec.deployment,
        rec.route,
        rec.status,
        rec.stream,
        rec.input_tokens,
        cached,
        rec.output_tokens,
        reasoning,
        cost,
        round((rec.end - rec.start) * 1000),
        None if ttft is None else round(ttft * 1000),
        rec.attempts,
    )


COLUMNS: tuple[str, ...] = (
    "request_id",
    "created_at",
    "key_id",
    "key_alias",
    "team_id",
    "user_id",
    "model",
    "deployment",
    "endpoint",
    "status",
    "stream",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_micros",
    "latency_ms",
    "ttft_ms",
    "attempts",
)
_STATEMENTS: dict[tuple[str, int], str] = {}


def _statement(paramstyle: str, count: int) -> str:
    """`INSERT INTO usage (…) VALUES (…), (…), …` for `count` rows, in the driver's own placeholders. Built as
    text (and kept per size): SQLAlchemy's compiler takes ~0.3 ms per row for a multi-row VALUES of this width,
    more than the rest of a request."""
    key = (paramstyle, count)
    sql = _STATEMENTS.get(key)
    if sql is None:
        width = len(COLUMNS)
        if paramstyle == "numeric_dollar":  # asyncpg
            groups = (
                "(" + ", ".join(f"${row * width + col + 1}" for col in range(width)) + ")" for row in range(count)
            )
        elif paramstyle == "qmark":  # sqlite3
            groups = ("(" + ", ".join("?" * width) + ")" for _ in range(count))
        else:
            raise RuntimeError(f"the usage ledger does not know the placeholders of paramstyle {paramstyle!r}")
        sql = f"INSERT INTO usage ({', '.join(COLUMNS)}) VALUES " + ", ".join(groups)
        if len(_STATEMENTS) < 4096:
            _STATEMENTS[key] = sql
    return sql


def _insert(rows: list[Row]) -> Any:
    def apply(conn: Connection) -> None:
        params = tuple(itertools.chain.from_iterable(rows))
        conn.exec_driver_sql(_statement(conn.dialect.paramstyle, len(rows)), params)  # one statement

    return apply


_LIMITS = {0: 128, 2: 64, 4: 64}  # request_id, key_id, team_id: their columns' lengths
_INT64 = 2**63


def _storable(row: Row) -> Row:
    """The row with what a database refuses made storable: integers beyond 64 bits nulled, NUL characters
    removed, ids cut to their columns' lengths."""
    out: list[Any] = []
    for i, value in enumerate(row):
        if isinstance(value, int) and not isinstance(value, bool) and not -_INT64 <= value < _INT64:
            value = None
        elif isinstance(value, str):
            value = value.replace("\x00", "")[: _LIMITS.get(i)]
        out.append(value)
    return tuple(out)


def _why(exc: BaseException) -> str:
    """The failure in one short line (a driver's message can quote the whole statement on the next lines)."""
    cause = exc.__cause__ or exc
    return f"{type(cause).__name__}: {str(cause).partition(chr(10))[0][:300]}"


class Ledger:
    """Rows of `record`ed requests, written by `start`'s task; `ignored`: route templates that get no row
    (health, metrics), besides unmatched paths and `/admin/…`."""

    def __init__(self, store: Store, settings: LedgerSettings, ignored: Iterable[str] = ()) -> None:
        self.store = store
        self.settings = settings
        self._ignored = frozenset(ignored)
        self._rows: collections.deque[Row] = collections.deque()
        self._routes: dict[str | None, bool] = {}  # route template → whether it gets a row (templates: bounded)
        self._max_batch = settings.max_batch
        self._max_rows = settings.max_buffered_rows  # 0 once closed for good (`aclose` without a task)
        self._wake = asyncio.Event()
        self._flushing = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0  # rows committed (figures for tests, benchmarks and the shutdown line)
        self.dropped = 0  # rows refused because the buffer was full (or left at shutdown)
        self.failed_flushes = 0
        self._dropped_logged = 0
        self._failure_logged_at = 0.0

    @property
    def pending(self) -> int:
        return len(self._rows)

    def record(self, rec: RequestRecord) -> None:
        """Buffer the row of a finished request (an observer sink: called once per request, on the loop)."""
        route = rec.route
        recorded = self._routes.get(route)
        if recorded is None:
            recorded = self._routes[route] = not (route is None or route in self._ignored or route.startswith("/admin"))
        if not recorded:
            return
        rows = self._rows
        if len(rows) >= self._max_rows:
            self.dropped += 1
            LEDGER_DROPPED.inc()
            return
        rows.append(row_of(rec))
        if len(rows) >= self._max_batch:
            self._wake.set()

    async def flush(self) -> bool:
        """Write the buffered rows now (benchmarks, tests); False if the database refused them (they stay)."""
        return await self._flush()

    def start(self) -> None:
        if self._task is None and not self._closing:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self, wait_s: float = SHUTDOWN_WAIT_S) -> None:
        """Write what is buffered (for up to `wait_s` seconds), then stop; count what could not be written."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            await asyncio.wait([task], timeout=wait_s)
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            self._task = None
        self._max_rows = 0  # nothing writes any more: later rows are counted as dropped
        if self._rows:
            self.dropped += len(self._rows)
            LEDGER_DROPPED.inc(len(self._rows))
            log.error("ledger: %d row(s) not written at shutdown (the database did not take them)", len(self._rows))
            self._rows.clear()
        self._report_drops()

    async def _run(self) -> None:
        interval = self.settings.flush_interval_s
        delay = interval
        while True:
            by_size = False
            if not self._closing:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                        by_size = not self._closing
            self._wake.clear()
            ok = await self._flush(whole_batches=by_size)
            LEDGER_BACKLOG.set(len(self._rows))
            self._report_drops()
            if self._closing and not self._rows:
                return  # else what came in during the last flush, at once (closing does not wait on `_wake`)
            if ok:
                delay = interval
            else:
                delay = min(delay * 2, MAX_BACKOFF_S)
                if self._closing:
                    await asyncio.sleep(min(delay, 1.0))

    async def _flush(self, whole_batches: bool = False) -> bool:
        """Write the buffered rows, a batch at a time; False when the database refused (the rows stay). With
        `whole_batches` (woken because `max_batch` rows wait) only full batches: the rest waits for the next."""
        async with self._flushing:  # one flush at a time: a batch leaves the buffer only once committed
            return await self._flush_batches(whole_batches)

    async def _flush_batches(self, whole_batches: bool = False) -> bool:
        rows = self._rows
        # The rows buffered now; those that arrive meanwhile wait for the next flush. Draining until the buffer
        # was empty made a busy server write a stream of small batches (what arrived during each write: ~20
        # rows, 50 transactions a second at 1,000 requests a second) instead of one batch a `flush_interval_s`.
        # Woken by size, a flush leaves the tail that came with the last row for the next one, so that a busy
        # server writes full batches, not a full one and a few rows each time.
        left = len(rows)
        if whole_batches:
            left -= left % self._max_batch
        while left > 0 and rows:
            size = min(left, len(rows), self._max_batch)
            left -= size
            batch = list(itertools.islice(rows, size))
            failure = await self._write(batch)
            if failure is not None and not self._database_gone(failure):
                # The database refused the rows' data (a number out of range, a NUL in a text…), not the
                # connection: once more with the values it cannot store nulled, else the batch is dropped, so
                # that one bad row never stops the ledger.
                cleaned = [_storable(row) for row in batch]
                failure = await self._write(cleaned) if cleaned != batch else failure
                if failure is not None and not self._database_gone(failure):
                    for _ in range(size):
                        rows.popleft()
                    self.dropped += size
                    LEDGER_DROPPED.inc(size)
                    log.error("ledger: %d usage row(s) dropped: the database refused them (%s)", size, _why(failure))
                    continue
            if failure is not None:
                self.failed_flushes += 1
                self._report_failure(failure)
                return False
            for _ in range(size):
                rows.popleft()
            self.written += size
        return True

    async def _write(self, batch: list[Row]) -> Exception | None:
        try:
            from manifold.storage.writer import Write

            writes = await self.store.writes()
            if self.store.engine.dialect.name == "postgresql":
                # Plain rows: the writer sends them as one statement in autocommit (storage/unnest_insert.py), one
                # round trip where BEGIN, this statement and COMMIT were three.
                from manifold.storage.tables import usage

                await writes.submit(Write(inserts=[(usage, [dict(zip(COLUMNS, row, strict=True)) for row in batch])]))
            else:  # SQLite: one multi-row statement built here (cheaper than the writer's executemany)
                await writes.submit(Write(apply=_insert(batch)))
        except Exception as exc:  # noqa: BLE001 - told apart by the caller: database gone (retry) or data refused
            return exc
        return None

    def _database_gone(self, exc: Exception) -> bool:
        from manifold.storage.writer import database_gone

        if not self.store.is_open:
            return True
        if isinstance(exc, ServiceUnavailableError):  # the writer's answer for any database failure
            cause = exc.__cause__
            return not isinstance(cause, Exception) or database_gone(cause)
        return database_gone(exc)

    def _report_failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._failure_logged_at >= self.settings.flush_interval_s:
            self._failure_logged_at = now
            log.warning("ledger: cannot write usage rows (%s); %d row(s) kept, retrying", _why(exc), len(self._rows))

    def _report_drops(self) -> None:
        if self.dropped > self._dropped_logged:
            log.error(
                "ledger: %d usage row(s) dropped (buffer full at %d rows: the database is unreachable); %d in all",
                self.dropped - self._dropped_logged,
                self.settings.max_buffered_rows,
                self.dropped,
            )
            self._dropped_logged = self.dropped
