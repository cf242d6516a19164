"""Stored objects: SQLAlchemy Core on an async engine, SQLite by default, PostgreSQL by URL, with migrations.

Importing this package does not import SQLAlchemy; `Store.open()` does.
"""

from manifold.storage.store import Store

__all__ = ["Store"]
