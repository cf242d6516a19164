"""POST /embeddings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from manifold import _json
from manifold.api.embeddings import EmbeddingRequest, input_problems, normalize_embeddings
from manifold.api.validation import convert, decode_json_object
from manifold.errors import BadGatewayError, InvalidRequestError
from manifold.providers.base import Call
from manifold.routing import router as operations

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services


async def create_embeddings(services: Services, request: Request) -> None:
    raw = decode_json_object(await request.body(services.settings.max_body_size))
    req = convert(raw, EmbeddingRequest)
    problem = input_problems(req.input)
    if problem is not None:
        raise InvalidRequestError(problem[1], param=problem[0], code="invalid_value")
    call = Call(raw, req.model, request.request_id, False)
    answer = await services.router.execute(call, operations.embeddings, request.add_response_header)
    try:
        body = normalize_embeddings(answer, req.model, req.encoding_format or "float")
    except ValueError as exc:
        raise BadGatewayError(f"The backend of '{req.model}' returned malformed embeddings: {exc}.") from None
    await request.send_json(200, _json.encode(body))
