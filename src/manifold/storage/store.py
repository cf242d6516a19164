"""The store: one engine for the process, migrated when it opens, the repositories built on it, and the one
writer (`writer.DurableWrites`: group commit) that every durable write of the process goes through.

The server starts opening the store at startup (`start()`) without waiting for it: importing SQLAlchemy and
its drivers takes a few hundred milliseconds (more on a busy machine), which would otherwise delay every start
whether or not anything is ever stored, and a database that is down must not keep the gateway from answering
requests that store nothing. The import runs in a thread, so the event loop keeps serving meanwhile. Whatever
needs the store awaits the first attempt (`chat_completions()`). If it failed, the store tries again every
`retry_interval_s` seconds in the background, logging each failed attempt once; meanwhile what needs the store
gets 503 at once (no attempt, and no log line, per request) and `/health/ready` says not ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from manifold.config import StorageSettings
from manifold.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from manifold.storage.access_keys import AccessStore
    from manifold.storage.chat_completions import ChatCompletionStore
    from manifold.storage.stored_responses import ResponseStore
    from manifold.storage.writer import DurableWrites

log = logging.getLogger("manifold.storage")
_SHUTDOWN_WAIT_S = 10.0


def _load() -> Any:
    """The storage modules (and with them SQLAlchemy and the drivers), imported off the event loop."""
    from manifold.storage import access_keys, chat_completions, engine, errors, migrations, stored_responses, writer

    return access_keys, chat_completions, engine, errors, migrations, stored_responses, writer


class Store:
    """A feature that stores something new adds its repository here, next to `chat_completions`, on the same
    engine and writer, and its tables with a migration (see `migrations.py`)."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.description = "(not open)"
        self._engine: AsyncEngine | None = None
        self._writes: DurableWrites | None = None
        self._chat_completions: ChatCompletionStore | None = None
        self._responses: ResponseStore | None = None
        self._access: AccessStore | None = None
        self._opening: asyncio.Task[None] | None = None
        self._attempted: asyncio.Event | None = None  # set once the first attempt to open ended
        self._error: BaseException | None = None

    def start(self) -> None:
        """Begin opening (connect, migrate) in the background, retrying until it works; call from within the
        event loop."""
        if self._engine is None and self._opening is None:
            self._attempted = asyncio.Event()
            self._opening = asyncio.get_running_loop().create_task(self._keep_opening())

    async def open(self) -> None:
        """Open now (or wait for the first attempt): raise `ServiceUnavailableError` if the database cannot be
        reached or migrated."""
        if self._engine is not None:
            return
        self.start()
        assert self._attempted is not None
        if not self._attempted.is_set():
            await self._attempted.wait()
        if self._engine is None:
            raise _unavailable() from self._error

    async def chat_completions(self) -> ChatCompletionStore:
        if self._chat_completions is None:
            await self.open()
        assert self._chat_completions is not None
        return self._chat_completions

    async def responses(self) -> ResponseStore:
        if self._responses is None:
            await self.open()
        assert self._responses is not None
        return self._responses

    async def access(self) -> AccessStore:
        """Virtual keys and teams (docs/access.md)."""
        if self._access is None:
            await self.open()
        assert self._access is not None
        return self._access

    async def writes(self) -> DurableWrites:
        """The process's durable-write queue (for a feature with its own tables, e.g. a usage ledger)."""
        if self._writes is None:
            await self.open()
        assert self._writes is not None
        return self._writes

    @property
    def is_open(self) -> bool:
        return self._engine is not None

    @property
    def state(self) -> str:
        """`open`, `opening` (the first attempt is under way), `unavailable` (retrying), or `closed`."""
        if self._engine is not None:
            return "open"
        if self._opening is None:
            return "closed"
        return "unavailable" if self._attempted is not None and self._attempted.is_set() else "opening"

    async def ready(self, timeout_s: float = 2.0, opening_s: float = 5.0) -> str:
        """The state for `/health/ready`. A probe that comes while the store is still opening waits for the
        first attempt (up to `opening_s`: it takes a moment at every start); an open store is asked `SELECT 1`
        (a database that went down after start-up reads `unavailable`, and `open` again once it answers)."""
        attempted = self._attempted
        if self.state == "opening" and attempted is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(opening_s):
                    await attempted.wait()
        state = self.state
        if state != "open" or self._engine is None:
            return state
        from sqlalchemy import text

        try:
            async with asyncio.timeout(timeout_s), self._engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - any failure is "not ready"; logged at most every few seconds
            from manifold.storage.errors import log_failure

            log_failure("readiness check failed", exc)
            return "unavailable"
        return "open"

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    async def _keep_opening(self) -> None:
        assert self._attempted is not None
        while True:
            try:
                await self._open()
                self._error = None
                return
            except Exception as exc:  # noqa: BLE001 - logged once per attempt; requests get 503 meanwhile
                self._error = exc
                cause = exc.__cause__ or exc
                log.error(
                    "storage: cannot open %s: %s: %s (retrying in %g s)",
                    self.description,
                    type(cause).__name__,
                    cause,
                    self.settings.retry_interval_s,
                )
            finally:
                self._attempted.set()
            await asyncio.sleep(self.settings.retry_interval_s)

    async def _open(self) -> None:
        loaded = await asyncio.to_thread(_load)
        access_keys, chat_completions, engine_module, errors, migrations, stored_responses, writer = loaded
        url = engine_module.database_url(self.settings)
        self.description = url.render_as_string(hide_password=True)
        async with errors.storage_errors():
            try:
                engine = engine_module.create_engine(self.settings)
            except ImportError as exc:  # the URL names a driver that is not installed (`manifold check` says so)
                raise _unavailable() from exc
            try:
                applied = await migrations.migrate(engine)
            except BaseException:
                await engine.dispose()
                raise
        if applied:
            log.info("storage: %s migrated to schema version %d", self.description, applied[-1])
        else:
            log.info("storage: %s is ready", self.description)
        self._writes = writer.DurableWrites(engine)
        self._engine = engine
        self._chat_completions = chat_completions.ChatCompletionStore(engine, self._writes)
        self._responses = stored_responses.ResponseStore(engine, self._writes)
        self._access = access_keys.AccessStore(engine, self._writes)

    async def aclose(self) -> None:
        """Let pending writes finish (those of clients that left, too), then close the engine."""
        opening, self._opening = self._opening, None
        if opening is not None and not opening.done():
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
        if self._writes is not None:
            await self._writes.aclose(_SHUTDOWN_WAIT_S)
        engine, self._engine, self._chat_completions = self._engine, None, None
        self._responses = self._writes = self._access = None
        if engine is not None:
            await engine.dispose()


def _unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The storage backend is unavailable; nothing was stored. Try again later.", code="storage_unavailable"
    )
