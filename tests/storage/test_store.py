"""The store itself, against real databases: SQLite files and fresh PostgreSQL databases.

Migrations (idempotent, recorded, transactional, safe when run concurrently), the repository's semantics
(cursors, filters, replace-on-update, cascading delete), SQLite's durability settings, and what a client gets
when the database is unreachable.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, inspect, select, text

from manifold.config import StorageSettings
from manifold.errors import InvalidRequestError, ServiceUnavailableError
from manifold.storage import Store, tables
from manifold.storage.chat_completions import ChatCompletionStore
from manifold.storage.engine import create_engine, database_url, write_engine
from manifold.storage.migrations import MIGRATIONS, Migration, _lock, applied_versions, migrate
from manifold.storage.tables import schema_migrations
from manifold.storage.writer import DurableWrites
from tests.databases import BACKENDS, _admin, fresh_postgres_database, storage_settings
from tests.e2e.conftest import free_port

V1_TABLES = {"chat_completions", "chat_completion_messages", "chat_completion_metadata", "manifold_schema_migrations"}
ALL_VERSIONS = [m.version for m in MIGRATIONS]


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StorageSettings]:
    with storage_settings(request.param, tmp_path / "data") as storage:
        yield StorageSettings(**storage)


@pytest.fixture
async def store(settings: StorageSettings) -> AsyncIterator[Store]:
    s = Store(settings)
    await s.open()
    yield s
    await s.aclose()


def completion(n: int, model: str = "m") -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{n}",
        "object": "chat.completion",
        "created": 1_700_000_000 + n,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {n}", "refusal": None}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    }


async def table_names(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        return set(await conn.run_sync(lambda c: inspect(c).get_table_names()))


# -- migrations -------------------------------------------------------------------------------------------------


async def test_migrations_are_recorded_and_idempotent(settings: StorageSettings) -> None:
    engine = create_engine(settings)
    try:
        assert await migrate(engine) == [m.version for m in MIGRATIONS]
        assert await migrate(engine) == []
        assert await migrate(engine) == []
        assert await applied_versions(engine) == ALL_VERSIONS
        async with engine.connect() as conn:
            rows = (await conn.execute(select(schema_migrations))).all()
            assert set(await conn.run_sync(lambda c: inspect(c).get_table_names())) >= V1_TABLES
        assert [(r.version, r.name) for r in rows] == [(m.version, m.name) for m in MIGRATIONS]
        assert rows[0].applied_at > 1_600_000_000_000  # unix milliseconds
    finally:
        await engine.dispose()


async def test_concurrent_migrations_apply_each_version_once(settings: StorageSettings) -> None:
    """Six runners (each its own engine and connection, as separate workers would be) race on a fresh database."""
    engines = [create_engine(settings) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrate(e) for e in engines))
        assert sorted(results) == [[], [], [], [], [], ALL_VERSIONS]
        assert await applied_versions(engines[0]) == ALL_VERSIONS
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))


async def test_an_up_to_date_database_is_not_locked_to_find_so(settings: StorageSettings) -> None:
    """A worker starting while another one writes: the database is at the newest version, which a plain read
    shows, so the start does not queue for the write lock (held here for the whole check) behind the writers."""
    engines = [create_engine(settings) for _ in range(2)]
    try:
        await migrate(engines[0])
        async with write_engine(engines[0]).begin() as writing:
            await _lock(writing)  # PostgreSQL: the migrations' advisory lock; SQLite: BEGIN IMMEDIATE holds it
            await writing.execute(text("UPDATE manifold_schema_migrations SET name = name"))
            async with asyncio.timeout(5):
                assert await migrate(engines[1]) == []
    finally:
        await asyncio.gather(*(e.dispose() for e in engines))


async def test_a_failing_migration_leaves_nothing_behind(settings: StorageSettings) -> None:
    def create_then_fail(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half_done (x INTEGER)"))
        raise RuntimeError("the next migration is broken")

    def create(conn: Connection) -> None:
        conn.execute(text("CREATE TABLE half_done (x INTEGER)"))

    engine = create_engine(settings)
    following = ALL_VERSIONS[-1] + 1
    try:
        await migrate(engine)
        with pytest.raises(RuntimeError, match="broken"):
            await migrate(engine, [*MIGRATIONS, Migration(following, "broken", create_then_fail)])
        assert await applied_versions(engine) == ALL_VERSIONS
        async with engine.connect() as conn:
            assert "half_done" not in await conn.run_sync(lambda c: inspect(c).get_table_names())
        assert await migrate(engine, [*MIGRATIONS, Migration(following, "fixed", create)]) == [following]
        assert await applied_versions(engine) == [*ALL_VERSIONS, following]
    finally:
        await engine.dispose()


async def test_a_newer_schema_is_reported_not_fatal(
    settings: StorageSettings, caplog: pytest.LogCaptureFixture
) -> None:
    engine = create_engine(settings)
    try:
        await migrate(engine, [*MIGRATIONS, Migration(7, "from the future", lambda c: None)])
        with caplog.at_level(logging.WARNING, logger="manifold.storage"):
            assert await migrate(engine) == []
        assert "schema version 7" in caplog.text
    finally:
        await engine.dispose()


async def test_store_open_migrates(store: Store) -> None:
    assert await table_names(store) >= V1_TABLES
    assert await applied_versions(store.engine) == ALL_VERSIONS


async def test_migrated_schema_matches_the_tables_the_code_uses(store: Store) -> None:
    """tables.py (what the code reads and writes) and the migrations (what built the database) agree."""

    def described(conn: Connection) -> dict[str, Any]:
        found = inspect(conn)
        return {
            name: (
                [c["name"] for c in found.get_columns(name)],
                sorted(i["name"] for i in found.get_indexes(name) if i["name"]),
            )
            for name in tables.metadata.tables
        }

    async with store.engine.connect() as conn:
        actual = await conn.run_sync(described)
    for name, table in tables.metadata.tables.items():
        columns, indexes = actual[name]
        assert columns == [c.name for c in table.columns], name
        assert set(indexes) >= {i.name for i in table.indexes}, name


# -- SQLite specifics -------------------------------------------------------------------------------------------


async def test_sqlite_default_file_and_durability_settings(tmp_path: Path) -> None:
    settings = StorageSettings(data_dir=str(tmp_path / "nested" / "data"))
    assert database_url(settings).render_as_string() == f"sqlite+aiosqlite:///{tmp_path}/nested/data/manifold.db"
    assert str(database_url(StorageSettings(url="sqlite:///x.db"))) == "sqlite+aiosqlite:///x.db"
    assert str(database_url(StorageSettings(url="postgresql://u@h/d"))) == "postgresql+asyncpg://u@h/d"
    store = Store(settings)
    await store.open()
    try:
        assert (tmp_path / "nested" / "data" / "manifold.db").is_file()
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
            assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == 2  # FULL
            assert (await conn.execute(text("PRAGMA foreign_keys"))).scalar() == 1
    finally:
        await store.aclose()


# -- the repository ---------------------------------------------------------------------------------------------


async def test_save_get_and_messages(store: Store) -> None:
    cc = await store.chat_completions()
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "u"}]}]
    await cc.save(completion(1), messages, {"k": "v"}, "req_1")
    got = await cc.get("chatcmpl-1")
    assert got == {**completion(1), "metadata": {"k": "v"}}
    assert await cc.get("chatcmpl-404") is None
    page = await cc.messages("chatcmpl-1")
    assert page is not None and page.items == [(0, messages[0]), (1, messages[1])] and not page.has_more
    page = await cc.messages("chatcmpl-1", after=0, limit=1)
    assert page is not None and page.items == [(1, messages[1])] and not page.has_more
    page = await cc.messages("chatcmpl-1", after=1, order="desc", limit=1)
    assert page is not None and page.items == [(0, messages[0])] and not page.has_more
    assert await cc.messages("chatcmpl-404") is None
    empty = await cc.messages("chatcmpl-1", after=5)
    assert empty is not None and empty.items == []
    long_name = "org/" + "m" * 1000  # public model names have no length limit
    await cc.save(completion(2, long_name), messages, None)
    assert [c["id"] for c in (await cc.list(model=long_name)).items] == ["chatcmpl-2"]


async def test_list_pages_filters_and_cursors(store: Store) -> None:
    cc = await store.chat_completions()
    odd_key = 'we"ird key ✓'
    for n in range(1, 8):
        meta = {"parity": str(n % 2), odd_key: "yes" if n in (2, 5) else "no"}
        await cc.save(completion(n, "a" if n <= 4 else "b"), [{"role": "user", "content": str(n)}], meta)

    def ids(page: Any) -> list[str]:
        return [c["id"].removeprefix("chatcmpl-") for c in page.items]

    page = await cc.list(limit=3)
    assert ids(page) == ["1", "2", "3"] and page.has_more
    page = await cc.list(limit=3, after="chatcmpl-6")
    assert ids(page) == ["7"] and not page.has_more
    page = await cc.list(limit=4, after="chatcmpl-3")
    assert ids(page) == ["4", "5", "6", "7"] and not page.has_more  # exactly `limit` left: no more
    page = await cc.list(order="desc", limit=2, after="chatcmpl-3")
    assert ids(page) == ["2", "1"] and not page.has_more
    assert ids(await cc.list(model="b")) == ["5", "6", "7"]
    assert ids(await cc.list(metadata={"parity": "1"})) == ["1", "3", "5", "7"]
    assert ids(await cc.list(metadata={"parity": "1", odd_key: "yes"})) == ["5"]
    assert ids(await cc.list(model="a", metadata={odd_key: "yes"}, order="desc")) == ["2"]
    assert ids(await cc.list(metadata={"parity": "2"})) == []
    with pytest.raises(InvalidRequestError) as bad:
        await cc.list(after="chatcmpl-404")
    assert bad.value.param == "after"


async def test_update_replaces_metadata_and_delete_cascades(store: Store) -> None:
    cc = await store.chat_completions()
    await cc.save(completion(1), [{"role": "user", "content": "x"}], {"a": "1", "b": "2"})
    updated = await cc.update_metadata("chatcmpl-1", {"c": "3"})
    assert updated is not None and updated["metadata"] == {"c": "3"} and updated["choices"] == completion(1)["choices"]
    assert [c["id"] for c in (await cc.list(metadata={"a": "1"})).items] == []
    assert [c["id"] for c in (await cc.list(metadata={"c": "3"})).items] == ["chatcmpl-1"]
    assert await cc.update_metadata("chatcmpl-404", {}) is None
    assert await cc.delete("chatcmpl-1") is True
    assert await cc.delete("chatcmpl-1") is False
    assert await cc.get("chatcmpl-1") is None and await cc.messages("chatcmpl-1") is None
    async with store.engine.connect() as conn:
        for table in ("chat_completion_messages", "chat_completion_metadata"):
            assert (await conn.execute(text(f"SELECT count(*) FROM {table}"))).scalar() == 0


async def test_concurrent_saves(store: Store) -> None:
    cc = await store.chat_completions()
    await asyncio.gather(
        *(cc.save(completion(n), [{"role": "user", "content": str(n)}] * 3, {"n": str(n)}) for n in range(40))
    )
    assert await cc.count() == 40
    listed = (await cc.list(limit=100)).items
    assert sorted(c["id"] for c in listed) == sorted(f"chatcmpl-{n}" for n in range(40))


async def test_an_unreachable_database_is_a_503() -> None:
    settings = StorageSettings(url=f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing")
    engine = create_engine(settings)
    writes = DurableWrites(engine)
    try:
        cc = ChatCompletionStore(engine, writes)
        with pytest.raises(ServiceUnavailableError) as failure:
            await cc.get("chatcmpl-1")
        assert failure.value.status_code == 503 and failure.value.code == "storage_unavailable"
        with pytest.raises(ServiceUnavailableError):
            await cc.save(completion(1), [], None)
    finally:
        await writes.aclose()
        await engine.dispose()


@pytest.fixture
def postgres_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


async def test_a_store_that_cannot_open_is_retried_in_the_background_not_per_request(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """While the database is down every use answers 503 at once (no attempt, no log line per request); the
    store tries again every `retry_interval_s` and opens once the database is there."""
    missing = postgres_url + "_not_yet"  # a database that does not exist yet: the server answers, the open fails
    settings = StorageSettings(url=missing, retry_interval_s=1.0)
    store = Store(settings)
    try:
        with caplog.at_level(logging.ERROR, logger="manifold.storage"):
            with pytest.raises(ServiceUnavailableError):
                await store.open()
            assert store.state == "unavailable"
            for _ in range(50):
                with pytest.raises(ServiceUnavailableError):
                    await store.chat_completions()
            attempts = [r for r in caplog.records if "cannot open" in r.getMessage()]
            assert len(attempts) == 1, [r.getMessage() for r in attempts]
            name = missing.rsplit("/", 1)[1]
            await _admin(f'CREATE DATABASE "{name}"')
            try:
                for _ in range(100):
                    if store.is_open:
                        break
                    await asyncio.sleep(0.1)
                assert store.state == "open"
                cc = await store.chat_completions()
                await cc.save(completion(1), [], None)
                assert await cc.count() == 1
            finally:
                await store.aclose()
                await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        attempts = [r for r in caplog.records if "cannot open" in r.getMessage()]
        assert 1 <= len(attempts) <= 10  # one per retry interval, not one per request
    finally:
        await store.aclose()


async def test_a_database_that_goes_down_after_start_up(postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """Reads and writes get 503 while PostgreSQL refuses connections; readiness says so; the log gets a line per
    few seconds, not one per failure; when it takes connections again everything works again."""
    name = postgres_url.rsplit("/", 1)[1]
    store = Store(StorageSettings(url=postgres_url))
    try:
        await store.open()
        cc = await store.chat_completions()
        await cc.save(completion(1), [], None)
        assert await store.ready() == "open"
        await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        try:
            with caplog.at_level(logging.ERROR, logger="manifold.storage"):
                assert await store.ready() == "unavailable"
                for n in range(10):
                    with pytest.raises(ServiceUnavailableError):
                        await cc.get("chatcmpl-1")
                    with pytest.raises(ServiceUnavailableError):
                        await cc.save(completion(100 + n), [], None)
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) <= 2, [r.getMessage() for r in errors]  # 21 failures
        finally:
            await _admin(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        assert await store.ready() == "open"
        assert await cc.get("chatcmpl-1") is not None
        await cc.save(completion(2), [], None)
        assert await cc.count() == 2
    finally:
        await store.aclose()


async def test_an_open_store_has_frozen_the_startup_heap(tmp_path: Path) -> None:
    """Once a store is open, what the process imported sits in the collector's permanent generation (a full
    collection no longer walks it: docs/performance.md), and objects made afterwards are still collected."""
    import gc
    import weakref

    store = Store(StorageSettings(data_dir=str(tmp_path / "data")))
    await store.open()
    try:
        assert gc.get_freeze_count() > 10_000  # SQLAlchemy alone is tens of thousands of objects

        class Cyclic:
            me: object = None

        garbage = Cyclic()
        garbage.me = garbage
        collected = weakref.ref(garbage)
        del garbage
        gc.collect()
        assert collected() is None
    finally:
        await store.aclose()


async def test_a_write_after_the_writer_connection_was_killed_succeeds(postgres_url: str) -> None:
    """The writer pings its PostgreSQL connection only after an idle spell (not before every batch): a
    connection killed while idle (a restarted server) is found by that ping and replaced, so the next write
    is stored, not answered 503."""
    from manifold.storage.writer import PING_AFTER_IDLE_S

    name = postgres_url.rsplit("/", 1)[1]
    store = Store(StorageSettings(url=postgres_url))
    try:
        await store.open()
        cc = await store.chat_completions()
        await cc.save(completion(1), [], None)
        await _admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        await asyncio.sleep(PING_AFTER_IDLE_S + 0.2)
        await cc.save(completion(2), [], None)
        assert await cc.count() == 2
    finally:
        await store.aclose()
