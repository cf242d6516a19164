"""The function serving each operation of the route table (`manifold.api.operations`), and the routes built
from them. The table says which routes exist; this module only says who answers each: an operation without a
function here, or a function for no operation, is a `RuntimeError` when the routes are built (and a unit test).
"""

from __future__ import annotations

from collections.abc import Mapping

from manifold.api.operations import ADMIN_OPERATIONS, API_OPERATIONS, KSERVE_OPERATIONS, ROOT_OPERATIONS, Operation
from manifold.config import Config
from manifold.server.endpoints import (
    admin_keys,
    admin_usage,
    chat,
    completions,
    embeddings,
    health,
    images,
    kserve_urls,
    mcp,
    metrics,
    models,
    responses_api,
    stored_chat,
)
from manifold.server.routes import Handler, Route

__all__ = ["HANDLERS", "MCP_ROUTES", "check", "default_routes", "route"]

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
    "create_key": admin_keys.create_key,
    "list_keys": admin_keys.list_keys,
    "retrieve_key": admin_keys.get_key,
    "update_key": admin_keys.update_key,
    "delete_key": admin_keys.delete_key,
    "rotate_key": admin_keys.rotate_key,
    "create_team": admin_keys.create_team,
    "list_teams": admin_keys.list_teams,
    "retrieve_team": admin_keys.get_team,
    "update_team": admin_keys.update_team,
    "delete_team": admin_keys.delete_team,
    "admin_openapi": admin_keys.openapi,
    "usage": admin_usage.usage,
}


# MCP (docs/mcp.md), under each prefix but not OpenAI operations: run one configured tool for a client, and the
# gateway as one MCP server (streamable HTTP) serving the union of the configured servers' tools.
MCP_ROUTES = (
    Route("POST", "/mcp/tools/call", mcp.call_tool, cancellable=True),
    Route("POST", "/mcp", mcp.serve_mcp),
    Route("GET", "/mcp", mcp.serve_mcp),
    Route("DELETE", "/mcp", mcp.serve_mcp),
)


def check(handlers: Mapping[str, Handler] = HANDLERS) -> None:
    """Every operation of the table has a function, and every function an operation."""
    names = {op.name for op in API_OPERATIONS + ROOT_OPERATIONS + KSERVE_OPERATIONS + ADMIN_OPERATIONS}
    missing, extra = sorted(names - handlers.keys()), sorted(handlers.keys() - names)
    if missing or extra:
        raise RuntimeError(f"route table and handlers disagree: no handler for {missing}; no operation for {extra}")


def route(op: Operation, prefix: str = "") -> Route:
    """The gateway's own route for `op`, its path under `prefix` ("" for none)."""
    return Route(op.method, prefix + op.path, HANDLERS[op.name], op.cancellable)


def default_routes(config: Config) -> list[Route]:
    """The routes `manifold serve` mounts for `config`: the API under each prefix, health, the metrics scrape
    (when served on the API's port), the per-model URLs (unless `server.kserve_urls` is false), the admin API
    (keys, teams, usage), and with `mcp_servers` the MCP routes under each prefix."""
    check()
    routes: list[Route] = []
    for prefix in config.server.prefixes:
        p = "" if prefix == "/" else prefix
        routes.extend(route(op, p) for op in API_OPERATIONS)
        if config.mcp_servers:  # docs/mcp.md
            routes.extend(r._replace(path=p + r.path) for r in MCP_ROUTES)
    routes.extend(route(op) for op in ROOT_OPERATIONS)
    if config.metrics.enabled and config.metrics.port is None:
        routes.append(Route("GET", config.metrics.path, metrics.scrape))
    if config.server.kserve_urls:
        routes.extend(route(op) for op in KSERVE_OPERATIONS)
    routes.extend(route(op) for op in ADMIN_OPERATIONS)  # docs/access.md
    return routes
