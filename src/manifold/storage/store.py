"""The store: one engine for the process, migrated when it opens, and the repositories built on it."""

from __future__ import annotations

import logging

from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from manifold.config import StorageSettings
from manifold.storage.chat_completions import ChatCompletionStore
from manifold.storage.engine import create_engine, database_url
from manifold.storage.migrations import migrate

log = logging.getLogger("manifold.storage")


class Store:
    """`open()` connects and migrates (at startup); the repositories are usable after it.

    A feature that stores something new adds its repository here, next to `chat_completions`, on the same
    engine, and its tables with a migration (see `migrations.py`).
    """

    def __init__(self, settings: StorageSettings) -> None:
        self.settings = settings
        self.url: URL = database_url(settings)
        self._engine: AsyncEngine | None = None
        self._chat_completions: ChatCompletionStore | None = None

    @property
    def description(self) -> str:
        return self.url.render_as_string(hide_password=True)

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise RuntimeError("the store is not open")
        return self._engine

    @property
    def chat_completions(self) -> ChatCompletionStore:
        if self._chat_completions is None:
            raise RuntimeError("the store is not open")
        return self._chat_completions

    async def open(self) -> None:
        if self._engine is not None:
            return
        engine = create_engine(self.settings)
        try:
            applied = await migrate(engine)
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            log.error("storage: cannot open %s: %s: %s", self.description, type(exc).__name__, exc)
            raise
        except BaseException:
            await engine.dispose()
            raise
        if applied:
            log.info("storage: %s migrated to schema version %d", self.description, applied[-1])
        self._engine = engine
        self._chat_completions = ChatCompletionStore(engine)

    async def aclose(self) -> None:
        engine, self._engine, self._chat_completions = self._engine, None, None
        if engine is not None:
            await engine.dispose()
