"""pysqlite binds NULLs and booleans through its adapter registry once a SQLite engine is made
(`storage.engine.bind_cheaply`): the same values stored, without an AttributeError formatted per value."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from manifold.config import StorageSettings
from manifold.storage.engine import bind_cheaply, database_url, sqlite_write_engine


def test_null_and_bool_are_stored_as_before(tmp_path: pytest.TempPathFactory) -> None:
    engine = sqlite_write_engine(database_url(StorageSettings(data_dir=str(tmp_path))))
    assert (type(None), sqlite3.PrepareProtocol) in sqlite3.adapters
    assert (bool, sqlite3.PrepareProtocol) in sqlite3.adapters
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE t (a, b, c)")
        conn.exec_driver_sql("INSERT INTO t VALUES (?, ?, ?)", (None, True, False))
        row = conn.execute(text("SELECT a, typeof(a), b, typeof(b), c FROM t")).one()
    assert tuple(row) == (None, "null", 1, "integer", 0)
    engine.dispose()


def test_pysqlite_takes_nulls_and_booleans_from_the_registry() -> None:
    """What the saving rests on: pysqlite looks a NULL's and a boolean's adapter up in its registry (before the
    protocol lookups that raise); an adapter registered there is what binds them."""
    seen: list[object] = []

    def counting(value: object) -> object:
        seen.append(value)
        return int(value) if isinstance(value, bool) else value

    try:
        sqlite3.register_adapter(type(None), counting)
        sqlite3.register_adapter(bool, counting)
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (a, b)")
        conn.execute("INSERT INTO t VALUES (?, ?)", (None, True))
        assert seen == [None, True]
        conn.close()
    finally:
        bind_cheaply()
    assert sqlite3.adapters[(type(None), sqlite3.PrepareProtocol)] is not counting
