"""The Responses API: `POST /responses` and the routes under `/responses/…` (docs/responses.md).

Handlers parse, call the engine (`manifold.responses.engine`) and answer JSON or typed SSE events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from manifold import _json
from manifold.api.response_request import (
    INCLUDE_VALUES,
    CompactRequest,
    CreateResponseRequest,
    TokenCountRequest,
    check_create,
)
from manifold.api.stored_chat import cursor_page, parse_list_params
from manifold.api.validation import convert, decode_json_object
from manifold.errors import InvalidRequestError
from manifold.server.sse_writer import stream_events

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services


async def create_response(services: Services, request: Request) -> None:
    raw = decode_json_object(await request.body(services.settings.max_body_size))
    req = convert(raw, CreateResponseRequest)
    check_create(req)
    engine = services.engine
    # Which deployment answered, after how many attempts (docs/routing.md); a background response is answered
    # (`queued`) before any deployment is tried, so its answer carries neither header.
    report = None if req.background else request.add_response_header
    if engine.native_provider(req.model) is not None and not engine.runs_mcp(req):
        if req.stream:
            events = await engine.native_stream(raw, req, request.request_id, report)
            await stream_events(request, events, services.settings.keepalive_interval)
        else:
            await request.send_json(
                200, _json.encode(await engine.native_respond(raw, req, request.request_id, report))
            )
        return
    prepared = await engine.prepare(req, request.request_id, report, f"{request.method} {request.path}")
    if req.background:
        job = await engine.start_background(prepared)
        if req.stream:
            await stream_events(request, job.follow(-1), services.settings.keepalive_interval)
        else:
            await request.send_json(200, _json.encode(job.events[0]["response"]))
        return
    if req.stream:
        await stream_events(request, await engine.open_stream(prepared), services.settings.keepalive_interval)
        return
    await request.send_json(200, _json.encode(await engine.respond(prepared)))


def _query(request: Request) -> list[tuple[str, str]]:
    return parse_qsl(request.query_string.decode("latin-1"), keep_blank_values=True, encoding="utf-8")


def _bool(name: str, value: str) -> bool:
    if value.lower() in ("true", "1"):
        return True
    if value.lower() in ("false", "0", ""):
        return False
    raise InvalidRequestError(
        f"Invalid value for '{name}': expected a boolean, got {value!r}.", param=name, code="invalid_type"
    )


def _include(value: str) -> None:
    if value not in INCLUDE_VALUES:
        raise InvalidRequestError(
            f"Invalid value: {value!r}. Supported values are: {', '.join(repr(v) for v in INCLUDE_VALUES)}.",
            param="include",
            code="invalid_value",
        )


def _include_param(name: str, value: str) -> None:
    if name in ("include", "include[]"):
        _include(value)


async def retrieve_response(services: Services, request: Request, response_id: str) -> None:
    stream = False
    starting_after = -1
    for name, value in _query(request):
        if name == "stream":
            stream = _bool(name, value)
        elif name == "starting_after":
            try:
                starting_after = int(value)
            except ValueError:
                raise InvalidRequestError(
                    f"Invalid type for 'starting_after': expected an integer, but got {value!r} instead.",
                    param="starting_after",
                    code="invalid_type",
                ) from None
        elif name in ("include", "include[]"):
            _include(value)
    if stream:
        events = await services.engine.events(response_id, starting_after)
        await stream_events(request, events, services.settings.keepalive_interval)
        return
    await request.send_json(200, _json.encode(await services.engine.retrieve(response_id)))


async def delete_response(services: Services, request: Request, response_id: str) -> None:
    await services.engine.delete(response_id)
    await request.send_json(200, _json.encode({"id": response_id, "object": "response", "deleted": True}))


async def cancel_response(services: Services, request: Request, response_id: str) -> None:
    await request.body(services.settings.max_body_size)  # the SDK sends none; whatever comes is not read
    await request.send_json(200, _json.encode(await services.engine.cancel(response_id)))


async def list_input_items(services: Services, request: Request, response_id: str) -> None:
    # The spec's default order here is desc (stored chat lists default to asc).
    params = parse_list_params(request.query_string, filters=False, order="desc", other=_include_param)
    page = await services.engine.input_item_page(
        response_id, after=params.after, limit=params.limit, order=params.order
    )
    await request.send_json(200, _json.encode(cursor_page(page.items, page.has_more)))


async def count_input_tokens(services: Services, request: Request) -> None:
    raw = await request.body(services.settings.max_body_size)
    req = convert(decode_json_object(raw) if raw.strip() else {}, TokenCountRequest)
    count = await services.engine.count_input_tokens(req, request.request_id)
    body: dict[str, Any] = {"object": "response.input_tokens", "input_tokens": count}
    await request.send_json(200, _json.encode(body))


async def compact_response(services: Services, request: Request) -> None:
    raw = decode_json_object(await request.body(services.settings.max_body_size))
    req = convert(raw, CompactRequest)
    await request.send_json(200, _json.encode(await services.engine.compact(req, request.request_id)))
