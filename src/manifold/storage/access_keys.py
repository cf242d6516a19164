"""Virtual keys and teams: the rows behind authentication and the admin API (docs/access.md).

Rows cross this module as plain dicts of the tables' columns (`tables.access_keys`, `tables.access_teams`);
`access/keys.py` turns them into principals and API objects. Every write goes through the store's durable-write
queue and is committed before the method returns. Reads use the engine directly: a key lookup is one indexed
select (with its team, by a left join).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from sqlalchemy import Connection, Table, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from manifold.errors import InvalidRequestError
from manifold.storage.errors import storage_errors
from manifold.storage.tables import access_keys, access_teams
from manifold.storage.writer import DurableWrites, Write

_k = access_keys
_t = access_teams
Kind = Literal["key", "team"]


class Page(NamedTuple):
    items: list[dict[str, Any]]
    has_more: bool


class Found(NamedTuple):
    key: dict[str, Any]
    team: dict[str, Any] | None
    previous: bool  # matched by a rotated key's old secret (valid until `previous_expires_at`)


def _table(kind: Kind) -> Table:
    return _k if kind == "key" else _t


class AccessStore:
    def __init__(self, engine: AsyncEngine, writes: DurableWrites) -> None:
        self._engine = engine
        self._writes = writes

    async def any_key(self) -> bool:
        """Whether any virtual key exists (then every API route needs a key)."""
        async with storage_errors(), self._engine.connect() as conn:
            return (await conn.scalar(select(_k.c.seq).limit(1))) is not None

    async def lookup(self, key_hash: str, now: int) -> Found | None:
        """The key whose secret hashes to `key_hash` (or whose old secret does, within its grace), with its team."""
        stmt = select(_k).where(
            or_(_k.c.key_hash == key_hash, (_k.c.previous_hash == key_hash) & (_k.c.previous_expires_at > now))
        )
        async with storage_errors(), self._engine.connect() as conn:
            row = (await conn.execute(stmt.limit(1))).mappings().first()
            if row is None:
                return None
            key = dict(row)
            team = None
            if key["team_id"] is not None:
                team_row = (await conn.execute(select(_t).where(_t.c.id == key["team_id"]))).mappings().first()
                team = dict(team_row) if team_row is not None else None
        return Found(key, team, key["key_hash"] != key_hash)

    async def get(self, kind: Kind, object_id: str) -> dict[str, Any] | None:
        table = _table(kind)
        async with storage_errors(), self._engine.connect() as conn:
            row = (await conn.execute(select(table).where(table.c.id == object_id))).mappings().first()
        return None if row is None else dict(row)

    async def list(
        self, kind: Kind, *, after: str | None = None, limit: int = 20, filters: Mapping[str, Any] | None = None
    ) -> Page:
        """Oldest first; `filters`: column → value (equality)."""
        table = _table(kind)
        stmt = select(table)
        for column, value in (filters or {}).items():
            stmt = stmt.where(table.c[column] == value)
        async with storage_errors(), self._engine.connect() as conn:
            if after is not None:
                seq = await conn.scalar(select(table.c.seq).where(table.c.id == after))
                if seq is None:
                    raise InvalidRequestError(
                        f"Invalid 'after': no {kind} has the id '{after}'.", param="after", code="invalid_value"
                    )
                stmt = stmt.where(table.c.seq > seq)
            rows = (await conn.execute(stmt.order_by(table.c.seq.asc()).limit(limit + 1))).mappings().all()
        return Page([dict(r) for r in rows[:limit]], len(rows) > limit)

    async def create(self, kind: Kind, row: Mapping[str, Any]) -> None:
        await self._writes.submit(Write([(_table(kind), [dict(row)])]))

    async def update(self, kind: Kind, object_id: str, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """Set `values` on the row; the updated row, or None when there is no such row."""
        table = _table(kind)

        def apply(conn: Connection) -> dict[str, Any] | None:
            if values:
                result = conn.execute(update(table).where(table.c.id == object_id).values(**values))
                if result.rowcount == 0:
                    return None
            row = conn.execute(select(table).where(table.c.id == object_id)).mappings().first()
            return None if row is None else dict(row)

        return await self._writes.submit(Write(apply=apply))

    async def delete(self, kind: Kind, object_id: str) -> bool:
        """Delete the row. A team that still has keys is not deleted (`InvalidRequestError`)."""
        table = _table(kind)

        def apply(conn: Connection) -> bool:
            if kind == "team" and conn.scalar(select(_k.c.seq).where(_k.c.team_id == object_id).limit(1)):
                raise InvalidRequestError(
                    f"The team '{object_id}' still has keys; delete them or move them to another team first.",
                    param="team_id",
                    code="team_has_keys",
                )
            return bool(conn.execute(delete(table).where(table.c.id == object_id)).rowcount)

        return await self._writes.submit(Write(apply=apply))

    async def insert_checked(self, kind: Kind, row: Mapping[str, Any]) -> None:
        """Insert a key whose team must exist (checked in the same transaction)."""
        team_id = row.get("team_id")

        def apply(conn: Connection) -> None:
            if team_id is not None and conn.scalar(select(_t.c.seq).where(_t.c.id == team_id)) is None:
                raise InvalidRequestError(f"No team has the id '{team_id}'.", param="team_id", code="invalid_value")
            conn.execute(insert(_table(kind)), [dict(row)])

        await self._writes.submit(Write(apply=apply))

    async def team_exists(self, team_id: str) -> bool:
        async with storage_errors(), self._engine.connect() as conn:
            return (await conn.scalar(select(_t.c.seq).where(_t.c.id == team_id))) is not None
