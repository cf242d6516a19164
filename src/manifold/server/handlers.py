"""The function serving each operation of the route table (`manifold.api.operations`), and the routes built
from them. The table says which routes exist; this module only says who answers each: an operation without a
function here, or a function for no operation, is a `RuntimeError` when the routes are built (and a unit test).
"""

from __future__ import annotations

from collections.abc import Mapping

from manifold.api.operations import API_OPERATIONS, KSERVE_OPERATIONS, ROOT_OPERATIONS, Operation
from manifold.config import Config
from manifold.server.endpoints import (
    admin_usage,
    chat,
    completions,
    embeddings,
    health,
    images,
    kserve_urls,
    metrics,
    models,
    responses_api,
    stored_chat,
)
from manifold.server.routes import Handler, Route

__all__ = ["ADMIN_ROUTES", "HANDLERS", "check", "default_routes", "route"]

HANDLERS: Mapping[str, Handler] = {
    "create_chat_completion": chat.create_chat_completion,
    "list_chat_completions": stored_chat.list_chat_completions,
    "retrieve_chat_completion": stored_chat.retrieve_chat_completion,
    "update_chat_completion": stored_chat.update_chat_completion,
    "delete_chat_completion": stored_chat.delete_chat_completion,
    "list_chat_completion_messages": stored_chat.list_chat_completion_messages,
    "create_response": responses_api.create_response,
    "retrieve_response": responses_api.retrieve_response,
    "delete_response": responses_api.delete_response,
    "list_response_input_items": responses_api.list_input_items,
    "count_response_input_tokens": responses_api.count_input_tokens,
    "cancel_response": responses_api.cancel_response,
    "compact_response": responses_api.compact_response,
    "create_completion": completions.create_completion,
    "create_embedding": embeddings.create_embeddings,
    "create_image": images.create_image,
    "list_models": models.list_models,
    "retrieve_model": models.retrieve_model,
    "health": health.alive,
    "health_ready": health.ready,
    "kserve_create_chat_completion": kserve_urls.chat_completions,
    "kserve_stream_chat_completion": kserve_urls.stream_chat_completions,
    "kserve_create_embedding": kserve_urls.embeddings,
    "kserve_stream_embedding": kserve_urls.embeddings,
    "kserve_create_image": kserve_urls.images_generations,
    "kserve_stream_image": kserve_urls.images_generations,
}


# The admin API (docs/access.md): the gateway's own, outside the OpenAI route table and the prefixes.
ADMIN_ROUTES: tuple[Route, ...] = (Route("GET", "/admin/usage", admin_usage.usage),)


def check(handlers: Mapping[str, Handler] = HANDLERS) -> None:
    """Every operation of the table has a function, and every function an operation."""
    names = {op.name for op in API_OPERATIONS + ROOT_OPERATIONS + KSERVE_OPERATIONS}
    missing, extra = sorted(names - handlers.keys()), sorted(handlers.keys() - names)
    if missing or extra:
        raise RuntimeError(f"route table and handlers disagree: no handler for {missing}; no operation for {extra}")


def route(op: Operation, prefix: str = "") -> Route:
    """The gateway's own route for `op`, its path under `prefix` ("" for none)."""
    return Route(op.method, prefix + op.path, HANDLERS[op.name], op.cancellable)


def default_routes(config: Config) -> list[Route]:
    """The routes `manifold serve` mounts for `config`: the API under each prefix, health, the admin API, the
    metrics scrape (when served on the API's port) and the per-model URLs (unless `server.kserve_urls` is
    false)."""
    check()
    routes: list[Route] = []
    for prefix in config.server.prefixes:
        p = "" if prefix == "/" else prefix
        routes.extend(route(op, p) for op in API_OPERATIONS)
    routes.extend(route(op) for op in ROOT_OPERATIONS)
    routes.extend(ADMIN_ROUTES)
    if config.metrics.enabled and config.metrics.port is None:
        routes.append(Route("GET", config.metrics.path, metrics.scrape))
    if config.server.kserve_urls:
        routes.extend(route(op) for op in KSERVE_OPERATIONS)
    return routes
