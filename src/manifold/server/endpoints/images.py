"""POST /images/generations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from manifold import _json
from manifold.api.images import ImageRequest, default_model, family_problems, normalize_images
from manifold.api.validation import convert, decode_json_object
from manifold.errors import BadGatewayError, InvalidRequestError, UnsupportedError
from manifold.providers.base import Call
from manifold.routing import router as operations

if TYPE_CHECKING:
    from manifold.server.asgi import Request
    from manifold.server.services import Services


async def create_image(services: Services, request: Request) -> None:
    raw = decode_json_object(await request.body(services.settings.max_body_size))
    req = convert(raw, ImageRequest)
    model = default_model(req)
    # The family rules follow the model the backend really runs (a public alias says nothing); the deployments
    # of one group are meant to run the same model, so the first one stands for all.
    group, rest = services.router.resolve(model)
    first = group.providers[0].deployment.upstream_model
    problem = family_problems(req, first if rest is None else group.members[0].upstream_model(rest))
    if problem is not None:
        raise InvalidRequestError(problem[1], param=problem[0], code="invalid_value")
    if req.stream:
        raise UnsupportedError("Streamed image generation is not supported by this gateway.", param="stream")
    body = raw if "model" in raw else {**raw, "model": model}
    call = Call(body, model, request.request_id, False)
    answer = await services.router.execute(call, operations.images, request.add_response_header)
    try:
        out = normalize_images(answer)
    except ValueError as exc:
        raise BadGatewayError(f"The backend of '{model}' returned a malformed images response: {exc}.") from None
    await request.send_json(200, _json.encode(out))
