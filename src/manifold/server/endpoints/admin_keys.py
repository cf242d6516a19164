"""The admin API for virtual keys and teams (docs/access.md): `/admin/keys`, `/admin/teams`, and the admin API's
own OpenAPI document at `/admin/openapi.json`. Only the master key or an admin key reaches them (the
authentication layer answers 401/403 before these run)."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from manifold import _json
from manifold.access import keys
from manifold.access.admin import Admin
from manifold.access.openapi import document
from manifold.errors import InvalidRequestError

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services


async def _admin(services: Services) -> Admin:
    auth = services.auth

    async def notify(reason: str) -> None:
        if auth is not None:
            await auth.changed(reason)

    return Admin(await services.store.access(), notify, services.config.auth.rotation_grace_s)


def _query(request: Request) -> dict[str, str]:
    pairs = parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True, encoding="utf-8")
    query: dict[str, str] = {}
    for name, value in pairs:
        if name in query:
            raise InvalidRequestError(f"'{name}' is given more than once.", param=name, code="invalid_value")
        query[name] = value
    return query


async def _send(request: Request, obj: object, status: int = 200) -> None:
    await request.send_json(status, _json.encode(obj))


async def create_key(services: Services, request: Request) -> None:
    body = keys.parse_body(await request.body(services.settings.max_body_size), keys.KeyCreate)
    await _send(request, await (await _admin(services)).create_key(body))


async def list_keys(services: Services, request: Request) -> None:
    await _send(request, await (await _admin(services)).list("key", _query(request)))


async def get_key(services: Services, request: Request, key_id: str) -> None:
    await _send(request, await (await _admin(services)).get("key", key_id))


async def update_key(services: Services, request: Request, key_id: str) -> None:
    body = keys.parse_body(await request.body(services.settings.max_body_size), keys.KeyUpdate)
    await _send(request, await (await _admin(services)).update("key", key_id, body))


async def rotate_key(services: Services, request: Request, key_id: str) -> None:
    raw = await request.body(services.settings.max_body_size)
    body = keys.parse_body(raw, keys.RotateBody)
    await _send(request, await (await _admin(services)).rotate(key_id, body.grace_s))


async def delete_key(services: Services, request: Request, key_id: str) -> None:
    await _send(request, await (await _admin(services)).delete("key", key_id))


async def create_team(services: Services, request: Request) -> None:
    body = keys.parse_body(await request.body(services.settings.max_body_size), keys.TeamCreate)
    await _send(request, await (await _admin(services)).create_team(body))


async def list_teams(services: Services, request: Request) -> None:
    await _send(request, await (await _admin(services)).list("team", _query(request)))


async def get_team(services: Services, request: Request, team_id: str) -> None:
    await _send(request, await (await _admin(services)).get("team", team_id))


async def update_team(services: Services, request: Request, team_id: str) -> None:
    body = keys.parse_body(await request.body(services.settings.max_body_size), keys.TeamUpdate)
    await _send(request, await (await _admin(services)).update("team", team_id, body))


async def delete_team(services: Services, request: Request, team_id: str) -> None:
    await _send(request, await (await _admin(services)).delete("team", team_id))


async def openapi(services: Services, request: Request) -> None:
    await _send(request, document())
