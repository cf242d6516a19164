"""A handler's stream ↔ OpenAI chunks, in both directions.

A handler that streams yields text deltas (`str`), delta dicts (`{"content": …}`, `{"tool_calls": […]}`) or
whole chunk dicts (`{"choices": [{"delta": …, "finish_reason": …}], "usage": …}`). They become chunk dicts here;
the gateway's `ChunkShaper` then sets ids, `role` once, tool-call rules and usage. A stream that never said how
it finished ends with `finish_reason: "stop"`.

A handler answers the same way whatever `stream` says: a generator serves a non-streamed request (its deltas
are assembled into one answer), and a plain answer serves a streamed one (sent as one delta).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

from manifold.api.chat_assembly import CompletionAssembler
from manifold.providers.python_handler.contracts import (
    CHAT_CHUNK,
    TEXT_CHUNK,
    chat_completion,
    conform,
    contract_error,
    to_plain,
)

_DELTA_KEYS = frozenset({"role", "content", "refusal", "tool_calls", "function_call"})


def _chat_chunk(item: Any, what: str) -> dict[str, Any] | None:
    plain = to_plain(item, what)
    if plain is None or plain == "":
        return None
    if isinstance(plain, str):
        return {"choices": [{"index": 0, "delta": {"content": plain}, "finish_reason": None}]}
    if isinstance(plain, dict) and plain.get("type") == "response.output_text.delta":
        # A Responses text delta event (a `create_response` that yields events): its text.
        plain = str(plain.get("delta") or "")
        return _chat_chunk(plain, what) if plain else None
    if isinstance(plain, dict) and "choices" not in plain and "usage" not in plain and plain.keys() & _DELTA_KEYS:
        delta = {k: v for k, v in plain.items() if k in _DELTA_KEYS}
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    return _conformed(plain, CHAT_CHUNK, what)


def _conformed(plain: Any, contract: Any, what: str) -> dict[str, Any]:
    chunk = conform(plain, contract, what)
    if not isinstance(chunk.get("choices"), list):
        chunk["choices"] = []
    return chunk


async def _chunks(
    items: AsyncGenerator[Any, None],
    what: str,
    to_chunk: Callable[[Any, str], dict[str, Any] | None],
    finished: Callable[[int], dict[str, Any]],
) -> AsyncIterator[dict[str, Any]]:
    """The handler's items as chunks (`to_chunk`), then a `finished(index)` choice for each that never ended."""
    open_choices: set[int] = set()
    async with aclosing(items):  # a consumer that stops early closes the handler's generator now
        async for item in items:
            chunk = to_chunk(item, what)
            if chunk is None:
                continue
            for choice in chunk["choices"]:
                index = choice.get("index", 0)
                if choice.get("finish_reason") is None:
                    open_choices.add(index)
                else:
                    open_choices.discard(index)
            yield chunk
    for index in sorted(open_choices):
        yield {"choices": [finished(index)]}


def chat_chunks(items: AsyncGenerator[Any, None], what: str) -> AsyncIterator[dict[str, Any]]:
    return _chunks(items, what, _chat_chunk, lambda index: {"index": index, "delta": {}, "finish_reason": "stop"})


async def collect_chat(items: AsyncGenerator[Any, None], what: str) -> dict[str, Any]:
    """A non-streamed chat completion from a handler that streamed."""
    assembler = CompletionAssembler()
    usage: dict[str, Any] | None = None
    saw_choice = False
    async for chunk in chat_chunks(items, what):
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        saw_choice = saw_choice or bool(chunk["choices"])
        assembler.add(chunk)
    if not saw_choice:
        raise contract_error(what, "is an empty stream")
    completion = assembler.completion("", 0, "", usage)
    completion["id"] = completion["created"] = completion["model"] = None  # the gateway sets them
    return completion


async def completion_as_chunks(completion: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """A streamed chat answer from a handler that answered at once: one delta per choice, then usage."""
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        delta = {k: v for k, v in message.items() if k in _DELTA_KEYS and v is not None}
        for position, call in enumerate(delta.get("tool_calls") or ()):
            if isinstance(call, dict):
                call.setdefault("index", position)
        yield {
            "choices": [
                {
                    "index": choice.get("index", 0),
                    "delta": delta,
                    "finish_reason": choice.get("finish_reason") or "stop",
                    "logprobs": choice.get("logprobs"),
                }
            ]
        }
    if isinstance(completion.get("usage"), dict):
        yield {"choices": [], "usage": completion["usage"]}


async def answer_as_chunks(value: Any, what: str) -> AsyncIterator[dict[str, Any]]:
    async for chunk in completion_as_chunks(chat_completion(value, what)):
        yield chunk


# -- legacy completions -------------------------------------------------------------------------------------------


def _text_chunk(item: Any, what: str) -> dict[str, Any] | None:
    plain = to_plain(item, what)
    if plain is None or plain == "":
        return None
    if isinstance(plain, str):
        return {"choices": [{"index": 0, "text": plain, "finish_reason": None, "logprobs": None}]}
    return _conformed(plain, TEXT_CHUNK, what)


def text_chunks(items: AsyncGenerator[Any, None], what: str) -> AsyncIterator[dict[str, Any]]:
    return _chunks(
        items, what, _text_chunk, lambda index: {"index": index, "text": "", "finish_reason": "stop", "logprobs": None}
    )


async def collect_text(items: AsyncGenerator[Any, None], what: str) -> dict[str, Any]:
    texts: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    usage: dict[str, Any] | None = None
    async for chunk in text_chunks(items, what):
        if isinstance(chunk.get("usage"), dict):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            index = choice.get("index", 0)
            texts.setdefault(index, []).append(str(choice.get("text") or ""))
            if choice.get("finish_reason") is not None:
                finish[index] = choice["finish_reason"]
    if not texts:
        raise contract_error(what, "is an empty stream")
    out: dict[str, Any] = {
        "choices": [
            {"index": i, "text": "".join(parts), "finish_reason": finish.get(i, "stop"), "logprobs": None}
            for i, parts in sorted(texts.items())
        ]
    }
    if usage is not None:
        out["usage"] = usage
    return out


async def text_as_chunks(completion: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    for choice in completion.get("choices") or ():
        yield {"choices": [{**choice, "finish_reason": choice.get("finish_reason") or "stop"}]}
    if isinstance(completion.get("usage"), dict):
        yield {"choices": [], "usage": completion["usage"]}
