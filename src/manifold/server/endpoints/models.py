"""GET /models and GET /models/{model}."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from manifold import _json

if TYPE_CHECKING:
    from manifold.routing.router import ModelGroup
    from manifold.server.app import ManifoldApp
    from manifold.server.http import Request


def _model(group: ModelGroup) -> dict[str, Any]:
    return {"id": group.name, "object": "model", "created": group.created, "owned_by": group.owned_by}


async def list_models(app: ManifoldApp, request: Request) -> None:
    body = {"object": "list", "data": [_model(g) for g in app.router.groups.values()]}
    await request.send_json(200, _json.encode(body))


async def retrieve_model(app: ManifoldApp, request: Request, model: str) -> None:
    await request.send_json(200, _json.encode(_model(app.router.group(model))))
