"""POST /completions (legacy completions)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from manifold import _json
from manifold.api.completions import CompletionRequest, TextChunkShaper, cross_field_problems, normalize_text_completion
from manifold.api.validation import convert, decode_json_object
from manifold.errors import InvalidRequestError
from manifold.providers.base import Call
from manifold.routing import router as operations
from manifold.server.sse_writer import stream_chat

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services

log = logging.getLogger("manifold.completions")


async def create_completion(services: Services, request: Request) -> None:
    raw = decode_json_object(await request.body(services.settings.max_body_size))
    req = convert(raw, CompletionRequest)
    problem = cross_field_problems(req)
    if problem is not None:
        raise InvalidRequestError(problem[1], param=problem[0], code="invalid_value")
    call = Call(raw, req.model, request.request_id, bool(req.stream))
    router = services.router
    if call.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        if services.config.ledger_on and not include_usage:
            # The ledger's row needs the stream's tokens: asked of the upstream, held back from the client.
            body = {**raw, "stream_options": {**(raw.get("stream_options") or {}), "include_usage": True}}
            call = Call(body, req.model, request.request_id, True)
        await stream_chat(
            request,
            lambda: services.router.execute_stream(
                call, operations.open_completions_stream, request.add_response_header
            ),
            TextChunkShaper(req.model, include_usage),
            services.settings.keepalive_interval,
        )
        return
    completion = await router.execute(call, operations.completions, request.add_response_header)
    await request.send_json(200, _json.encode(normalize_text_completion(completion, req.model)))
