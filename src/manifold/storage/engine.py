"""The database engine: one async SQLAlchemy engine per process, SQLite (default) or PostgreSQL by URL.

SQLite is opened so that an acknowledged write survives a crash of the process (and of the machine):
WAL journal, `synchronous=FULL` (every commit syncs the WAL), and a busy timeout so several workers or
replicas on one file wait for each other instead of failing. pysqlite's own transaction handling is turned
off (it starts transactions late and never for DDL); SQLAlchemy emits `BEGIN` itself, and `BEGIN IMMEDIATE`
for write transactions, which take the write lock up front: a deferred transaction that reads and then writes
can fail with SQLITE_BUSY when another writer got in between, whatever the busy timeout.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import SingletonThreadPool

from manifold.config import StorageSettings
from manifold.observability.metrics import STORAGE_WRITE_DURATION

SQLITE_FILE = "manifold.db"
BUSY_TIMEOUT_S = 30.0
CONNECT_TIMEOUT_S = 10.0
# Every engine is made with `hide_parameters=True`: a failed statement is logged, and its parameters are what
# clients sent (messages, metadata), which must not end up in the server's log.
_WRITE = "manifold_write"  # execution option: this transaction writes (SQLite: BEGIN IMMEDIATE)
_STARTED = "manifold_write_started"  # conn.info key: when the write transaction began
_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}


def database_url(settings: StorageSettings) -> URL:
    """The SQLAlchemy URL for the settings, with the async driver (`sqlite:///` → `sqlite+aiosqlite:///`)."""
    if settings.url is None:
        path = Path(settings.data_dir).expanduser().absolute() / SQLITE_FILE
        return URL.create("sqlite+aiosqlite", database=str(path))
    url = make_url(settings.url)
    driver = _DRIVERS.get(url.drivername)
    return url.set(drivername=driver) if driver is not None else url


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def create_engine(settings: StorageSettings) -> AsyncEngine:
    url = database_url(settings)
    engine = _sqlite_engine(url, settings) if is_sqlite(url) else _server_engine(url, settings)
    _time_writes(engine)
    return engine


def _time_writes(engine: AsyncEngine) -> None:
    """manifold_storage_write_seconds: each write transaction, BEGIN to COMMIT (docs/observability.md)."""

    @event.listens_for(engine.sync_engine, "begin")
    def _began(conn: Any) -> None:
        if conn.get_execution_options().get(_WRITE):
            conn.info[_STARTED] = time.monotonic()

    @event.listens_for(engine.sync_engine, "commit")
    def _committed(conn: Any) -> None:
        started = conn.info.pop(_STARTED, None)
        if started is not None:
            STORAGE_WRITE_DURATION.observe(time.monotonic() - started)

    @event.listens_for(engine.sync_engine, "rollback")
    def _rolled_back(conn: Any) -> None:
        conn.info.pop(_STARTED, None)


def _server_engine(url: URL, settings: StorageSettings) -> AsyncEngine:
    """The reads' pool on PostgreSQL (writes go through the writer's own connection): `pool_size` connections,
    no overflow. A read holds its connection for one or two statements, so `pool_size` reads in flight at once
    serve many more concurrent requests, and a burst beyond that waits its turn for a connection instead of
    opening one (a TCP connect, authentication and a server process) that is closed again when returned: a
    worker holds at most `pool_size` + 1 connections, the figure to set PostgreSQL's `max_connections` by."""
    return create_async_engine(
        url,
        hide_parameters=True,
        connect_args={"timeout": CONNECT_TIMEOUT_S},
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_pre_ping=True,  # a replica restarted behind us leaves dead connections in the pool
        pool_timeout=BUSY_TIMEOUT_S,
    )


def postgres_write_engine(url: URL) -> AsyncEngine:
    """The engine of the writer thread's own event loop on PostgreSQL (`writer.py`): exactly one connection (the
    writer runs one batch at a time: a second would never be used), checked by the writer after an idle spell
    only (a restarted server leaves it dead), not before every batch: under load that ping was one round trip of
    five per batch. It caches the statements it prepares (SQLAlchemy's asyncpg cache, 100 by default), which
    makes a batch of inserts, once its statement is prepared, one round trip (`unnest_insert.py`)."""
    return create_async_engine(
        url,
        hide_parameters=True,
        connect_args={"timeout": CONNECT_TIMEOUT_S},
        pool_size=1,
        max_overflow=0,
        pool_timeout=BUSY_TIMEOUT_S,
    )


def _sqlite_engine(url: URL, settings: StorageSettings) -> AsyncEngine:
    if url.database:
        os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
    engine = create_async_engine(
        url,
        hide_parameters=True,
        connect_args={"timeout": BUSY_TIMEOUT_S},
        pool_size=settings.pool_size,
        max_overflow=0,
        pool_timeout=BUSY_TIMEOUT_S,
    )

    _sqlite_events(engine.sync_engine)
    return engine


def sqlite_write_engine(url: URL) -> Engine:
    """The engine of the writer thread on SQLite (`writer.py`): the stdlib driver without the async adapter, one
    connection, every transaction `BEGIN IMMEDIATE`. A batch then runs in that thread in one go, where through
    aiosqlite each statement, the BEGIN and the COMMIT would each wait for a turn of a busy event loop."""
    engine = create_sync_engine(
        url.set(drivername="sqlite+pysqlite"),
        hide_parameters=True,
        connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
        poolclass=SingletonThreadPool,
        execution_options={_WRITE: True},
    )
    _sqlite_events(engine)
    return engine


def _null(_value: None) -> None:
    return None


def bind_cheaply() -> None:
    """Have pysqlite bind `None` and `bool` parameters from its adapter registry. By default it binds every value
    that is not exactly an int, float, str or bytes through its adaptation protocol, whose first step is a failed
    attribute lookup on a type: an AttributeError formatted and dropped (~2,000 machine instructions) for each
    NULL and each boolean. A ledger row has about five NULLs and a boolean: 1.9 µs a row to bind, 1.2 µs with
    these (`timeit` of a 100-row INSERT of ledger-shaped rows, docs/performance.md). What is stored is the same:
    NULL, and a boolean's integer (`tests/unit/test_storage_binding.py`).
    Process-wide (pysqlite's registry is), idempotent."""
    sqlite3.register_adapter(type(None), _null)
    sqlite3.register_adapter(bool, int)


def _sqlite_events(engine: Engine) -> None:
    bind_cheaply()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # autocommit at the driver: SQLAlchemy emits BEGIN below
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        _set_wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _set_wal(cursor: Any) -> None:
    """WAL is a property of the database file: once set, every later connection finds it. Switching to it needs
    a moment alone with the file, and SQLite answers "database is locked" at once (the busy handler does not
    apply) when several processes open a fresh database together, so the first ones retry briefly."""
    for attempt in range(50):
        try:
            cursor.execute("PRAGMA journal_mode")
            mode = cursor.fetchone()
            if mode and str(mode[0]).lower() == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except Exception as exc:  # sqlite3.OperationalError, wrapped by the driver adapter
            if "locked" not in str(exc).lower() or attempt == 49:
                raise
            time.sleep(0.02)


def write_engine(engine: AsyncEngine) -> AsyncEngine:
    """The same engine (and pool) whose transactions take the write lock at BEGIN on SQLite."""
    return engine.execution_options(**{_WRITE: True})


POLL_MAX_S = 0.002


class WriteLock:
    """Several processes (`--workers N`) writing one SQLite file take turns through this lock, held by each
    writer thread for one batch's transaction (a few milliseconds). SQLite's own busy handler sleeps in steps
    of up to 100 ms, so a writer that finds the file locked can sleep well past the moment it is free; this lock
    is polled every 2 ms at most. The wait is bounded like SQLite's (`BUSY_TIMEOUT_S`): a process stuck while
    holding it fails the others' batches with 503 instead of hanging them. (`BEGIN IMMEDIATE` with the busy
    timeout still guards writers that do not take it: migrations, an older version.)"""

    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    def acquire(self, timeout_s: float = BUSY_TIMEOUT_S) -> bool:
        """Wait until this process holds the lock (call from the writer thread); True if another process held
        it first (it is writing too: the caller should give it a turn after its batch)."""
        deadline = time.monotonic() + timeout_s
        delay = 0.0002
        contended = False
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return contended
            except BlockingIOError as busy:
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"the database file stayed locked by another process for {timeout_s:g} s"
                    ) from busy
                contended = True
                time.sleep(delay)
                delay = min(delay * 2, POLL_MAX_S)

    def release(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def write_lock(url: URL) -> WriteLock | None:
    """The cross-process write lock for a SQLite file (None for other databases: they lock rows, not files)."""
    if not is_sqlite(url) or not url.database or sys.platform == "win32":
        return None
    return WriteLock(os.path.abspath(url.database) + "-writer.lock")
