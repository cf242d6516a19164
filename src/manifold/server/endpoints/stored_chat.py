"""Stored chat completions: creating one with `store: true`, and the routes under `/chat/completions/…`.

A stored completion is committed to the database before the client is told it exists: before the body of a
non-streamed answer, before `data: [DONE]` of a streamed one. A client that never got that acknowledgement
may or may not find it stored; one that got it always will (the write is durable when it returns). The store's
writer finishes a write even when the client leaves meanwhile (a write cut in the middle would leave its
connection in an unknown state), and commits the writes of concurrent requests together (group commit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from manifold import _json
from manifold.api.chat import ChatCompletionRequest
from manifold.api.chat_assembly import AssemblingChunkShaper
from manifold.api.chat_response import new_completion_id, normalize_completion
from manifold.api.stored_chat import (
    UpdateChatCompletionRequest,
    cursor_page,
    deleted,
    message_position,
    parse_list_params,
    stored_message,
)
from manifold.api.validation import convert, decode_json_object
from manifold.errors import NotFoundError
from manifold.providers.base import Call
from manifold.server.sse_writer import stream_chat

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services


def _not_found(completion_id: str) -> NotFoundError:
    return NotFoundError(f"No chat completion found with id '{completion_id}'.", param="completion_id")


async def create_stored(services: Services, request: Request, raw: dict[str, Any], req: ChatCompletionRequest) -> None:
    """`POST /chat/completions` with `store: true`. The gateway names the completion (its id is the key it is
    stored under, whatever id the upstream gave)."""
    # An unknown model is the client's 404, whatever state the database is in (issue 17: it answered 503).
    services.router.resolve(req.model)
    store = await services.store.chat_completions()
    completion_id = new_completion_id()
    messages = raw["messages"]
    metadata = req.metadata
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        # The stored completion carries usage even when the client did not ask for it in the stream.
        body = {**raw, "stream_options": {**(raw.get("stream_options") or {}), "include_usage": True}}
        call = Call(body, req.model, request.request_id, True)
        shaper = AssemblingChunkShaper(req.model, include_usage, completion_id)

        async def save() -> None:
            await store.save(shaper.assembled(req.model), messages, metadata, request.request_id)

        await stream_chat(
            request,
            lambda: services.router.open_chat_stream(call, request.add_response_header),
            shaper,
            services.settings.keepalive_interval,
            save,
        )
        return
    call = Call(raw, req.model, request.request_id, False)
    completion = normalize_completion(await services.router.chat(call, request.add_response_header), req.model)
    completion["id"] = completion_id
    await store.save(completion, messages, metadata, request.request_id)
    await request.send_json(200, _json.encode(completion))


async def list_chat_completions(services: Services, request: Request) -> None:
    params = parse_list_params(request.query_string, filters=True)
    completions = await services.store.chat_completions()
    page = await completions.list(
        after=params.after, limit=params.limit, order=params.order, model=params.model, metadata=params.metadata
    )
    await request.send_json(200, _json.encode(cursor_page(page.items, page.has_more)))


async def retrieve_chat_completion(services: Services, request: Request, completion_id: str) -> None:
    completions = await services.store.chat_completions()
    completion = await completions.get(completion_id)
    if completion is None:
        raise _not_found(completion_id)
    await request.send_json(200, _json.encode(completion))


async def update_chat_completion(services: Services, request: Request, completion_id: str) -> None:
    raw = await request.body(services.settings.max_body_size)
    # No body at all is a missing `metadata`, like `{}`.
    body = convert(decode_json_object(raw) if raw.strip() else {}, UpdateChatCompletionRequest)
    completions = await services.store.chat_completions()
    completion = await completions.update_metadata(completion_id, body.metadata)
    if completion is None:
        raise _not_found(completion_id)
    await request.send_json(200, _json.encode(completion))


async def delete_chat_completion(services: Services, request: Request, completion_id: str) -> None:
    completions = await services.store.chat_completions()
    if not await completions.delete(completion_id):
        raise _not_found(completion_id)
    await request.send_json(200, _json.encode(deleted(completion_id)))


async def list_chat_completion_messages(services: Services, request: Request, completion_id: str) -> None:
    params = parse_list_params(request.query_string, filters=False)
    after = message_position(completion_id, params.after) if params.after is not None else None
    completions = await services.store.chat_completions()
    page = await completions.messages(completion_id, after=after, limit=params.limit, order=params.order)
    if page is None:
        raise _not_found(completion_id)
    items = [stored_message(completion_id, position, message) for position, message in page.items]
    await request.send_json(200, _json.encode(cursor_page(items, page.has_more)))
