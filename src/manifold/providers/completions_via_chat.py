"""Legacy completions answered through chat, for backends that only chat (OpenAI's current models, many
self-hosted servers behind a chat template).

The mapping (each prompt of the request is one chat request; prompts run concurrently, streams one after the
other):

- `prompt` → `messages: [{"role": "user", "content": prompt}]`; token prompts cannot be mapped (400, `prompt`);
- `max_tokens` → `max_tokens`, 16 when absent (the legacy default; chat has none); `max_tokens: 0` → 400;
- `logprobs: k` → `logprobs: true, top_logprobs: k`, mapped back to `tokens`/`token_logprobs`/`top_logprobs`/
  `text_offset`;
- `echo` → the prompt is prepended to each choice's text (without logprobs: `echo` + `logprobs` → 400);
- `suffix` → 400 (chat has no insertion); `best_of` greater than `n` → 400;
- `n`, `stop`, `temperature`, `top_p`, `seed`, penalties, `logit_bias`, `user`, `stream`, `stream_options` and
  fields OpenAI does not define pass through unchanged;
- choice `i` of prompt `p` gets `index = p * n + i` (OpenAI's order); `finish_reason` `tool_calls`/
  `function_call` become `stop`; `usage` is summed over the prompts.

`to_chat`, `choices_from_chat` and `chunk_from_chat` are pure and never mutate their input.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from manifold.api import upstream
from manifold.api.completions import finish_reason, new_completion_id, split_prompts
from manifold.errors import UnsupportedError
from manifold.providers.base import Call, ChunkStream

if TYPE_CHECKING:
    from manifold.providers.base import Provider

LEGACY_DEFAULT_MAX_TOKENS = 16
_LEGACY_ONLY = ("prompt", "suffix", "echo", "best_of", "logprobs")


def _count(body: dict[str, Any]) -> int:
    n = body.get("n")
    return n if isinstance(n, int) and n > 0 else 1


def check_mappable(body: dict[str, Any], public_model: str) -> None:
    """Raise the 400 for what chat cannot express."""
    where = f"The model '{public_model}' answers legacy completions through chat, which"
    if body.get("suffix") is not None:
        raise UnsupportedError(f"{where} has no 'suffix' (text insertion).", param="suffix")
    best_of = body.get("best_of")
    if isinstance(best_of, int) and best_of > _count(body):
        raise UnsupportedError(f"{where} cannot rank candidates: 'best_of' must not exceed 'n'.", param="best_of")
    if body.get("echo") and body.get("logprobs") is not None:
        raise UnsupportedError(f"{where} gives no logprobs for the prompt: use 'echo' or 'logprobs'.", param="echo")
    if body.get("max_tokens") == 0:
        raise UnsupportedError(f"{where} needs 'max_tokens' of at least 1.", param="max_tokens")
    for prompt in split_prompts(body.get("prompt")):
        if not isinstance(prompt, str):
            raise UnsupportedError(f"{where} takes text prompts only, not token arrays.", param="prompt")


def to_chat(body: dict[str, Any], prompt: str) -> dict[str, Any]:
    """The chat request for one prompt of a legacy completion request."""
    out = {k: v for k, v in body.items() if k not in _LEGACY_ONLY}
    out["messages"] = [{"role": "user", "content": prompt}]
    if out.get("max_tokens") is None:
        out["max_tokens"] = LEGACY_DEFAULT_MAX_TOKENS
    logprobs = body.get("logprobs")
    if logprobs is not None:
        out["logprobs"] = True
        out["top_logprobs"] = logprobs
    return out


def _legacy_logprobs(chat_logprobs: Any, offset: int) -> dict[str, Any] | None:
    content = chat_logprobs.get("content") if isinstance(chat_logprobs, dict) else None
    if not isinstance(content, list):
        return None
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top: list[dict[str, float]] = []
    text_offset: list[int] = []
    for entry in content:
        token = str(entry.get("token", ""))
        tokens.append(token)
        token_logprobs.append(float(entry.get("logprob", 0.0)))
        top.append({str(t.get("token", "")): float(t.get("logprob", 0.0)) for t in entry.get("top_logprobs") or []})
        text_offset.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top, "text_offset": text_offset}


def choices_from_chat(completion: dict[str, Any], prompt: str, echo: bool, base_index: int) -> list[dict[str, Any]]:
    """The `text_completion` choices of one prompt's `chat.completion`."""
    out = []
    prefix = prompt if echo else ""
    for position, choice in enumerate(completion.get("choices") or []):
        message = choice.get("message") or {}
        index = choice.get("index")
        out.append(
            {
                "text": prefix + (message.get("content") or ""),
                "index": base_index + (index if isinstance(index, int) else position),
                "logprobs": _legacy_logprobs(choice.get("logprobs"), len(prefix)),
                "finish_reason": finish_reason(choice.get("finish_reason")),
            }
        )
    return out


def add_usage(total: dict[str, int] | None, usage: Any) -> dict[str, int] | None:
    if not isinstance(usage, dict):
        return total
    total = dict(total or {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
    for key in total:
        value = usage.get(key)
        if isinstance(value, int | float):
            total[key] += int(value)
    return total


def _chat_call(call: Call, prompt: str, stream: bool) -> Call:
    chat = Call(to_chat(call.body, prompt), call.public_model, call.request_id, stream)
    chat.upstream_model = call.upstream_model
    chat.route = call.route or "POST /completions"
    return chat


async def complete(provider: Provider, call: Call) -> dict[str, Any]:
    body = call.body
    check_mappable(body, call.public_model)
    prompts = [str(p) for p in split_prompts(body.get("prompt"))]
    n = _count(body)
    echo = bool(body.get("echo"))
    answers = await asyncio.gather(*(provider.chat(_chat_call(call, p, False)) for p in prompts))
    choices: list[dict[str, Any]] = []
    usage: dict[str, int] | None = None
    for i, (prompt, answer) in enumerate(zip(prompts, answers, strict=True)):
        upstream.conform(answer, upstream.ChatCompletion, "chat completion")
        choices.extend(choices_from_chat(answer, prompt, echo, i * n))
        usage = add_usage(usage, answer.get("usage"))
    first = answers[0] if answers else {}
    out: dict[str, Any] = {
        "id": new_completion_id(),
        "object": "text_completion",
        "created": first.get("created") or int(time.time()),
        "model": call.public_model,
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage
    return out


class ChunkMapper:
    """Per-stream state: turns one prompt's `chat.completion.chunk`s into `text_completion` chunks."""

    __slots__ = ("_base_index", "_echo", "_offsets", "_prompt", "_started")

    def __init__(self, prompt: str, echo: bool, base_index: int) -> None:
        self._prompt = prompt
        self._echo = echo
        self._base_index = base_index
        self._started: set[int] = set()
        self._offsets: dict[int, int] = {}

    def chunk_from_chat(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The text chunk for a chat chunk, or None when it carries nothing (a role-only delta, usage)."""
        upstream.conform(chunk, upstream.ChatChunk, "stream chunk")
        choices = []
        for position, choice in enumerate(chunk.get("choices") or []):
            index = choice.get("index")
            index = index if isinstance(index, int) else position
            delta = choice.get("delta") or {}
            prefix = ""
            if index not in self._started:
                self._started.add(index)
                prefix = self._prompt if self._echo else ""
            sent = self._offsets.get(index, 0)  # characters of this choice's text sent so far
            logprobs = _legacy_logprobs(choice.get("logprobs"), sent + len(prefix))
            text = prefix + (delta.get("content") or "")
            self._offsets[index] = sent + len(text)
            finish = choice.get("finish_reason")
            if not text and finish is None and logprobs is None:
                continue
            choices.append(
                {
                    "text": text,
                    "index": self._base_index + index,
                    "logprobs": logprobs,
                    "finish_reason": None if finish is None else finish_reason(finish),
                }
            )
        if not choices:
            return None
        return {
            "id": None,  # the stream gets a `cmpl-` id of its own
            "object": "text_completion",
            "created": chunk.get("created"),
            "model": chunk.get("model"),
            "choices": choices,
        }


async def open_stream(provider: Provider, call: Call) -> ChunkStream:
    body = call.body
    check_mappable(body, call.public_model)
    prompts = [str(p) for p in split_prompts(body.get("prompt"))]
    # The first stream is opened here, so errors before the first byte still get a proper status.
    first = await provider.open_chat_stream(_chat_call(call, prompts[0], True))
    return _relay(provider, call, prompts, first)


async def _relay(provider: Provider, call: Call, prompts: list[str], first: ChunkStream) -> ChunkStream:
    n = _count(call.body)
    echo = bool(call.body.get("echo"))
    usage: dict[str, int] | None = None
    for i, prompt in enumerate(prompts):
        stream: AsyncIterator[dict[str, Any]] = first
        if i:
            stream = await provider.open_chat_stream(_chat_call(call, prompt, True))
        mapper = ChunkMapper(prompt, echo, i * n)
        last_usage = None  # some upstreams send running totals in every chunk: the last one counts
        try:
            async for chunk in stream:
                if isinstance(chunk.get("usage"), dict):
                    last_usage = chunk["usage"]
                mapped = mapper.chunk_from_chat(chunk)
                if mapped is not None:
                    yield mapped
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()
        usage = add_usage(usage, last_usage)
    if usage is not None:
        yield {"choices": [], "usage": usage}
