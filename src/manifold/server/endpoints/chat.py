"""POST /chat/completions."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from manifold import _json
from manifold.api.chat import ChatCompletionRequest, cross_field_problems
from manifold.api.chat_response import ChunkShaper, normalize_completion
from manifold.api.validation import convert, decode_json_object
from manifold.errors import InvalidRequestError
from manifold.providers.base import Call
from manifold.server.endpoints import mcp
from manifold.server.endpoints.stored_chat import create_stored
from manifold.server.sse_writer import stream_chat

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services

log = logging.getLogger("manifold.chat")
_KNOWN_FIELDS = frozenset(ChatCompletionRequest.__struct_fields__)


async def create_chat_completion(services: Services, request: Request) -> None:
    raw = decode_json_object(await request.body(services.settings.max_body_size))
    req = convert(raw, ChatCompletionRequest)
    problem = cross_field_problems(req)
    if problem is not None:
        raise InvalidRequestError(problem[1], param=problem[0], code="invalid_value")
    if log.isEnabledFor(logging.DEBUG):
        extra = sorted(set(raw) - _KNOWN_FIELDS)
        if extra:
            log.debug("request %s: forwarding non-OpenAI fields %s", request.request_id, extra)
    mcp_settings = mcp.chat_settings(services, req.model)
    if mcp_settings is not None:  # the model's configured MCP tools (docs/mcp.md)
        if mcp_settings.mode == "execute":
            await mcp.chat_execute(services, request, raw, req)
            return
        raw = mcp.add_tools(services, raw, mcp_settings)
        req = convert(raw, ChatCompletionRequest)
    if req.store:
        await create_stored(services, request, raw, req)
        return
    call = Call(raw, req.model, request.request_id, bool(req.stream))
    if call.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if services.config.ledger_on and not include_usage:
            # The ledger's row needs the stream's tokens: asked of the upstream, held back from the client.
            body = {**raw, "stream_options": {**(raw.get("stream_options") or {}), "include_usage": True}}
            call = Call(body, req.model, request.request_id, True)
        await stream_chat(
            request,
            lambda: services.router.open_chat_stream(call, request.add_response_header),
            ChunkShaper(req.model, include_usage),
            services.settings.keepalive_interval,
        )
        return
    completion = await services.router.chat(call, request.add_response_header)
    await request.send_json(200, _json.encode(normalize_completion(completion, req.model)))
