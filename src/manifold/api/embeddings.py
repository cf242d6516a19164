"""`CreateEmbeddingRequest` in the spec's order with the spec's limits, base64 vector encoding, and the
normalizer that makes any backend's answer an exact `CreateEmbeddingResponse`.

`encoding_format: "base64"` means the vector's little-endian float32 bytes, base64-encoded: what the Python SDK
asks for by default (it decodes with `array.array("f", base64.b64decode(s))`). Backends that ignore the format
and send floats get converted here, and the other way round.
"""

from __future__ import annotations

import array
import base64
import binascii
import sys
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from manifold.api import text_or_tokens, upstream

MAX_INPUTS = 2048
MAX_TOTAL_TOKENS = 300_000


class EmbeddingRequest(Struct, kw_only=True):
    """`CreateEmbeddingRequest`."""

    # string, array of strings, array of tokens, or array of token arrays (checked by `input_problems`)
    input: str | list[Any]
    model: Annotated[str, Meta(min_length=1)]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


def input_problems(value: Any) -> tuple[str, str] | None:
    """(param, message) when `input` breaks the documented shapes and limits: a non-empty string, or an array
    of 1 to 2048 non-empty strings, token ids, or non-empty token arrays (at most 300,000 tokens in all)."""
    if isinstance(value, str):
        if not value:
            return "input", "Invalid 'input': string too short. Expected a non-empty string."
        return None
    if not value:
        return "input", "Invalid 'input': empty array. Expected an array with at least one element."
    if len(value) > MAX_INPUTS:
        return (
            "input",
            f"Invalid 'input': array too long. Expected an array with maximum length {MAX_INPUTS}, "
            f"but got an array with length {len(value)} instead.",
        )
    problem = text_or_tokens.array_problems("input", value, non_empty_strings=True)
    if problem is None and isinstance(value[0], list):
        total = sum(len(item) for item in value)
        if total > MAX_TOTAL_TOKENS:
            return "input", f"Invalid 'input': {total} tokens in all; the maximum is {MAX_TOTAL_TOKENS} per request."
    return problem


def split_inputs(value: Any) -> list[str | list[int]]:
    """The inputs of a (valid) request, each a string or a token array."""
    return text_or_tokens.split(value)


# -- base64 vectors --------------------------------------------------------------------------------------------

_BIG_ENDIAN = sys.byteorder == "big"


def floats_to_base64(vector: Any) -> str:
    """Little-endian float32 bytes of `vector` (a sequence of numbers, or any buffer of native float32)."""
    return _base64_of(array.array("f", vector))


def _base64_of(packed: array.array[float]) -> str:
    if _BIG_ENDIAN:
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def base64_to_floats(text: str) -> list[float]:
    """The inverse of `floats_to_base64`; raises ValueError for text that is not base64 float32 data."""
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None
    if len(raw) % 4:
        raise ValueError("not a whole number of float32 values")
    packed = array.array("f")
    packed.frombytes(raw)
    if _BIG_ENDIAN:
        packed.byteswap()
    return packed.tolist()


# -- the response ----------------------------------------------------------------------------------------------


def normalize_embeddings(obj: dict[str, Any], public_model: str, encoding_format: str) -> dict[str, Any]:
    """A `CreateEmbeddingResponse`, in place: public model, `object`s, indexes, usage, and every vector in
    the requested encoding (`float` or `base64`). `UpstreamShapeError` (502) when the answer does not fit the
    schema or a string vector is not base64 float32 data."""
    typed = upstream.conform(obj, upstream.EmbeddingList, "embedding list")
    obj["object"] = "list"
    obj["model"] = public_model
    for i, (item, checked) in enumerate(zip(obj["data"], typed.data, strict=True)):
        item["object"] = "embedding"
        if checked.index is None:
            item["index"] = i
        vector = item["embedding"]
        if isinstance(vector, list):
            try:
                packed = array.array("f" if encoding_format == "base64" else "d", vector)
            except TypeError:
                raise upstream.shape_error(
                    "embedding list", f"at 'data[{i}].embedding': not an array of numbers"
                ) from None
            if encoding_format == "base64":
                item["embedding"] = _base64_of(packed)
        elif not isinstance(vector, str):
            raise upstream.shape_error("embedding list", f"at 'data[{i}].embedding': neither an array nor a string")
        elif encoding_format == "float":
            try:
                item["embedding"] = base64_to_floats(vector)
            except ValueError as exc:
                raise upstream.shape_error("embedding list", f"at 'data[{i}].embedding': {exc}") from None
    usage = typed.usage
    prompt = int(usage.prompt_tokens) if usage is not None and usage.prompt_tokens is not None else 0
    total = int(usage.total_tokens) if usage is not None and usage.total_tokens is not None else prompt
    obj["usage"] = {"prompt_tokens": prompt, "total_tokens": total}
    return obj


request_decoder = msgspec.json.Decoder(EmbeddingRequest)
