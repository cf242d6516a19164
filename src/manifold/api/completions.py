"""`CreateCompletionRequest` (legacy completions), modelled in the spec's order with the spec's names, and the
normalizers that make any backend's `text_completion` objects and chunks exact.

As for chat, the types validate and the client's own JSON is what gets forwarded. `prompt` is a union of four
array shapes that msgspec cannot tell apart, so it is typed loosely here and checked by `prompt_problems`.
"""

from __future__ import annotations

import os
import time
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from manifold.api import text_or_tokens, upstream
from manifold.api.chat_response import final_usage_chunk, fix_usage, known_finish_reason

NonEmptyStr = Annotated[str, Meta(min_length=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
Stop = str | Annotated[list[str], Meta(min_length=1, max_length=4)]
FINISH_REASONS = frozenset({"stop", "length", "content_filter"})


class StreamOptions(Struct):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class CompletionRequest(Struct, kw_only=True):
    """`CreateCompletionRequest`."""

    model: NonEmptyStr
    # string, array of strings, array of tokens, or array of token arrays (checked by `prompt_problems`)
    prompt: str | list[Any] | None
    best_of: Annotated[int, Meta(ge=0, le=20)] | None = None
    echo: bool | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[int, Meta(ge=-100, le=100)]] | None = None
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None = None
    max_tokens: Annotated[int, Meta(ge=0)] | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    presence_penalty: Penalty | None = None
    seed: int | None = None
    stop: Stop | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    suffix: str | None = None
    temperature: Annotated[float, Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, Meta(ge=0, le=1)] | None = None
    user: str | None = None


def prompt_problems(prompt: Any) -> tuple[str, str] | None:
    """(param, message) when `prompt` is none of: string, array of strings, array of tokens, array of token
    arrays (each array non-empty)."""
    if prompt is None or isinstance(prompt, str):
        return None
    if not prompt:
        return "prompt", "Invalid 'prompt': empty array. Expected an array with at least one element."
    return text_or_tokens.array_problems("prompt", prompt, non_empty_strings=False)


def split_prompts(prompt: Any) -> list[str | list[int]]:
    """The prompts of a (valid) request: each is a string or a token array. A null prompt is the empty
    document (OpenAI's default `<|endoftext|>` is a separator, i.e. nothing to condition on)."""
    return [""] if prompt is None else text_or_tokens.split(prompt)


def cross_field_problems(req: CompletionRequest) -> tuple[str, str] | None:
    """Rules between fields that a type cannot express: (param, message) of the first broken one."""
    problem = prompt_problems(req.prompt)
    if problem is not None:
        return problem
    if req.stream_options is not None and not req.stream:
        return "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    n = req.n if req.n is not None else 1
    if req.best_of is not None and req.best_of > 1:
        if req.best_of < n:
            return "best_of", f"Invalid 'best_of': best_of ({req.best_of}) must be greater than or equal to n ({n})."
        if req.stream:
            return "best_of", "Invalid 'best_of': results cannot be streamed when best_of is greater than 1."
    for i, key in enumerate(req.logit_bias or {}):
        if not key.lstrip("-").isdigit():
            return f"logit_bias.{key}", f"Invalid key in 'logit_bias': {key!r} is not a token id (entry {i})."
    return None


# -- responses -------------------------------------------------------------------------------------------------


def new_completion_id() -> str:
    return "cmpl-" + os.urandom(12).hex()


def finish_reason(value: Any) -> str:
    return known_finish_reason(value, FINISH_REASONS)


def _fix_choice(choice: dict[str, Any], checked: upstream.TextChoice, position: int) -> None:
    if checked.index is None:
        choice["index"] = position
    if checked.text is None:
        choice["text"] = ""
    # Entries are kept as the upstream sent them: the first echoed prompt token has a `null` logprob (nothing
    # precedes it) at OpenAI too, although the schema says number.
    if checked.logprobs is None:
        choice["logprobs"] = None


def normalize_text_completion(obj: dict[str, Any], public_model: str) -> dict[str, Any]:
    """A non-streamed `text_completion`, in place; `UpstreamShapeError` (502) when it does not fit the schema."""
    typed = upstream.conform(obj, upstream.TextCompletion, "completion")
    obj["object"] = "text_completion"
    obj["model"] = public_model
    if not typed.id:
        obj["id"] = new_completion_id()
    obj["created"] = int(typed.created) if typed.created is not None else int(time.time())
    if typed.system_fingerprint is None:
        obj.pop("system_fingerprint", None)
    for i, (choice, checked) in enumerate(zip(obj["choices"], typed.choices, strict=True)):
        _fix_choice(choice, checked, i)
        choice["finish_reason"] = finish_reason(checked.finish_reason)
    fix_usage(obj)
    return obj


class TextChunkShaper:
    """Per-stream state for `text_completion` chunks: one `id`, `created` and public `model` on every chunk,
    `finish_reason: null` until a choice ends, and `usage` held back for one final `choices: []` chunk when the
    client asked for it with `stream_options.include_usage`.

    Legacy completion chunks have the same schema as the non-streamed object, where `usage` is not nullable,
    so the other chunks carry no `usage` key at all (the SDK reads a missing key as None).
    """

    __slots__ = ("_include_usage", "_public_model", "created", "id", "usage")

    def __init__(self, public_model: str, include_usage: bool) -> None:
        self._public_model = public_model
        self._include_usage = include_usage
        self.id: str | None = None
        self.created: int | None = None
        self.usage: dict[str, Any] | None = None

    def shape(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        typed = upstream.conform(chunk, upstream.TextChunk, "completion stream chunk")
        usage = chunk.pop("usage", None)
        if typed.usage is not None:
            self.usage = usage
        if not typed.choices:
            return None
        if self.id is None:
            self.id = typed.id or new_completion_id()
            created = typed.created
            self.created = int(created) if created is not None and created > 0 else int(time.time())
        chunk["id"] = self.id
        chunk["object"] = "text_completion"
        chunk["created"] = self.created
        chunk["model"] = self._public_model
        if typed.system_fingerprint is None:
            chunk.pop("system_fingerprint", None)
        for i, (choice, checked) in enumerate(zip(chunk["choices"], typed.choices, strict=True)):
            _fix_choice(choice, checked, i)
            finish = checked.finish_reason
            choice["finish_reason"] = None if finish is None else finish_reason(finish)
        return chunk

    def usage_chunk(self) -> dict[str, Any] | None:
        if not self._include_usage or self.usage is None:
            return None
        return final_usage_chunk(
            self.id or new_completion_id(), "text_completion", self.created, self._public_model, self.usage
        )


request_decoder = msgspec.json.Decoder(CompletionRequest)
