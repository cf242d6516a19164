"""The shapes an upstream's answers must have before anything reads them, as msgspec Structs.

Every answer and stream event is checked against one of these types before it is normalized, so nothing later
walks a value of a type it did not expect: an answer that does not fit is a 502 naming what was wrong
(`UpstreamShapeError`), or, once a stream has started, its error event. Never a 500, never an empty "success".

Lenient where real upstreams differ: unknown fields are ignored here (and passed through to the client by the
normalizers, which work on the decoded dicts), and fields that vLLM, llama.cpp, Ollama or Azure leave out or send
as `null` may be absent or null. Strict where the client's SDK is: a field that is present has the type OpenAI's
schema gives it (`content` a string, `index` an integer, `tool_calls` an array of objects, `choices` an array).

The types check without being kept: `msgspec.convert` on the decoded dict costs about as much as the `isinstance`
walks it replaces, and the dicts keep the upstream's extra fields (`reasoning_content`, Azure's filter results).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

from manifold.errors import BadGatewayError

T = TypeVar("T")

Number = int | float
Object = dict[str, Any]


class UpstreamShapeError(BadGatewayError):
    """An upstream answered 2xx with JSON that is not the object OpenAI's schema describes."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="upstream_invalid_response")


# -- shared ------------------------------------------------------------------------------------------------------


class Usage(Struct, gc=False):
    prompt_tokens: Number | None = None
    completion_tokens: Number | None = None
    total_tokens: Number | None = None
    prompt_tokens_details: Object | None = None
    completion_tokens_details: Object | None = None


class TopLogprob(Struct, gc=False):
    token: str
    logprob: Number
    bytes: list[int] | None = None


class TokenLogprob(Struct, gc=False):
    token: str
    logprob: Number
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] | None = None


class Logprobs(Struct, gc=False):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


# -- chat completions --------------------------------------------------------------------------------------------


class FunctionCall(Struct, gc=False):
    name: str
    arguments: str


class ToolCall(Struct, gc=False):
    id: str | None = None
    type: str | None = None
    function: FunctionCall | None = None
    custom: Object | None = None


class Message(Struct, gc=False):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    audio: Object | None = None
    annotations: list[Object] | None = None


class Choice(Struct, gc=False):
    message: Message
    index: int | None = None
    finish_reason: str | None = None
    logprobs: Logprobs | None = None


class ChatCompletion(Struct, gc=False):
    choices: list[Choice]
    id: str | None = None
    created: Number | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    usage: Usage | None = None


class DeltaFunction(Struct, gc=False):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(Struct, gc=False):
    index: int | None = None
    id: str | None = None
    type: str | None = None
    function: DeltaFunction | None = None


class Delta(Struct, gc=False):
    role: str | None = None
    content: str | None = None
    refusal: str | None = None
    tool_calls: list[DeltaToolCall] | None = None
    function_call: DeltaFunction | None = None


class ChunkChoice(Struct, gc=False):
    # Some upstreams send a finish-only choice without `delta`.
    delta: Delta | None = None
    index: int | None = None
    finish_reason: str | None = None
    logprobs: Logprobs | None = None


class ChatChunk(Struct, gc=False):
    # Usage-only chunks and Azure's `prompt_filter_results` chunk carry no choices.
    choices: list[ChunkChoice] | None = None
    id: str | None = None
    created: Number | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    usage: Usage | None = None


# -- legacy completions ------------------------------------------------------------------------------------------


class TextLogprobs(Struct, gc=False):
    tokens: list[str] | None = None
    # The first echoed prompt token has a null logprob, at OpenAI too.
    token_logprobs: list[Number | None] | None = None
    top_logprobs: list[Object | None] | None = None
    text_offset: list[int] | None = None


class TextChoice(Struct, gc=False):
    # Required, so that a chat answer is not read as an empty text completion; null is read as "".
    text: str | None
    index: int | None = None
    finish_reason: str | None = None
    logprobs: TextLogprobs | None = None


class TextCompletion(Struct, gc=False):
    choices: list[TextChoice]
    id: str | None = None
    created: Number | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    usage: Usage | None = None


class TextChunk(Struct, gc=False):
    choices: list[TextChoice] | None = None
    id: str | None = None
    created: Number | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    usage: Usage | None = None


# -- embeddings and images ---------------------------------------------------------------------------------------


class Embedding(Struct, gc=False):
    # An array of numbers or the base64 of little-endian float32 values, checked by `normalize_embeddings` at C
    # speed (a large batch holds millions of numbers: converting them here would copy every one).
    embedding: Any
    index: int | None = None


class EmbeddingUsage(Struct, gc=False):
    prompt_tokens: Number | None = None
    total_tokens: Number | None = None


class EmbeddingList(Struct, gc=False):
    data: list[Embedding]
    model: str | None = None
    usage: EmbeddingUsage | None = None


class Image(Struct, gc=False):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(Struct, gc=False):
    data: list[Image]
    created: Number | None = None
    usage: Object | None = None


# -- the Responses API (native pass-through) ---------------------------------------------------------------------


class OutputItem(Struct, gc=False):
    type: str
    id: str | None = None


class Response(Struct, gc=False):
    # Required as the SDK requires them; `status` also because a stored response is filed under it.
    id: str
    created_at: Number
    status: str
    output: list[OutputItem]
    object: str | None = None
    previous_response_id: str | None = None
    background: bool | None = None
    usage: Object | None = None
    error: Object | None = None


class ResponseEvent(Struct, gc=False):
    type: str
    sequence_number: int | None = None
    response: Response | None = None
    item: OutputItem | None = None
    output_index: int | None = None
    content_index: int | None = None
    delta: str | None = None


# -- checking ----------------------------------------------------------------------------------------------------

_AT = re.compile(r" - at `\$(.*)`$")


def conform(data: Any, typ: type[T], what: str) -> T:
    """`data` (decoded JSON) as `typ`, or `UpstreamShapeError` naming what does not fit, e.g. "The upstream's chat
    completion does not fit OpenAI's schema: at 'choices[0].message.content', expected `str | null`, got `int`."""
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        raise shape_error(what, str(exc)) from None


def shape_error(what: str, problem: str) -> UpstreamShapeError:
    m = _AT.search(problem)
    if m is not None:
        path = m.group(1).lstrip(".") or "the top level"
        problem = f"at '{path}': {problem[: m.start()]}"
    return UpstreamShapeError(f"The upstream's {what} does not fit OpenAI's schema: {problem}.")
