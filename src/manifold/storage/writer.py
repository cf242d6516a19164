"""Group commit: every durable write of a process goes through one writer, which commits the writes that arrived
while the previous commit was in flight together, in one transaction (on SQLite: one WAL sync), then answers each.

Why: with `synchronous=FULL` a commit costs a sync of the disk, and one transaction per request made 16 concurrent
clients queue for 16 syncs in a row. One transaction per batch costs one sync for all of them; a write still
returns only once its own transaction is committed, so what a client was told exists survives a crash.

- **No added wait.** The first write after a quiet spell commits at once; writes that arrive during a commit
  form the next batch (at most `max_batch` writes; the rest wait for the batch after).
- **Its own thread.** The batching and each batch, from BEGIN to COMMIT, run in the writer's thread, on the
  writer's own connection: the next batch starts as soon as the previous one committed, without waiting for a
  turn of the server's event loop, and a batch's callers are answered in one hop back to the loop
  (`call_soon_threadsafe`), each woken by its own future. On a busy loop every hop is a wait for a turn: a
  task that batched and a shield around each caller's future cost four turns between the COMMIT and the
  caller's wake-up where this costs two. On SQLite the thread uses the stdlib driver directly, and processes
  sharing the file take turns by an `flock` (`engine.WriteLock`), polled every 2 ms at most where SQLite's
  busy handler sleeps up to 100 ms. On PostgreSQL the thread hands each batch to an event loop of its own
  (`_LoopThread`) with asyncpg, and waits for it.
- **Merged inserts.** Rows a batch inserts into one table go in one multi-row statement (`executemany`), tables
  in foreign-key order. On PostgreSQL a batch made only of inserts is one statement in autocommit instead, for
  all its tables (`unnest_insert.py`): one round trip, where `BEGIN`, one per table and `COMMIT` were three or
  more.
- **Failures stay in their batch.** A batch that fails fails its own writes and no others. When the failure was
  caused by one write's data (a duplicate id, a statement a write's callback got wrong) and not by the database
  being gone, the batch runs again, as a transaction, with each write in its own savepoint, so only the faulty
  write fails.
- **Cancellation.** A caller that is cancelled (a client that left) does not cancel its write: the writer
  finishes it (only the caller's future is cancelled). `aclose()` lets pending writes finish before the engine closes.

A feature with something durable to write (stored objects, a usage ledger…) builds a `Write` and awaits
`DurableWrites.submit`; it never opens its own write transaction. A `Write`'s `apply` is a plain function on a
sync `Connection`: it runs in the writer thread on SQLite, so it must not touch the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine, Table, insert
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from manifold.observability.metrics import STORAGE_WRITE_DURATION
from manifold.storage import unnest_insert
from manifold.storage.engine import (
    POLL_MAX_S,
    WriteLock,
    is_sqlite,
    postgres_write_engine,
    sqlite_write_engine,
    write_lock,
)
from manifold.storage.errors import log_failure, unavailable

log = logging.getLogger("manifold.storage")
T = TypeVar("T")
MAX_BATCH = 256
PING_AFTER_IDLE_S = 1.0  # PostgreSQL: a batch after this long without one checks its connection first
Rows = list[dict[str, Any]]
_Batch = Callable[[Connection, list["Write[Any]"]], list[Any]]


class Write(Generic[T]):
    """One durable write: rows to insert (merged with the other writes' rows of its batch), then `apply`, run on
    the batch's connection inside its transaction (its result is what `submit` returns)."""

    __slots__ = ("apply", "inserts")

    def __init__(
        self,
        inserts: Sequence[tuple[Table, Rows]] = (),
        apply: Callable[[Connection], T] | None = None,
    ) -> None:
        self.inserts = inserts
        self.apply = apply


class _Pending:
    __slots__ = ("future", "write")

    def __init__(self, write: Write[Any], future: asyncio.Future[Any]) -> None:
        self.write = write
        self.future = future


def _retrieve(future: asyncio.Future[Any]) -> None:
    # A caller that left no longer awaits its future; the writer logged the failure already.
    if not future.cancelled():
        future.exception()


def database_gone(exc: BaseException) -> bool:
    """A failure of the connection or the server, not of one write's data: running the batch again, write by
    write, would only fail each of them again, slowly."""
    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


_STOP = None  # handed to the writer thread by `aclose`: finish what came before, then end


class DurableWrites:
    """The process's durable-write queue on one engine.

    The batching runs in the writer's thread, not in a task of the event loop: a batch starts as soon as the
    previous one has committed (with the writes that came meanwhile), where a task would first wait for a turn
    of a busy loop, and each batch's callers are answered in one hop back to the loop (`call_soon_threadsafe`),
    each caller's task woken by its own future (no `asyncio.shield` in between: a cancelled caller cancels only
    its future, never its write). The writes that one turn of the loop submits reach the thread together, so
    they form one batch when the writer is idle."""

    def __init__(self, engine: AsyncEngine, *, max_batch: int = MAX_BATCH) -> None:
        self._max_batch = max_batch
        self._lock: WriteLock | None = None
        self._sync_engine: Engine | None = None
        self._loop_thread: _LoopThread | None = None
        if is_sqlite(engine.url):
            self._lock = write_lock(engine.url)
            self._sync_engine = sqlite_write_engine(engine.url)
        else:
            self._loop_thread = _LoopThread(engine.url)
        self._submitted: list[_Pending] = []  # this turn of the loop's writes, handed over at its end
        self._queue: collections.deque[_Pending | None] = collections.deque()  # the thread's, under _ready
        self._ready = threading.Condition(threading.Lock())
        self._in_flight = 0
        self._give_turn = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self.batches = 0  # transactions committed or tried: a figure for tests and benchmarks
        self.writes = 0

    async def submit(self, write: Write[T]) -> T:
        """Queue `write`; return once it is committed (or raise: `ServiceUnavailableError` for a database
        failure, the write's own exception otherwise). Cancelling the caller does not cancel the write."""
        if self._closed:
            raise unavailable()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        future.add_done_callback(_retrieve)
        if not self._submitted:
            loop.call_soon(self._hand_over)
        self._submitted.append(_Pending(write, future))
        return await future

    @property
    def pending(self) -> int:
        return len(self._submitted) + len(self._queue) + self._in_flight

    def _hand_over(self) -> None:
        submitted, self._submitted = self._submitted, []
        if not submitted:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="manifold-writer", daemon=True)
            self._thread.start()
        with self._ready:
            self._queue.extend(submitted)
            self._ready.notify()

    async def aclose(self, wait_s: float = 10.0) -> None:
        """Let the queued writes finish (for up to `wait_s` seconds), then refuse new ones."""
        self._closed = True
        self._hand_over()
        thread = self._thread
        if thread is not None:
            with self._ready:
                self._queue.append(_STOP)
                self._ready.notify()
            await asyncio.to_thread(thread.join, wait_s)
            await asyncio.sleep(0)  # the answers of the last batch, handed to the loop, are delivered
        with self._ready:
            left = [p for p in self._queue if p is not None]
            self._queue.clear()
        for pending in left:
            if not pending.future.done():
                pending.future.set_exception(unavailable())
        if thread is not None and thread.is_alive():
            return  # stuck in a batch past `wait_s`: the daemon thread keeps its engine; the process is ending
        if self._loop_thread is not None:
            await self._loop_thread.aclose()
            self._loop_thread = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # -- the writer's thread ---------------------------------------------------------------------------------

    def _work(self) -> None:
        stopping = False
        while not stopping:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                batch: list[_Pending] = []
                while self._queue and len(batch) < self._max_batch:
                    pending = self._queue.popleft()
                    if pending is None:
                        stopping = True
                        break
                    batch.append(pending)
                self._in_flight = len(batch)
            if batch:
                self._give_turn = False
                try:
                    self._commit(batch)
                except BaseException as exc:  # noqa: BLE001 - the thread must live on: no caller may wait forever
                    log_failure(f"the writer failed a batch of {len(batch)} write(s)", exc)
                    self._answer(batch, [_Raised(unavailable())] * len(batch), time.monotonic())
            self._in_flight = 0
            if self._give_turn:
                # Another worker is writing to the file too and polls for its lock: without a pause this
                # thread, whose next batch is often ready, would take the lock again at once, batch after
                # batch. The pause comes after this batch's callers were answered.
                time.sleep(POLL_MAX_S * 1.25)

    def _commit(self, batch: list[_Pending]) -> None:
        self.batches += 1
        self.writes += len(batch)
        started = time.monotonic()
        writes = [pending.write for pending in batch]
        outcomes: list[Any]
        try:
            outcomes = self._run(writes)
        except Exception as exc:  # noqa: BLE001 - whatever a write raised goes to its caller; the writer lives on
            if len(batch) > 1 and not database_gone(exc):
                log.warning("storage: a batch of %d writes failed (%s); retrying each on its own", len(batch), exc)
                self.batches += 1
                try:
                    isolated = self._transaction(_isolated, writes)
                    outcomes = [_Raised(_client_error(o.exc)) if isinstance(o, _Failed) else o for o in isolated]
                except Exception as again:  # noqa: BLE001 - handed to the callers, as below
                    outcomes = self._failed(batch, again)
            else:
                outcomes = self._failed(batch, exc)
        self._answer(batch, outcomes, started)

    def _run(self, writes: list[Write[Any]]) -> list[Any]:
        """On PostgreSQL a batch of plain inserts is one statement in autocommit (`unnest_insert.py`): one round
        trip. Anything else, and every batch on SQLite, is one transaction of merged inserts and statements."""
        if self._loop_thread is not None:
            inserts = _plain_inserts(writes)
            if inserts is not None:
                if inserts:
                    tables = list(inserts)
                    sql = unnest_insert.statement(tables)
                    self._loop_thread.run_statement(sql, unnest_insert.parameters(tables, inserts))
                return [None] * len(writes)
        return self._transaction(_merged, writes)

    def _failed(self, batch: list[_Pending], exc: Exception) -> list[Any]:
        log_failure(f"{len(batch)} write(s) failed", exc)
        error = _client_error(exc)
        return [_Raised(error)] * len(batch)

    def _answer(self, batch: list[_Pending], outcomes: list[Any], started: float) -> None:
        loops: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, Any]]] = {}
        for pending, outcome in zip(batch, outcomes, strict=True):
            loops.setdefault(pending.future.get_loop(), []).append((pending, outcome))
        for loop, answers in loops.items():
            try:
                loop.call_soon_threadsafe(_deliver, answers, started)
            except RuntimeError:  # that loop is closed: nobody is left to answer
                pass

    def _transaction(self, run: _Batch, writes: list[Write[Any]]) -> list[Any]:
        if self._loop_thread is not None:
            return self._loop_thread.run(run, writes)
        if self._sync_engine is None:
            raise unavailable()
        contended = self._lock is not None and self._lock.acquire()
        try:
            with self._sync_engine.begin() as conn:
                return run(conn, writes)
        finally:
            if self._lock is not None:
                self._lock.release()
                self._give_turn = contended


class _Raised:
    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _deliver(answers: list[tuple[_Pending, Any]], started: float) -> None:
    """On the callers' loop: answer each write of a batch (a caller that left has a cancelled future)."""
    # manifold_storage_write_seconds: one observation per committed transaction, as its writers waited for it
    # (from BEGIN to the answer's arrival on the loop).
    STORAGE_WRITE_DURATION.observe(time.monotonic() - started)
    for pending, outcome in answers:
        if pending.future.done():
            continue
        if isinstance(outcome, _Raised):
            pending.future.set_exception(outcome.exc)
        else:
            pending.future.set_result(outcome)


class _LoopThread:
    """A thread running its own event loop, where the writer's asyncpg connection lives (asyncpg connections
    belong to the loop that made them)."""

    def __init__(self, url: URL) -> None:
        import uvloop

        self._url = url
        self._engine: AsyncEngine | None = None
        self._last_batch = 0.0
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="manifold-writer", daemon=True)
        self._thread.start()

    def run(self, run: _Batch, writes: list[Write[Any]]) -> list[Any]:
        """From the writer's thread: one batch on this loop, waited for."""
        return asyncio.run_coroutine_threadsafe(self._batch(run, writes), self._loop).result()

    def run_statement(self, sql: str, parameters: tuple[Any, ...]) -> None:
        """From the writer's thread: one statement in autocommit (no BEGIN, no COMMIT), waited for."""
        asyncio.run_coroutine_threadsafe(self._statement(sql, parameters), self._loop).result()

    async def _batch(self, run: _Batch, writes: list[Write[Any]]) -> list[Any]:
        engine = await self._checked_engine()
        async with engine.begin() as conn:
            results = await conn.run_sync(run, writes)
        self._last_batch = time.monotonic()
        return results

    async def _statement(self, sql: str, parameters: tuple[Any, ...]) -> None:
        engine = await self._checked_engine()
        async with engine.connect() as conn:
            # asyncpg in autocommit sends the statement alone: acknowledged means committed (and synced, with
            # PostgreSQL's default synchronous_commit), as a COMMIT's acknowledgement did.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            await conn.exec_driver_sql(sql, parameters)
        self._last_batch = time.monotonic()

    async def _checked_engine(self) -> AsyncEngine:
        if self._engine is None:
            self._engine = postgres_write_engine(self._url)
        if time.monotonic() - self._last_batch > PING_AFTER_IDLE_S:
            await self._ping(self._engine)
        return self._engine

    @staticmethod
    async def _ping(engine: AsyncEngine) -> None:
        """After an idle spell, check the connection (a restarted server leaves it dead): a dead one is
        invalidated here, so the batch gets a new one. Back-to-back batches skip this round trip."""
        try:
            async with engine.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")  # no BEGIN and ROLLBACK around it
                await conn.exec_driver_sql("SELECT 1")
        except SQLAlchemyError:
            return  # invalidated if it was a disconnect; if the database is down, the batch says so

    async def aclose(self) -> None:
        if self._engine is not None:
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._engine.dispose(), self._loop))
            self._engine = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        await asyncio.to_thread(self._thread.join)
        self._loop.close()


class _Failed:
    __slots__ = ("exc",)

    def __init__(self, exc: Exception) -> None:
        self.exc = exc


def _client_error(exc: Exception) -> Exception:
    """What the caller gets: a database failure as the documented 503, anything else as it was raised."""
    if isinstance(exc, SQLAlchemyError | OSError | TimeoutError):
        error = unavailable()
        error.__cause__ = exc
        return error
    return exc


def _merged(conn: Connection, writes: list[Write[Any]]) -> list[Any]:
    results: list[Any] = []
    rows: dict[Table, Rows] = {}
    for write in writes:
        for table, table_rows in write.inserts:
            rows.setdefault(table, []).extend(table_rows)
        if write.apply is not None:
            _flush(conn, rows)  # the write's statements see its own rows and those queued before it
            results.append(write.apply(conn))
        else:
            results.append(None)
    _flush(conn, rows)
    return results


def _plain_inserts(writes: list[Write[Any]]) -> dict[Table, Rows] | None:
    """The rows of a batch made only of inserts, merged per table, parents first (None: a write has statements
    of its own, or a row that the one-statement insert does not carry)."""
    rows: dict[Table, Rows] = {}
    for write in writes:
        if write.apply is not None:
            return None
        for table, table_rows in write.inserts:
            if table_rows:
                rows.setdefault(table, []).extend(table_rows)
    ordered = {table: rows[table] for table in sorted(rows, key=_dependency_rank)}
    return ordered if unnest_insert.fits(list(ordered), ordered) else None


def _flush(conn: Connection, rows: dict[Table, Rows]) -> None:
    # Parents before children (foreign keys); within a table, in the order the writes came.
    for table in sorted(rows, key=_dependency_rank):
        if rows[table]:
            conn.execute(insert(table), rows[table])
    rows.clear()


_RANKS: dict[Table, int] = {}


def _dependency_rank(table: Table) -> int:
    rank = _RANKS.get(table)
    if rank is None:
        rank = _RANKS[table] = table.metadata.sorted_tables.index(table)
    return rank


def _isolated(conn: Connection, writes: list[Write[Any]]) -> list[Any]:
    """Each write in its own savepoint: one that fails is rolled back alone and its error is its outcome."""
    outcomes: list[Any] = []
    for write in writes:
        try:
            with conn.begin_nested():
                for table, table_rows in write.inserts:
                    if table_rows:
                        conn.execute(insert(table), table_rows)
                outcomes.append(None if write.apply is None else write.apply(conn))
        except Exception as exc:
            if database_gone(exc):
                raise
            outcomes.append(_Failed(exc))
    return outcomes
