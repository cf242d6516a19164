"""Group commit: every durable write of a process goes through one writer, which commits the writes that arrived
while the previous commit was in flight together, in one transaction (on SQLite: one WAL sync), then answers each.

Why: with `synchronous=FULL` a commit costs a sync of the disk, and one transaction per request made 16 concurrent
clients queue for 16 syncs in a row. One transaction per batch costs one sync for all of them; a write still
returns only once its own transaction is committed, so what a client was told exists survives a crash.

- **No added wait.** The first write after a quiet spell commits at once; writes that arrive during a commit
  form the next batch (at most `max_batch` writes; the rest wait for the batch after).
- **Its own thread.** A batch runs from BEGIN to COMMIT in the writer's thread, on the writer's own connection,
  so the server's event loop hands it over once and gets the results once: on a busy loop each statement, the
  BEGIN and the COMMIT would otherwise each wait for a turn of the loop. On SQLite the thread uses the stdlib
  driver directly, and processes sharing the file take turns by an `flock` (`engine.WriteLock`), polled every
  2 ms at most where SQLite's busy handler sleeps up to 100 ms. On PostgreSQL the thread runs its own event
  loop with asyncpg.
- **Merged inserts.** Rows a batch inserts into one table go in one multi-row statement (`executemany`), tables
  in foreign-key order: one round trip per table on PostgreSQL, not one per write.
- **Failures stay in their batch.** A batch that fails fails its own writes and no others. When the failure was
  caused by one write's data (a duplicate id, a statement a write's callback got wrong) and not by the database
  being gone, the batch runs again with each write in its own savepoint, so only the faulty write fails.
- **Cancellation.** A caller that is cancelled (a client that left) does not cancel its write: the writer
  finishes it. `aclose()` lets pending writes finish before the engine closes.

A feature with something durable to write (stored objects, a usage ledger…) builds a `Write` and awaits
`DurableWrites.submit`; it never opens its own write transaction. A `Write`'s `apply` is a plain function on a
sync `Connection`: it runs in the writer thread on SQLite, so it must not touch the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
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
from manifold.storage.engine import WriteLock, is_sqlite, postgres_write_engine, sqlite_write_engine, write_lock
from manifold.storage.errors import log_failure, unavailable

log = logging.getLogger("manifold.storage")
T = TypeVar("T")
MAX_BATCH = 256
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


class DurableWrites:
    """The process's durable-write queue on one engine."""

    def __init__(self, engine: AsyncEngine, *, max_batch: int = MAX_BATCH) -> None:
        self._max_batch = max_batch
        self._lock: WriteLock | None = None
        self._sync_engine: Engine | None = None
        self._thread: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop_thread: _LoopThread | None = None
        if is_sqlite(engine.url):
            self._lock = write_lock(engine.url)
            self._sync_engine = sqlite_write_engine(engine.url)
            self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="manifold-writer")
        else:
            self._loop_thread = _LoopThread(engine.url)
        self._queue: collections.deque[_Pending] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self.batches = 0  # transactions committed or tried: a figure for tests and benchmarks
        self.writes = 0

    async def submit(self, write: Write[T]) -> T:
        """Queue `write`; return once it is committed (or raise: `ServiceUnavailableError` for a database
        failure, the write's own exception otherwise). Cancelling the caller does not cancel the write."""
        if self._closed:
            raise unavailable()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._queue.append(_Pending(write, future))
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return await asyncio.shield(future)

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def aclose(self, wait_s: float = 10.0) -> None:
        """Let the queued writes finish (for up to `wait_s` seconds), then refuse new ones."""
        self._closed = True
        task = self._task
        if task is not None:
            await asyncio.wait([task], timeout=wait_s)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        while self._queue:
            pending = self._queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(unavailable())
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.shutdown)
            self._thread = None
        if self._loop_thread is not None:
            await self._loop_thread.aclose()
            self._loop_thread = None
        if self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    async def _run(self) -> None:
        try:
            while self._queue:
                batch = [self._queue.popleft() for _ in range(min(len(self._queue), self._max_batch))]
                try:
                    await self._commit(batch)
                except asyncio.CancelledError:
                    for pending in batch:
                        if not pending.future.done():
                            pending.future.set_exception(unavailable())
                    raise
        finally:
            self._task = None

    async def _commit(self, batch: list[_Pending]) -> None:
        self.batches += 1
        self.writes += len(batch)
        try:
            results = await self._transaction(batch, isolated=False)
        except Exception as exc:  # noqa: BLE001 - whatever a write raised goes to its caller; the writer lives on
            if len(batch) > 1 and not database_gone(exc):
                log.warning("storage: a batch of %d writes failed (%s); retrying each on its own", len(batch), exc)
                await self._commit_isolated(batch)
                return
            self._fail(batch, exc)
            return
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    async def _commit_isolated(self, batch: list[_Pending]) -> None:
        self.batches += 1
        try:
            outcomes = await self._transaction(batch, isolated=True)
        except Exception as exc:  # noqa: BLE001 - handed to the callers, as above
            self._fail(batch, exc)
            return
        for pending, outcome in zip(batch, outcomes, strict=True):
            if pending.future.done():
                continue
            if isinstance(outcome, _Failed):
                pending.future.set_exception(_client_error(outcome.exc))
            else:
                pending.future.set_result(outcome)

    def _fail(self, batch: list[_Pending], exc: Exception) -> None:
        log_failure(f"{len(batch)} write(s) failed", exc)
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(_client_error(exc))

    async def _transaction(self, batch: list[_Pending], *, isolated: bool) -> list[Any]:
        writes = [pending.write for pending in batch]
        run = _isolated if isolated else _merged
        started = time.monotonic()
        if self._thread is not None:
            results = await asyncio.get_running_loop().run_in_executor(self._thread, self._in_thread, run, writes)
        elif self._loop_thread is None:
            raise unavailable()
        else:
            results = await self._loop_thread.run(run, writes)
        # manifold_storage_write_seconds: one observation per committed transaction, as its writers waited for it
        # (the hop to the writer's thread included), counted here on the event loop.
        STORAGE_WRITE_DURATION.observe(time.monotonic() - started)
        return results

    def _in_thread(self, run: _Batch, writes: list[Write[Any]]) -> list[Any]:
        assert self._sync_engine is not None
        if self._lock is not None:
            self._lock.acquire()
        try:
            with self._sync_engine.begin() as conn:
                return run(conn, writes)
        finally:
            if self._lock is not None:
                self._lock.release()


class _LoopThread:
    """A thread running its own event loop, where the writer's asyncpg connection lives (asyncpg connections
    belong to the loop that made them)."""

    def __init__(self, url: URL) -> None:
        import uvloop

        self._url = url
        self._engine: AsyncEngine | None = None
        self._loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="manifold-writer", daemon=True)
        self._thread.start()

    async def run(self, run: _Batch, writes: list[Write[Any]]) -> list[Any]:
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(self._batch(run, writes), self._loop))

    async def _batch(self, run: _Batch, writes: list[Write[Any]]) -> list[Any]:
        if self._engine is None:
            self._engine = postgres_write_engine(self._url)
        async with self._engine.begin() as conn:
            return await conn.run_sync(run, writes)

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
