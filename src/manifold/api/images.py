"""`CreateImageRequest` in the spec's order, the per-model-family rules OpenAI documents, and the
`ImagesResponse` normalizer.

The family is read from the upstream model name (`dall-e-2`, `dall-e-3`, `gpt-image-*`); for other names
(a self-hosted diffusion server) only the spec's own constraints apply.
"""

from __future__ import annotations

import enum
import re
import time
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from manifold.api import upstream


class ImageRequest(Struct, kw_only=True):
    """`CreateImageRequest`."""

    prompt: Annotated[str, Meta(min_length=1)]
    model: Annotated[str, Meta(min_length=1)] | None = None
    n: Annotated[int, Meta(ge=1, le=10)] | None = None
    quality: Literal["standard", "hd", "low", "medium", "high", "auto"] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: Annotated[int, Meta(ge=0, le=100)] | None = None
    stream: bool | None = None
    partial_images: Annotated[int, Meta(ge=0, le=3)] | None = None
    size: Annotated[str, Meta(min_length=1)] | None = None
    moderation: Literal["low", "auto"] | None = None
    background: Literal["transparent", "opaque", "auto"] | None = None
    style: Literal["vivid", "natural"] | None = None
    user: str | None = None


class Family(enum.Enum):
    DALL_E_2 = "dall-e-2"
    DALL_E_3 = "dall-e-3"
    GPT_IMAGE = "gpt-image"
    GPT_IMAGE_2 = "gpt-image-2"  # also takes arbitrary WIDTHxHEIGHT sizes


# Parameters only the GPT image models take; the spec: "Defaults to dall-e-2 unless a parameter specific to the
# GPT image models is used".
GPT_ONLY = ("output_format", "output_compression", "background", "moderation", "stream", "partial_images")
_SIZES = {
    Family.DALL_E_2: ("256x256", "512x512", "1024x1024"),
    Family.DALL_E_3: ("1024x1024", "1792x1024", "1024x1792"),
    Family.GPT_IMAGE: ("auto", "1024x1024", "1536x1024", "1024x1536"),
    Family.GPT_IMAGE_2: ("auto", "1024x1024", "1536x1024", "1024x1536"),
}
_QUALITIES = {
    Family.DALL_E_2: ("standard", "auto"),
    Family.DALL_E_3: ("standard", "hd", "auto"),
    Family.GPT_IMAGE: ("low", "medium", "high", "auto"),
    Family.GPT_IMAGE_2: ("low", "medium", "high", "auto"),
}
_PROMPT_LIMITS = {Family.DALL_E_2: 1000, Family.DALL_E_3: 4000, Family.GPT_IMAGE: 32000, Family.GPT_IMAGE_2: 32000}
_SIZE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")
_MAX_EDGE = 3840
_MAX_PIXELS = 3840 * 2160


def default_model(req: ImageRequest) -> str:
    if req.model is not None:
        return req.model
    return "gpt-image-1" if any(getattr(req, p) is not None for p in GPT_ONLY) else "dall-e-2"


def family_of(model: str) -> Family | None:
    name = model.lower()
    if name.startswith("dall-e-2"):
        return Family.DALL_E_2
    if name.startswith("dall-e-3"):
        return Family.DALL_E_3
    if name.startswith(("gpt-image-2", "chatgpt-image-2")):
        return Family.GPT_IMAGE_2
    if name.startswith(("gpt-image", "chatgpt-image")):
        return Family.GPT_IMAGE
    return None


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def family_problems(req: ImageRequest, upstream_model: str) -> tuple[str, str] | None:
    """(param, message) of the first parameter the model's family does not take, as OpenAI documents it."""
    family = family_of(upstream_model)
    if req.partial_images is not None and not req.stream:
        return "partial_images", "The 'partial_images' parameter is only allowed when 'stream' is enabled."
    if family is None:
        if req.size is not None and req.size != "auto" and not _SIZE.match(req.size):
            return "size", f"Invalid 'size': {req.size!r}. Expected 'auto' or 'WIDTHxHEIGHT' (e.g. '1024x1024')."
        return None
    model = upstream_model
    gpt = family in (Family.GPT_IMAGE, Family.GPT_IMAGE_2)
    if len(req.prompt) > _PROMPT_LIMITS[family]:
        return (
            "prompt",
            f"Invalid 'prompt': string too long. Expected a string with maximum length {_PROMPT_LIMITS[family]} "
            f"for {family.value}, but got a string with length {len(req.prompt)} instead.",
        )
    if family is Family.DALL_E_3 and req.n is not None and req.n != 1:
        return "n", f"Invalid 'n': {model} supports only n=1."
    if not gpt:
        for param in GPT_ONLY:
            if getattr(req, param) is not None:
                return param, f"The '{param}' parameter is only supported for the GPT image models, not {model}."
    if gpt and req.response_format is not None:
        return (
            "response_format",
            f"The 'response_format' parameter is not supported for {model}: GPT image models always return "
            "base64-encoded images (b64_json).",
        )
    if family is not Family.DALL_E_3 and req.style is not None:
        return "style", f"The 'style' parameter is only supported for dall-e-3, not {model}."
    if req.quality is not None and req.quality not in _QUALITIES[family]:
        return (
            "quality",
            f"Invalid 'quality': {req.quality!r} is not supported for {model}. "
            f"Expected one of {_one_of(_QUALITIES[family])}.",
        )
    if req.size is not None:
        problem = _size_problem(req.size, family, model)
        if problem is not None:
            return "size", problem
    if req.output_compression is not None and req.output_format not in ("jpeg", "webp"):
        return (
            "output_compression",
            "The 'output_compression' parameter is only supported with output_format 'jpeg' or 'webp'.",
        )
    if req.background == "transparent" and req.output_format == "jpeg":
        return "background", "A transparent background needs output_format 'png' or 'webp'."
    return None


def _size_problem(size: str, family: Family, model: str) -> str | None:
    allowed = _SIZES[family]
    if size in allowed:
        return None
    if family is Family.GPT_IMAGE_2:
        m = _SIZE.match(size)
        if m is None:
            return f"Invalid 'size': {size!r}. Expected 'auto' or 'WIDTHxHEIGHT' (e.g. '1536x864')."
        width, height = int(m.group(1)), int(m.group(2))
        if width % 16 or height % 16:
            return f"Invalid 'size': {size!r}. Width and height must both be divisible by 16."
        if max(width, height) > 3 * min(width, height):
            return f"Invalid 'size': {size!r}. The aspect ratio must be between 1:3 and 3:1."
        if max(width, height) > _MAX_EDGE or width * height > _MAX_PIXELS:
            return f"Invalid 'size': {size!r}. The maximum supported resolution is 3840x2160."
        return None
    return f"Invalid 'size': {size!r} is not supported for {model}. Expected one of {_one_of(allowed)}."


def normalize_images(obj: dict[str, Any]) -> dict[str, Any]:
    """An `ImagesResponse`, in place: integer `created`, image objects without null fields. `UpstreamShapeError`
    (502) when the answer does not fit the schema or an image has neither `url` nor `b64_json`."""
    typed = upstream.conform(obj, upstream.ImagesResponse, "images response")
    obj["created"] = int(typed.created) if typed.created is not None else int(time.time())
    for i, (item, checked) in enumerate(zip(obj["data"], typed.data, strict=True)):
        if checked.url is None and checked.b64_json is None:
            raise upstream.shape_error("images response", f"at 'data[{i}]': an image with neither url nor b64_json")
        for key in [k for k, v in item.items() if v is None]:
            del item[key]
    for key in ("background", "output_format", "size", "quality", "usage"):
        if key in obj and obj[key] is None:
            del obj[key]
    return obj


request_decoder = msgspec.json.Decoder(ImageRequest)
