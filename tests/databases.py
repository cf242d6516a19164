"""Real databases for the storage tests: a SQLite file, or a fresh PostgreSQL database per test run.

PostgreSQL is the local server at 127.0.0.1:5432 (trust auth, user `postgres`; `scripts/services` starts it).
Each call of `fresh_postgres_database()` creates a database with a unique name and drops it afterwards, so
runs (and developers sharing the server) never see each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PG_HOST = os.environ.get("MANIFOLD_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("MANIFOLD_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("MANIFOLD_TEST_PG_USER", "postgres")
BACKENDS = ("sqlite", "postgres")


async def _admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def _ensure_postgres() -> None:
    try:
        asyncio.run(_admin("SELECT 1"))
        return
    except (TimeoutError, OSError):
        subprocess.run([str(ROOT / "scripts" / "services")], check=False)
    try:
        asyncio.run(_admin("SELECT 1"))
    except (TimeoutError, OSError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_HOST}:{PG_PORT} ({exc}); the storage tests need it "
            "(scripts/services starts the local server)",
            pytrace=False,
        )


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Yield the URL of a new, empty database; drop it afterwards."""
    _ensure_postgres()
    name = f"manifold_test_{os.getpid()}_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield f"postgresql+asyncpg://{PG_USER}@{PG_HOST}:{PG_PORT}/{name}"
    finally:
        asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.contextmanager
def storage_settings(backend: str, directory: Path) -> Iterator[dict[str, str]]:
    """The `storage:` config section for a backend: SQLite in `directory` (the default, by `data_dir`), or a
    fresh PostgreSQL database (by `url`)."""
    if backend == "sqlite":
        yield {"data_dir": str(directory)}
    elif backend == "postgres":
        with fresh_postgres_database() as url:
            yield {"url": url}
    else:
        raise ValueError(backend)
