"""Schema migrations: a numbered list, applied in order at startup, each recorded in `manifold_schema_migrations`.

Why not Alembic: Manifold's schema is a few tables that must migrate inside the server process at startup,
on the async engine, with no ini file or script directory to ship; a runner this size does that.

Running it is idempotent and safe when several workers or replicas start at once: the whole run is one
transaction that first takes a lock every other runner waits on (PostgreSQL: a transaction-scoped advisory lock;
SQLite: the writers' turn lock, `engine.WriteLock`, then `BEGIN IMMEDIATE`, the database's write lock), then
reads which versions are applied. DDL is transactional on both, so a failed migration leaves nothing behind.
A database already at the newest version is seen by a plain read first, and no lock is taken: a worker that
starts (or restarts) while the others write does not queue for the write lock behind them, which on SQLite,
whose busy handler sleeps up to 100 ms between tries, could take longer than any client waits.

To change the schema: append a `Migration` with the next version whose `upgrade` runs against a sync
`Connection` (use frozen table copies or `op`-style DDL, never the live definitions in `tables.py`, which keep
changing), then update `tables.py`. Never edit or renumber a migration that has shipped.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from manifold.storage.engine import write_engine, write_lock
from manifold.storage.rows import now_ms
from manifold.storage.tables import schema_migrations

log = logging.getLogger("manifold.storage")

# pg_advisory_xact_lock key: "manifold" in ASCII, as a bigint.
LOCK_KEY = int.from_bytes(b"manifold", "big")


class Migration(NamedTuple):
    version: int
    name: str
    upgrade: Callable[[Connection], None]


def _v1_chat_completions(conn: Connection) -> None:
    md = MetaData()
    serial = BigInteger().with_variant(Integer(), "sqlite")
    Table(
        "chat_completions",
        md,
        Column("seq", serial, primary_key=True, autoincrement=True),
        Column("id", String(128), nullable=False, unique=True),
        Column("model", Text, nullable=False),
        Column("created", BigInteger, nullable=False),
        Column("metadata_json", Text, nullable=False),
        Column("request_id", String(128), nullable=True),
        Column("completion", Text, nullable=False),
        Column("stored_at", BigInteger, nullable=False),
        Index("ix_chat_completions_model_seq", "model", "seq"),
        sqlite_autoincrement=True,
    )
    Table(
        "chat_completion_messages",
        md,
        Column("completion_id", String(128), ForeignKey("chat_completions.id", ondelete="CASCADE"), primary_key=True),
        Column("position", Integer, primary_key=True, autoincrement=False),
        Column("message", Text, nullable=False),
    )
    Table(
        "chat_completion_metadata",
        md,
        Column("completion_id", String(128), ForeignKey("chat_completions.id", ondelete="CASCADE"), primary_key=True),
        Column("key", String(64), primary_key=True),
        Column("value", String(512), nullable=False),
        Index("ix_chat_completion_metadata_key_value", "key", "value"),
    )
    md.create_all(conn)


def _v2_responses(conn: Connection) -> None:
    md = MetaData()
    serial = BigInteger().with_variant(Integer(), "sqlite")
    Table(
        "responses",
        md,
        Column("seq", serial, primary_key=True, autoincrement=True),
        Column("id", String(128), nullable=False, unique=True),
        Column("model", Text, nullable=False),
        Column("created_at", BigInteger, nullable=False),
        Column("status", String(32), nullable=False),
        Column("background", Integer, nullable=False),
        Column("previous_response_id", Text, nullable=True),
        Column("request_id", String(128), nullable=True),
        Column("response", Text, nullable=False),
        Column("stored_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
        Column("owner", String(64), nullable=True),
        Column("lease_until", BigInteger, nullable=True),
        Index("ix_responses_status_lease", "status", "lease_until"),
        sqlite_autoincrement=True,
    )
    Table(
        "response_input_items",
        md,
        Column("response_id", String(128), ForeignKey("responses.id", ondelete="CASCADE"), primary_key=True),
        Column("position", Integer, primary_key=True, autoincrement=False),
        Column("item_id", Text, nullable=False),
        Column("item", Text, nullable=False),
        Index("ix_response_input_items_item", "response_id", "item_id"),
    )
    md.create_all(conn)


def _v3_keys_and_teams(conn: Connection) -> None:
    md = MetaData()
    serial = BigInteger().with_variant(Integer(), "sqlite")

    def limits() -> list[Column[Any]]:
        return [
            Column("models_json", Text, nullable=True),
            Column("rpm", BigInteger, nullable=True),
            Column("tpm", BigInteger, nullable=True),
            Column("max_parallel_requests", BigInteger, nullable=True),
            Column("model_limits_json", Text, nullable=True),
            Column("max_budget_micros", BigInteger, nullable=True),
            Column("budget_duration", String(16), nullable=True),
            Column("budget_reset_at", BigInteger, nullable=True),
            Column("metadata_json", Text, nullable=False),
            Column("blocked", Integer, nullable=False),
            Column("created_at", BigInteger, nullable=False),
            Column("updated_at", BigInteger, nullable=False),
        ]

    Table(
        "access_teams",
        md,
        Column("seq", serial, primary_key=True, autoincrement=True),
        Column("id", String(64), nullable=False, unique=True),
        Column("alias", Text, nullable=True),
        *limits(),
        sqlite_autoincrement=True,
    )
    Table(
        "access_keys",
        md,
        Column("seq", serial, primary_key=True, autoincrement=True),
        Column("id", String(64), nullable=False, unique=True),
        Column("key_hash", String(64), nullable=False, unique=True),
        Column("display", String(32), nullable=False),
        Column("alias", Text, nullable=True),
        Column("user_id", Text, nullable=True),
        Column("team_id", String(64), nullable=True),
        Column("admin", Integer, nullable=False),
        Column("expires_at", BigInteger, nullable=True),
        Column("previous_hash", String(64), nullable=True),
        Column("previous_expires_at", BigInteger, nullable=True),
        *limits(),
        Index("ix_access_keys_previous_hash", "previous_hash"),
        Index("ix_access_keys_team", "team_id", "seq"),
        sqlite_autoincrement=True,
    )
    md.create_all(conn)


def _v4_usage(conn: Connection) -> None:
    md = MetaData()
    serial = BigInteger().with_variant(Integer(), "sqlite")
    Table(
        "usage",
        md,
        Column("seq", serial, primary_key=True, autoincrement=True),
        Column("request_id", String(128), nullable=True),
        Column("created_at", BigInteger, nullable=False),
        Column("key_id", String(64), nullable=True),
        Column("key_alias", Text, nullable=True),
        Column("team_id", String(64), nullable=True),
        Column("user_id", Text, nullable=True),
        Column("model", Text, nullable=True),
        Column("deployment", Text, nullable=True),
        Column("endpoint", Text, nullable=True),
        Column("status", Integer, nullable=False),
        Column("stream", Boolean, nullable=False),
        Column("input_tokens", BigInteger, nullable=True),
        Column("cached_input_tokens", BigInteger, nullable=True),
        Column("output_tokens", BigInteger, nullable=True),
        Column("reasoning_tokens", BigInteger, nullable=True),
        Column("cost_micros", BigInteger, nullable=True),
        Column("latency_ms", Integer, nullable=False),
        Column("ttft_ms", Integer, nullable=True),
        Column("attempts", Integer, nullable=False),
        Index("ix_usage_created_at", "created_at"),
        Index("ix_usage_key_created_at", "key_id", "created_at"),
        Index("ix_usage_team_created_at", "team_id", "created_at"),
        sqlite_autoincrement=True,
    )
    md.create_all(conn)


def _v5_mcp_servers(conn: Connection) -> None:
    """The MCP servers a key or a team may use (a JSON list of labels; NULL: every server)."""
    for table in ("access_teams", "access_keys"):
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN mcp_servers_json TEXT"))


def _v6_mcp_chat(conn: Connection) -> None:
    """The MCP servers whose tools a key's (or a team's keys') chat requests get (JSON `{servers, mode}`; NULL:
    none)."""
    for table in ("access_teams", "access_keys"):
        conn.execute(text(f"ALTER TABLE {table} ADD COLUMN mcp_chat_json TEXT"))


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "chat completions, their messages and metadata", _v1_chat_completions),
    Migration(2, "responses and their input items", _v2_responses),
    Migration(3, "access keys and teams", _v3_keys_and_teams),
    Migration(4, "the usage ledger", _v4_usage),
    Migration(5, "the MCP servers of keys and teams", _v5_mcp_servers),
    Migration(6, "the chat MCP tools of keys and teams", _v6_mcp_chat),
)


async def migrate(engine: AsyncEngine, migrations: Sequence[Migration] = MIGRATIONS) -> list[int]:
    """Apply the migrations not yet recorded; return the versions this call applied."""
    ordered = sorted(migrations, key=lambda m: m.version)
    applied = set(await _applied_if_any(engine))
    if {m.version for m in ordered} <= applied:
        _warn_if_newer(applied, ordered)
        return []
    lock = write_lock(engine.url)
    if lock is None:
        return await _migrate_locked(engine, ordered)
    try:
        await asyncio.to_thread(lock.acquire)
        try:
            return await _migrate_locked(engine, ordered)
        finally:
            lock.release()
    finally:
        lock.close()


async def _applied_if_any(engine: AsyncEngine) -> list[int]:
    """The versions recorded, read without a lock ([] when there is no record yet)."""
    async with engine.connect() as conn:
        exists = await conn.run_sync(lambda c: inspect(c).has_table(schema_migrations.name))
        return list(await conn.scalars(select(schema_migrations.c.version))) if exists else []


async def _migrate_locked(engine: AsyncEngine, ordered: Sequence[Migration]) -> list[int]:
    done: list[int] = []
    async with write_engine(engine).begin() as conn:
        await _lock(conn)
        await conn.run_sync(lambda c: schema_migrations.create(c, checkfirst=True))
        applied = set((await conn.scalars(select(schema_migrations.c.version))).all())
        for m in ordered:
            if m.version in applied:
                continue
            log.info("storage: applying migration %d (%s)", m.version, m.name)
            await conn.run_sync(m.upgrade)
            await conn.execute(insert(schema_migrations).values(version=m.version, name=m.name, applied_at=now_ms()))
            done.append(m.version)
    _warn_if_newer(applied, ordered)
    return done


def _warn_if_newer(applied: set[int], ordered: Sequence[Migration]) -> None:
    newest = max((m.version for m in ordered), default=0)
    if applied and max(applied) > newest:
        log.warning(
            "storage: the database is at schema version %d, newer than this Manifold knows (%d)", max(applied), newest
        )


async def applied_versions(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        return list(await conn.scalars(select(schema_migrations.c.version).order_by(schema_migrations.c.version)))


async def _lock(conn: AsyncConnection) -> None:
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    # SQLite: the transaction began with BEGIN IMMEDIATE (write_engine), which already holds the write lock.
