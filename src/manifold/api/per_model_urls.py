"""The required core of `CreateEmbeddingRequest` and `CreateImageRequest`, as the KServe-style per-model URLs
check them before a provider sees the body (OpenAI's names and limits; unknown fields pass through untouched).
"""

from __future__ import annotations

from typing import Annotated, Literal

from msgspec import Meta, Struct

NonEmptyStr = Annotated[str, Meta(min_length=1)]
Token = Annotated[int, Meta(ge=0)]
# Strings, token ids, or token arrays (msgspec takes one array type per union, so the items are a union).
EmbeddingInput = NonEmptyStr | Annotated[list[str | Token | list[Token]], Meta(min_length=1, max_length=2048)]


class EmbeddingsRequest(Struct, kw_only=True):
    input: EmbeddingInput
    model: NonEmptyStr
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None


class ImageGenerationRequest(Struct, kw_only=True):
    prompt: NonEmptyStr
    model: NonEmptyStr
    n: Annotated[int, Meta(ge=1, le=10)] | None = None
    response_format: Literal["url", "b64_json"] | None = None
    size: str | None = None
    user: str | None = None
