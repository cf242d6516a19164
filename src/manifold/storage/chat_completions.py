"""Stored chat completions: save, get, list (cursor pages with filters), update metadata, delete, messages.

Every write goes through the store's durable-write queue (`writer.py`: group commit) and is committed before
the method returns: the caller acknowledges the client only after that, so an acknowledged completion is on
disk. Objects cross this module as the JSON dicts the API
sends; the tables keep them as JSON text.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from sqlalchemy import Connection, delete, exists, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from manifold import _json
from manifold.errors import InvalidRequestError
from manifold.storage.errors import storage_errors
from manifold.storage.rows import Order, cursor_select, json_text, now_ms
from manifold.storage.tables import chat_completion_messages, chat_completion_metadata, chat_completions
from manifold.storage.writer import DurableWrites, Write

_cc = chat_completions
_msg = chat_completion_messages
_md = chat_completion_metadata


class Page(NamedTuple):
    items: list[dict[str, Any]]
    has_more: bool


class MessagePage(NamedTuple):
    items: list[tuple[int, dict[str, Any]]]  # (position, the request message as the client sent it)
    has_more: bool


def _with_metadata(completion_json: str, metadata_json: str) -> dict[str, Any]:
    completion: dict[str, Any] = _json.decode(completion_json)
    completion["metadata"] = _json.decode(metadata_json)
    return completion


class ChatCompletionStore:
    def __init__(self, engine: AsyncEngine, writes: DurableWrites) -> None:
        self._engine = engine
        self._writes = writes

    async def save(
        self,
        completion: Mapping[str, Any],
        messages: list[Any],
        metadata: Mapping[str, str] | None,
        request_id: str | None = None,
    ) -> None:
        """Store a completion (its `id`, `model` and `created` as sent) with the request's messages."""
        body = {k: v for k, v in completion.items() if k != "metadata"}
        meta = dict(metadata or {})
        completion_id = str(completion["id"])
        row = {
            "id": completion_id,
            "model": str(completion["model"]),
            "created": int(completion["created"]),
            "metadata_json": json_text(meta),
            "request_id": request_id,
            "completion": json_text(body),
            "stored_at": now_ms(),
        }
        messages_rows = [
            {"completion_id": completion_id, "position": i, "message": json_text(m)} for i, m in enumerate(messages)
        ]
        await self._writes.submit(
            Write([(_cc, [row]), (_msg, messages_rows), (_md, _metadata_rows(completion_id, meta))])
        )

    async def get(self, completion_id: str) -> dict[str, Any] | None:
        async with storage_errors(), self._engine.connect() as conn:
            row = (
                await conn.execute(select(_cc.c.completion, _cc.c.metadata_json).where(_cc.c.id == completion_id))
            ).first()
        return None if row is None else _with_metadata(row.completion, row.metadata_json)

    async def list(
        self,
        *,
        after: str | None = None,
        limit: int = 20,
        order: Order = "asc",
        model: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Page:
        stmt = select(_cc.c.completion, _cc.c.metadata_json)
        if model is not None:
            stmt = stmt.where(_cc.c.model == model)
        for key, value in (metadata or {}).items():
            stmt = stmt.where(exists().where(_md.c.completion_id == _cc.c.id, _md.c.key == key, _md.c.value == value))
        async with storage_errors(), self._engine.connect() as conn:
            seq = None if after is None else await conn.scalar(select(_cc.c.seq).where(_cc.c.id == after))
            if after is not None and seq is None:
                raise InvalidRequestError(
                    f"Invalid 'after': no stored chat completion has the id '{after}'.",
                    param="after",
                    code="invalid_value",
                )
            rows = (await conn.execute(cursor_select(stmt, _cc.c.seq, seq, order, limit))).all()
        items = [_with_metadata(r.completion, r.metadata_json) for r in rows[:limit]]
        return Page(items, len(rows) > limit)

    async def update_metadata(self, completion_id: str, metadata: Mapping[str, str] | None) -> dict[str, Any] | None:
        """Replace the metadata; the updated completion, or None when there is no such completion."""
        meta = dict(metadata or {})

        def apply(conn: Connection) -> str | None:
            result = conn.execute(update(_cc).where(_cc.c.id == completion_id).values(metadata_json=json_text(meta)))
            if result.rowcount == 0:
                return None
            conn.execute(delete(_md).where(_md.c.completion_id == completion_id))
            md_rows = _metadata_rows(completion_id, meta)
            if md_rows:
                conn.execute(insert(_md), md_rows)
            body: str | None = conn.scalar(select(_cc.c.completion).where(_cc.c.id == completion_id))
            return body

        body = await self._writes.submit(Write(apply=apply))
        if body is None:
            return None
        completion: dict[str, Any] = _json.decode(body)
        completion["metadata"] = meta
        return completion

    async def delete(self, completion_id: str) -> bool:
        def apply(conn: Connection) -> bool:
            # Children first: SQLite enforces ON DELETE CASCADE only where foreign keys were switched on.
            conn.execute(delete(_msg).where(_msg.c.completion_id == completion_id))
            conn.execute(delete(_md).where(_md.c.completion_id == completion_id))
            result = conn.execute(delete(_cc).where(_cc.c.id == completion_id))
            return bool(result.rowcount)

        return await self._writes.submit(Write(apply=apply))

    async def messages(
        self, completion_id: str, *, after: int | None = None, limit: int = 20, order: Order = "asc"
    ) -> MessagePage | None:
        """A page of the stored request messages (None when there is no such completion)."""
        stmt = select(_msg.c.position, _msg.c.message).where(_msg.c.completion_id == completion_id)
        stmt = cursor_select(stmt, _msg.c.position, after, order, limit)
        async with storage_errors(), self._engine.connect() as conn:
            rows = (await conn.execute(stmt)).all()
            if not rows and not await conn.scalar(select(func.count()).where(_cc.c.id == completion_id)):
                return None
        items = [(r.position, _json.decode(r.message)) for r in rows[:limit]]
        return MessagePage(items, len(rows) > limit)

    async def count(self) -> int:
        async with storage_errors(), self._engine.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(_cc)) or 0)


def _metadata_rows(completion_id: str, metadata: Mapping[str, str]) -> list[dict[str, Any]]:
    return [{"completion_id": completion_id, "key": k, "value": v} for k, v in metadata.items()]
