"""MCP at the edge (docs/mcp.md): chat completions with a model's configured MCP tools, `POST /mcp/tools/call`
(run one configured tool for a client), and `/mcp` (the gateway as one streamable-HTTP MCP server serving the
union of the configured servers' tools)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from manifold import _json
from manifold.api.chat import ChatCompletionRequest
from manifold.api.chat_response import ChunkShaper, normalize_completion
from manifold.api.validation import decode_json_object
from manifold.config import McpChatSettings
from manifold.errors import InvalidRequestError, NotFoundError, UnsupportedError
from manifold.mcp.chat import CALLS_HEADER, execute, run_call, with_tools
from manifold.mcp.manager import allowed_servers
from manifold.providers.base import Call
from manifold.server.sse_writer import stream_chat

if TYPE_CHECKING:
    from manifold.mcp.gateway import McpGateway
    from manifold.mcp.manager import McpManager
    from manifold.server.asgi import Request
    from manifold.server.services import Services


def _manager(services: Services) -> McpManager:
    assert services.mcp is not None  # ManifoldApp makes one (with no servers when none are configured)
    return services.mcp


def _gateway(services: Services) -> McpGateway:
    assert services.mcp_gateway is not None
    return services.mcp_gateway


def chat_settings(services: Services, model: str) -> McpChatSettings | None:
    return services.config.mcp.models.get(model)


def add_tools(services: Services, raw: dict[str, Any], settings: McpChatSettings) -> dict[str, Any]:
    return with_tools(raw, _manager(services).functions(settings.servers, allowed_servers()))


async def chat_execute(services: Services, request: Request, raw: dict[str, Any], req: ChatCompletionRequest) -> None:
    """`mode: execute`: the gateway runs the tool loop and answers with the final message (streamed as one
    delta when the client asked for a stream); the calls made are in the `x-manifold-mcp-calls` header."""
    settings = chat_settings(services, req.model)
    assert settings is not None
    if req.store:
        raise UnsupportedError(
            f"The model '{req.model}' runs its MCP tools in the gateway ('execute'), whose completions are not "
            "stored; leave out 'store'.",
            param="store",
        )
    functions = _manager(services).functions(settings.servers, allowed_servers())
    with_tools(raw, functions)  # the client's own tool names checked

    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        call = Call(body, req.model, request.request_id, False)
        return normalize_completion(await services.router.chat(call, request.add_response_header), req.model)

    completion, made = await execute(raw, functions, chat, services.config.mcp.max_tool_rounds)
    request.add_response_header(CALLS_HEADER, json.dumps(made, ensure_ascii=True, separators=(",", ":")))
    if not req.stream:
        await request.send_json(200, _json.encode(completion))
        return
    include_usage = bool(req.stream_options and req.stream_options.include_usage)

    async def opened() -> AsyncIterator[dict[str, Any]]:
        return _as_chunks(completion)

    await stream_chat(request, opened, ChunkShaper(req.model, include_usage), services.settings.keepalive_interval)


async def _as_chunks(completion: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """A finished completion as the chunks of a stream (one delta per choice, then the usage)."""
    base = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created", int(time.time())),
        "model": completion.get("model"),
    }
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant"}
        for key in ("content", "refusal"):
            if message.get(key) is not None:
                delta[key] = message[key]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{"index": i, **tc} for i, tc in enumerate(message["tool_calls"])]
        yield {**base, "choices": [{"index": choice.get("index", 0), "delta": delta, "finish_reason": None}]}
        yield {
            **base,
            "choices": [{"index": choice.get("index", 0), "delta": {}, "finish_reason": choice.get("finish_reason")}],
        }
    if completion.get("usage"):
        yield {**base, "choices": [], "usage": completion["usage"]}


async def call_tool(services: Services, request: Request) -> None:
    """`POST {prefix}/mcp/tools/call` `{"name": "server__tool", "arguments": {…}}` → `{"name", "output",
    "is_error"}`: one configured tool run for a client (chat's `return` mode)."""
    raw = decode_json_object(await request.body(services.settings.max_body_size))
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(
            "Missing required parameter: 'name'.", param="name", code="missing_required_parameter"
        )
    arguments = raw.get("arguments", {})
    if isinstance(arguments, str):
        text = arguments
    elif isinstance(arguments, dict):
        text = json.dumps(arguments)
    else:
        raise InvalidRequestError(
            "Invalid type for 'arguments': expected an object (or a JSON string of one).",
            param="arguments",
            code="invalid_type",
        )
    functions = _manager(services).functions(allowed=allowed_servers())  # a tool the key may not use: unknown
    if name not in functions:
        raise NotFoundError(f"No MCP tool named '{name}' is available (name it 'server__tool').", param="name")
    server, tool = functions[name]
    output, ok = await run_call(server, tool.name, text)
    await request.send_json(200, _json.encode({"name": name, "output": output, "is_error": not ok}))


async def serve_mcp(services: Services, request: Request) -> None:
    """`{prefix}/mcp`: the SDK's streamable-HTTP server answers the exchange itself (POST, GET, DELETE)."""
    if not _manager(services).servers:
        raise NotFoundError("No MCP servers are configured on this server.")
    await _gateway(services).handle(request.scope, request.receive, request.send)
