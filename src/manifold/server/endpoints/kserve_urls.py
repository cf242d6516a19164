"""KServe-style per-model URLs (Seldon Core 2's OpenAI scheme): the model is in the path.

    POST /v2/models/{model}/infer/chat/completions          (base_url = …/v2/models/{model}/infer)
    POST /v2/models/{model}/infer/embeddings
    POST /v2/models/{model}/infer/images/generations
    POST /v2/models/{model}/infer_stream/…                   the same; chat completions are always streamed

The body's `model` may be left out (the path's is used); when given it must equal the path's, else 400. Unlike
Seldon's check, the whole path segment is the name: `my_model` is `my_model`, not `my`. Chat requests then take
exactly the path of `POST /chat/completions`, so everything said there holds here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from manifold import _json
from manifold.api.embeddings import normalize_embeddings
from manifold.api.images import normalize_images
from manifold.api.per_model_urls import EmbeddingsRequest, ImageGenerationRequest
from manifold.api.validation import convert, decode_json_object
from manifold.errors import InvalidRequestError
from manifold.providers.base import Call
from manifold.routing import router as operations
from manifold.server.endpoints import chat

if TYPE_CHECKING:
    from manifold.server.asgi import Message, Receive, Request
    from manifold.server.services import Services


def _bind_model(raw: dict[str, Any], path_model: str) -> None:
    body_model = raw.get("model")
    if body_model is None:
        raw["model"] = path_model
    elif isinstance(body_model, str) and body_model != path_model:
        raise InvalidRequestError(
            f"The model in the request body ('{body_model}') differs from the model in the URL ('{path_model}').",
            param="model",
            code="model_mismatch",
        )


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the (rewritten) body over once, then defers to the real one (disconnects)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _read(services: Services, request: Request, model: str) -> dict[str, Any]:
    raw = decode_json_object(await request.body(services.settings.max_body_size))
    _bind_model(raw, model)
    return raw


async def _chat(services: Services, request: Request, model: str, stream: bool) -> None:
    raw = await _read(services, request, model)
    if stream:
        raw["stream"] = True
    request.receive = _replay(_json.encode(raw), request.receive)
    await chat.create_chat_completion(services, request)


async def chat_completions(services: Services, request: Request, model: str) -> None:
    await _chat(services, request, model, stream=False)


async def stream_chat_completions(services: Services, request: Request, model: str) -> None:
    await _chat(services, request, model, stream=True)


async def embeddings(services: Services, request: Request, model: str) -> None:
    raw = await _read(services, request, model)
    req = convert(raw, EmbeddingsRequest)
    call = Call(raw, model, request.request_id, False)
    result = await services.router.execute(call, operations.embeddings, request.add_response_header)
    # The same checks and shaping as `POST /embeddings`: a wrong-shaped answer is a 502, never a crash.
    await request.send_json(200, _json.encode(normalize_embeddings(result, model, req.encoding_format or "float")))


async def images_generations(services: Services, request: Request, model: str) -> None:
    raw = await _read(services, request, model)
    convert(raw, ImageGenerationRequest)
    call = Call(raw, model, request.request_id, False)
    result = await services.router.execute(call, operations.images, request.add_response_header)
    await request.send_json(200, _json.encode(normalize_images(result)))
