"""The admin operations on keys and teams, shared by the admin API (server/endpoints/admin_keys.py) and the CLI
(`manifold keys …`): validate, write, tell the replicas (`notify`), answer with the API objects."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from manifold.access import keys
from manifold.errors import InvalidRequestError, NotFoundError
from manifold.storage.access_keys import AccessStore, Kind

__all__ = ["Admin"]

Notify = Callable[[str], Awaitable[None]]
MAX_LIMIT = 100
KEY_FILTERS = {"team_id": "team_id", "user": "user_id", "alias": "alias", "blocked": "blocked"}
TEAM_FILTERS = {"alias": "alias", "blocked": "blocked"}


def _not_found(kind: Kind, object_id: str) -> NotFoundError:
    return NotFoundError(f"No {kind} found with id '{object_id}'.", param=f"{kind}_id")


def _object(kind: Kind, row: Mapping[str, Any], secret: str | None = None) -> dict[str, Any]:
    return keys.key_object(row, secret) if kind == "key" else keys.team_object(row)


class Admin:
    def __init__(self, store: AccessStore, notify: Notify, rotation_grace_s: float) -> None:
        self.store = store
        self.notify = notify
        self.rotation_grace_s = rotation_grace_s

    async def create_key(self, body: keys.KeyCreate) -> dict[str, Any]:
        secret = keys.new_secret()
        now = int(time.time())
        row = keys.new_row(
            "key",
            {**keys.row_values(body), "key_hash": keys.hash_secret(secret), "display": keys.display_of(secret)},
            now,
        )
        await self.store.insert_checked("key", row)
        await self.notify("created")
        return keys.key_object(row, secret)

    async def create_team(self, body: keys.TeamCreate) -> dict[str, Any]:
        row = keys.new_row("team", keys.row_values(body), int(time.time()))
        await self.store.create("team", row)
        await self.notify("team")
        return keys.team_object(row)

    async def get(self, kind: Kind, object_id: str) -> dict[str, Any]:
        row = await self.store.get(kind, object_id)
        if row is None:
            raise _not_found(kind, object_id)
        return _object(kind, row)

    async def list(self, kind: Kind, query: Mapping[str, str]) -> dict[str, Any]:
        """A page like OpenAI's lists: `data`, `first_id`, `last_id`, `has_more`; `after` and `limit` (1 to 100)."""
        allowed = KEY_FILTERS if kind == "key" else TEAM_FILTERS
        filters: dict[str, Any] = {}
        for name, value in query.items():
            if name in ("after", "limit"):
                continue
            if name not in allowed:
                raise InvalidRequestError(f"Unknown query parameter '{name}'.", param=name, code="unknown_parameter")
            if name == "blocked":
                if value not in ("true", "false"):
                    raise InvalidRequestError("'blocked' must be true or false.", param="blocked", code="invalid_value")
                filters["blocked"] = int(value == "true")
            else:
                filters[allowed[name]] = value
        limit = 20
        if "limit" in query:
            try:
                limit = int(query["limit"])
            except ValueError:
                limit = 0
            if not 1 <= limit <= MAX_LIMIT:
                raise InvalidRequestError(
                    f"'limit' must be an integer from 1 to {MAX_LIMIT}.", param="limit", code="invalid_value"
                )
        page = await self.store.list(kind, after=query.get("after"), limit=limit, filters=filters)
        data = [_object(kind, row) for row in page.items]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": page.has_more,
        }

    async def update(self, kind: Kind, object_id: str, body: keys.KeyCreate | keys.TeamCreate) -> dict[str, Any]:
        values = keys.row_values(body)
        team_id = values.get("team_id")
        if team_id is not None and not await self.store.team_exists(team_id):
            raise InvalidRequestError(f"No team has the id '{team_id}'.", param="team_id", code="invalid_value")
        values["updated_at"] = int(time.time())
        row = await self.store.update(kind, object_id, values)
        if row is None:
            raise _not_found(kind, object_id)
        await self.notify("updated")
        return _object(kind, row)

    async def rotate(self, key_id: str, grace_s: float | None = None) -> dict[str, Any]:
        """A new secret (returned once); the old one keeps working for `grace_s` (default: auth.rotation_grace_s)."""
        row = await self.store.get("key", key_id)
        if row is None:
            raise _not_found("key", key_id)
        secret = keys.new_secret()
        now = int(time.time())
        grace = self.rotation_grace_s if grace_s is None else grace_s
        values = {
            "key_hash": keys.hash_secret(secret),
            "display": keys.display_of(secret),
            "previous_hash": row["key_hash"] if grace > 0 else None,
            "previous_expires_at": int(now + grace) if grace > 0 else None,
            "updated_at": now,
        }
        updated = await self.store.update("key", key_id, values)
        if updated is None:
            raise _not_found("key", key_id)
        await self.notify("rotated")
        return keys.key_object(updated, secret)

    async def delete(self, kind: Kind, object_id: str) -> dict[str, Any]:
        if not await self.store.delete(kind, object_id):
            raise _not_found(kind, object_id)
        await self.notify("deleted")
        return {"id": object_id, "object": f"{kind}.deleted", "deleted": True}
