"""Stored objects: SQLAlchemy Core on an async engine, SQLite by default, PostgreSQL by URL, with migrations."""

from manifold.storage.chat_completions import ChatCompletionStore, MessagePage, Page
from manifold.storage.store import Store

__all__ = ["ChatCompletionStore", "MessagePage", "Page", "Store"]
