"""Stored responses (the Responses API): save, update as a background response runs, get, delete, input items,
and the lease that tells a running background response from one whose process died.

Objects cross this module as the JSON dicts the API sends. Every write goes through the store's durable-write
queue (`writer.py`: group commit) and is committed before the method returns.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from sqlalchemy import Connection, Integer, and_, delete, func, literal, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from manifold import _json
from manifold.errors import InvalidRequestError
from manifold.storage.errors import storage_errors
from manifold.storage.rows import Order, cursor_select, json_text
from manifold.storage.rows import now_ms as _now_ms
from manifold.storage.tables import response_input_items, responses
from manifold.storage.writer import DurableWrites, Write

UNFINISHED = ("queued", "in_progress")
_r = responses
_items = response_input_items


class ItemPage(NamedTuple):
    items: list[dict[str, Any]]
    has_more: bool


class StoredResponse(NamedTuple):
    response: dict[str, Any]
    owner: str | None
    lease_until: int | None


class ChainLink(NamedTuple):
    stored: StoredResponse
    input_items: list[dict[str, Any]]


class ResponseStore:
    def __init__(self, engine: AsyncEngine, writes: DurableWrites) -> None:
        self._engine = engine
        self._writes = writes

    async def save(
        self,
        response: Mapping[str, Any],
        input_items: Sequence[Mapping[str, Any]],
        request_id: str | None = None,
        *,
        owner: str | None = None,
        lease_until: int | None = None,
    ) -> None:
        """Store a response with its input items (each with its `id`)."""
        now = _now_ms()
        response_id = str(response["id"])
        row = {
            "id": response_id,
            "model": str(response["model"]),
            "created_at": int(response["created_at"]),
            "status": str(response["status"]),
            "background": 1 if response.get("background") else 0,
            "previous_response_id": response.get("previous_response_id"),
            "request_id": request_id,
            "response": json_text(response),
            "stored_at": now,
            "updated_at": now,
            "owner": owner,
            "lease_until": lease_until,
        }
        item_rows = [
            {"response_id": response_id, "position": i, "item_id": str(item["id"]), "item": json_text(item)}
            for i, item in enumerate(input_items)
        ]
        await self._writes.submit(Write([(_r, [row]), (_items, item_rows)]))

    async def update(self, response: Mapping[str, Any], *, only_if_unfinished: bool = False) -> bool:
        """Replace a stored response (its status and body); False when it is gone (or, with
        `only_if_unfinished`, already finished: a cancel or the reaper got there first)."""
        stmt = update(_r).where(_r.c.id == str(response["id"]))
        if only_if_unfinished:
            stmt = stmt.where(_r.c.status.in_(UNFINISHED))
        finished = response["status"] not in UNFINISHED
        values: dict[str, Any] = {"status": str(response["status"]), "response": json_text(response)}
        values["updated_at"] = _now_ms()
        if finished:
            values["owner"] = None
            values["lease_until"] = None
        return await self._writes.submit(Write(apply=_rowcount(stmt.values(**values))))

    async def get(self, response_id: str) -> StoredResponse | None:
        async with storage_errors(), self._engine.connect() as conn:
            row = (
                await conn.execute(select(_r.c.response, _r.c.owner, _r.c.lease_until).where(_r.c.id == response_id))
            ).first()
        return None if row is None else _stored(row)

    async def chain(self, response_id: str, limit: int) -> list[ChainLink]:
        """The response and those before it (`previous_response_id`, up to `limit` in all), newest first, each
        with its input items: two statements on one connection, whatever the chain's length (a recursive query
        walks the links in the database). The walk ends at the first link that is not stored (deleted)."""
        walk = (
            select(_r.c.id, _r.c.previous_response_id, literal(0, Integer).label("depth"))
            .where(_r.c.id == response_id)
            .cte("chain", recursive=True)
        )
        walk = walk.union_all(
            select(_r.c.id, _r.c.previous_response_id, walk.c.depth + 1).where(
                _r.c.id == walk.c.previous_response_id, walk.c.depth < limit - 1
            )
        )
        links = (
            select(_r.c.id, _r.c.response, _r.c.owner, _r.c.lease_until)
            .join_from(walk, _r, _r.c.id == walk.c.id)
            .order_by(walk.c.depth)
        )
        items = (
            select(_items.c.response_id, _items.c.item)
            .where(_items.c.response_id.in_(select(walk.c.id)))
            .order_by(_items.c.response_id, _items.c.position)
        )
        async with storage_errors(), self._engine.connect() as conn:
            rows = (await conn.execute(links)).all()
            by_response: dict[str, list[dict[str, Any]]] = {}
            if rows:
                for item in await conn.execute(items):
                    by_response.setdefault(item.response_id, []).append(_json.decode(item.item))
        return [ChainLink(_stored(row), by_response.get(row.id, [])) for row in rows]

    async def delete(self, response_id: str) -> bool:
        def apply(conn: Connection) -> bool:
            # Children first: SQLite enforces ON DELETE CASCADE only where foreign keys were switched on.
            conn.execute(delete(_items).where(_items.c.response_id == response_id))
            result = conn.execute(delete(_r).where(_r.c.id == response_id))
            return bool(result.rowcount)

        return await self._writes.submit(Write(apply=apply))

    async def input_items(self, response_id: str) -> list[dict[str, Any]] | None:
        """All input items of a response, in order (None when there is no such response)."""
        stmt = select(_items.c.item).where(_items.c.response_id == response_id).order_by(_items.c.position)
        async with storage_errors(), self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
            if not rows and not await conn.scalar(select(func.count()).where(_r.c.id == response_id)):
                return None
        return [_json.decode(r.item) for r in rows]

    async def input_item_page(
        self, response_id: str, *, after: str | None, limit: int, order: Order
    ) -> ItemPage | None:
        """A page of a response's input items (None when there is no such response); `after` is an item id."""
        async with storage_errors(), self._engine.connect() as conn:
            if not await conn.scalar(select(func.count()).where(_r.c.id == response_id)):
                return None
            stmt = select(_items.c.item).where(_items.c.response_id == response_id)
            position = None
            if after is not None:
                position = await conn.scalar(
                    select(_items.c.position).where(_items.c.response_id == response_id, _items.c.item_id == after)
                )
                if position is None:
                    raise InvalidRequestError(
                        f"Invalid 'after': no input item of this response has the id '{after}'.",
                        param="after",
                        code="invalid_value",
                    )
            rows = (await conn.execute(cursor_select(stmt, _items.c.position, position, order, limit))).all()
        return ItemPage([_json.decode(r.item) for r in rows[:limit]], len(rows) > limit)

    async def renew_leases(self, owner: str, response_ids: Sequence[str], lease_until: int) -> set[str]:
        """Extend the leases of the unfinished responses `owner` runs; the ids still unfinished and its own
        (the others were cancelled, deleted or failed elsewhere)."""
        if not response_ids:
            return set()
        mine = and_(_r.c.id.in_(list(response_ids)), _r.c.owner == owner, _r.c.status.in_(UNFINISHED))

        def apply(conn: Connection) -> set[str]:
            conn.execute(update(_r).where(mine).values(lease_until=lease_until))
            return set((conn.scalars(select(_r.c.id).where(mine))).all())

        return await self._writes.submit(Write(apply=apply))

    async def expired(self, now_ms: int | None = None) -> list[dict[str, Any]]:
        """Unfinished responses whose lease ran out (their process is gone)."""
        now = _now_ms() if now_ms is None else now_ms
        stmt = select(_r.c.response).where(
            _r.c.status.in_(UNFINISHED), or_(_r.c.lease_until.is_(None), _r.c.lease_until < now)
        )
        async with storage_errors(), self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
        return [_json.decode(r.response) for r in rows]

    async def fail_if_expired(self, response: Mapping[str, Any], now_ms: int | None = None) -> bool:
        """Store `response` (a failed copy of an unfinished one) if its lease is still expired; the check and
        the write are one statement, so a process that renewed its lease meanwhile keeps its response."""
        now = _now_ms() if now_ms is None else now_ms
        stmt = (
            update(_r)
            .where(
                and_(
                    _r.c.id == str(response["id"]),
                    _r.c.status.in_(UNFINISHED),
                    or_(_r.c.lease_until.is_(None), _r.c.lease_until < now),
                )
            )
            .values(
                status=str(response["status"]),
                response=json_text(response),
                updated_at=now,
                owner=None,
                lease_until=None,
            )
        )
        return await self._writes.submit(Write(apply=_rowcount(stmt)))


def _stored(row: Any) -> StoredResponse:
    response = _json.decode(row.response)
    if response.get("status") == "queued" and row.lease_until is not None and row.lease_until >= _now_ms():
        # The process that stored it queued starts it at once and does not write `in_progress` (a write per
        # background response saved): a live lease on a queued response means it is running.
        response["status"] = "in_progress"
    return StoredResponse(response, row.owner, row.lease_until)


def _rowcount(stmt: Any) -> Any:
    """A write that runs one UPDATE and tells whether it changed a row."""

    def apply(conn: Connection) -> bool:
        return bool((conn.execute(stmt)).rowcount)

    return apply
