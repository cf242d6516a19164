"""The store: one engine for the process, migrated when it opens, and the repositories built on it.

The server starts opening the store at startup (`start()`) without waiting for it: importing SQLAlchemy and
its drivers takes a few hundred milliseconds (more on a busy machine), which would otherwise delay every start
whether or not anything is ever stored, and a database that is down must not keep the gateway from answering
requests that store nothing. The import runs in a thread, so the event loop keeps serving meanwhile. Whatever
needs the store awaits it (`chat_completions()`); if opening failed, that answers 503 and the next use tries
again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from manifold.config import StorageSettings
from manifold.errors import ServiceUnavailableError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from manifold.storage.chat_completions import ChatCompletionStore
    from manifold.storage.responses import ResponseStore

log = logging.getLogger("manifold.storage")


def _load() -> Any:
    """The storage modules (and with them SQLAlchemy and the drivers), imported off the event loop."""
    from manifold.storage import chat_completions, engine, errors, migrations, responses

    return chat_completions, engine, errors, migrations, responses


class Store:
    """A feature that stores something new adds its repository here, next to `chat_completions`, on the same
    engine, and its tables with a migration (see `migrations.py`)."""

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.description = "(not open)"
        self._engine: AsyncEngine | None = None
        self._chat_completions: ChatCompletionStore | None = None
        self._responses: ResponseStore | None = None
        self._opening: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin opening (connect, migrate) in the background; call from within the event loop."""
        if self._engine is None and self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._open())
            self._opening.add_done_callback(self._opened)

    async def open(self) -> None:
        """Open now: raise `ServiceUnavailableError` if the database cannot be reached or migrated."""
        if self._engine is None:
            self.start()
            assert self._opening is not None
            await asyncio.shield(self._opening)

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

    @property
    def is_open(self) -> bool:
        return self._engine is not None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    async def _open(self) -> None:
        chat_completions, engine_module, errors, migrations, responses = await asyncio.to_thread(_load)
        self.description = engine_module.database_url(self.settings).render_as_string(hide_password=True)
        async with errors.storage_errors():
            try:
                engine = engine_module.create_engine(self.settings)
            except ImportError as exc:  # the URL names a driver that is not installed
                log.error(
                    "storage: %s needs a driver that is not installed (%s); for PostgreSQL install manifold[postgres]",
                    self.description,
                    exc,
                )
                raise self._unavailable() from exc
            try:
                applied = await migrations.migrate(engine)
            except BaseException:
                await engine.dispose()
                raise
        if applied:
            log.info("storage: %s migrated to schema version %d", self.description, applied[-1])
        else:
            log.info("storage: %s is ready", self.description)
        self._engine = engine
        self._chat_completions = chat_completions.ChatCompletionStore(engine)
        self._responses = responses.ResponseStore(engine)

    def _opened(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            self._opening = None
            return
        exc = task.exception()
        if exc is not None:
            self._opening = None  # the next use tries again
            cause = exc.__cause__ or exc
            log.error("storage: cannot open %s: %s: %s", self.description, type(cause).__name__, cause)

    def _unavailable(self) -> ServiceUnavailableError:
        return ServiceUnavailableError(
            "The storage backend is unavailable; nothing was stored. Try again later.", code="storage_unavailable"
        )

    async def aclose(self) -> None:
        opening, self._opening = self._opening, None
        if opening is not None and not opening.done():
            opening.cancel()
            await asyncio.gather(opening, return_exceptions=True)
        engine, self._engine, self._chat_completions = self._engine, None, None
        self._responses = None
        if engine is not None:
            await engine.dispose()
