"""GET /models and GET /models/{model}."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from manifold import _json

if TYPE_CHECKING:
    from manifold.routing.router import ModelGroup
    from manifold.server.asgi import Request
    from manifold.server.services import Services


def _model(name: str, group: ModelGroup) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": group.created, "owned_by": group.owned_by}


async def list_models(services: Services, request: Request) -> None:
    body = {"object": "list", "data": [_model(name, g) for name, g in services.router.listed_models()]}
    await request.send_json(200, _json.encode(body))


async def retrieve_model(services: Services, request: Request, model: str) -> None:
    # Aliases and names a wildcard group serves (`openai/gpt-4o`) are models too.
    await request.send_json(200, _json.encode(_model(model, services.router.group(model))))
