"""Make any upstream's chat answer exactly what OpenAI's schemas and SDKs expect.

Upstreams differ in small ways (vLLM, llama.cpp, Ollama, Azure): a missing `refusal`, `null` detail objects,
`role` repeated in every chunk, a tool call's `id` and `name` repeated in every delta. The SDK's `.stream()` helper
concatenates every repeated string (`"assistantassistant"`), so repeats are removed here, once, for all backends.
These functions own the dicts they are given (freshly decoded) and change them in place.
"""

from __future__ import annotations

import os
import time
from typing import Any

import msgspec

from manifold.api import upstream

_convert = msgspec.convert
_ChatChunk = upstream.ChatChunk
_ChatCompletion = upstream.ChatCompletion
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})


def new_completion_id() -> str:
    return "chatcmpl-" + os.urandom(12).hex()


def known_finish_reason(value: Any, known: frozenset[str] = FINISH_REASONS) -> str:
    """`value` where the object's schema allows it (`known`), else "length" for the usual names of a token limit
    and "stop" for anything else."""
    if value in known:
        return str(value)
    return "length" if value in ("max_tokens", "max_length") else "stop"


def _fix_logprobs(choice: dict[str, Any], logprobs: upstream.Logprobs | None) -> None:
    if logprobs is not None:
        lp = choice["logprobs"]
        lp.setdefault("content", None)
        lp.setdefault("refusal", None)
    else:
        choice["logprobs"] = None


def fix_usage(obj: dict[str, Any]) -> None:
    """`usage` with the three counts as integers and without null details (its types already checked)."""
    usage = obj.get("usage")
    if not isinstance(usage, dict):
        obj.pop("usage", None)
        return
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        v = usage.get(key)
        usage[key] = int(v) if isinstance(v, int | float) else 0
    for key in ("prompt_tokens_details", "completion_tokens_details"):
        if key in usage and not isinstance(usage[key], dict):
            del usage[key]


def final_usage_chunk(
    chunk_id: str, object_type: str, created: int | None, public_model: str, usage: dict[str, Any]
) -> dict[str, Any]:
    """A stream's last chunk: `choices: []` and the usage (as `fix_usage` leaves it), for chat and legacy
    completions alike."""
    holder = {"usage": usage}
    fix_usage(holder)
    return {
        "id": chunk_id,
        "object": object_type,
        "created": created or int(time.time()),
        "model": public_model,
        "choices": [],
        "usage": holder.get("usage"),
    }


def normalize_completion(obj: dict[str, Any], public_model: str) -> dict[str, Any]:
    """A non-streamed `chat.completion`, in place; `UpstreamShapeError` (502) when it does not fit the schema."""
    try:
        typed = _convert(obj, _ChatCompletion)  # `upstream.conform`, inlined (the hot path)
    except msgspec.ValidationError as exc:
        raise upstream.shape_error("chat completion", str(exc)) from None
    obj["model"] = public_model
    obj["object"] = "chat.completion"
    if typed.id is None:
        obj["id"] = new_completion_id()
    obj["created"] = int(typed.created) if typed.created is not None else int(time.time())
    if typed.system_fingerprint is None:
        obj.pop("system_fingerprint", None)
    for i, (choice, checked) in enumerate(zip(obj["choices"], typed.choices, strict=True)):
        if checked.index is None:
            choice["index"] = i
        message = choice["message"]
        message["role"] = "assistant"
        message.setdefault("content", None)
        message.setdefault("refusal", None)
        checked_message = checked.message
        if checked_message.tool_calls:
            for tc in message["tool_calls"]:
                tc.setdefault("type", "function")
        elif "tool_calls" in message:
            del message["tool_calls"]
        # Present but null: dropped (the schema says object/array); absent: nothing to do.
        if checked_message.function_call is None and "function_call" in message:
            del message["function_call"]
        if checked_message.audio is None and "audio" in message:
            del message["audio"]
        if checked_message.annotations is None and "annotations" in message:
            del message["annotations"]
        choice["finish_reason"] = known_finish_reason(checked.finish_reason)
        if checked.logprobs is None:
            choice["logprobs"] = None
        else:
            _fix_logprobs(choice, checked.logprobs)
    usage = typed.usage
    if usage is None:
        obj.pop("usage", None)
    else:
        _fix_checked_usage(obj["usage"], usage)
    return obj


def _fix_checked_usage(out: dict[str, Any], usage: upstream.Usage) -> None:
    """`fix_usage` for a usage whose types are already checked."""
    out["prompt_tokens"] = int(usage.prompt_tokens) if usage.prompt_tokens is not None else 0
    out["completion_tokens"] = int(usage.completion_tokens) if usage.completion_tokens is not None else 0
    out["total_tokens"] = int(usage.total_tokens) if usage.total_tokens is not None else 0
    if usage.prompt_tokens_details is None and "prompt_tokens_details" in out:
        del out["prompt_tokens_details"]
    if usage.completion_tokens_details is None and "completion_tokens_details" in out:
        del out["completion_tokens_details"]


class ChunkShaper:
    """Per-stream state that turns upstream chunks into chunks obeying the SDK's accumulation rules.

    - `role` only in each choice's first delta (added there when the upstream omitted it);
    - a tool call's `id`, `type` and `function.name` only in its first delta, later ones carry `index` and
      `function.arguments`;
    - `usage` is held back and sent in one final chunk with `choices: []` when the client asked for it with
      `stream_options.include_usage`; other chunks then carry `usage: null`, as the spec says.
    """

    __slots__ = (
        "_completion_id",
        "_include_usage",
        "_public_model",
        "_roles_sent",
        "_tool_calls_seen",
        "created",
        "id",
        "usage",
    )

    def __init__(self, public_model: str, include_usage: bool, completion_id: str | None = None) -> None:
        self._public_model = public_model
        self._include_usage = include_usage
        self._roles_sent: set[int] = set()
        self._tool_calls_seen: set[tuple[int, int]] = set()
        self._completion_id = completion_id  # the gateway's own id (stored completions), else the upstream's
        self.id: str | None = None
        self.created: int | None = None
        self.usage: dict[str, Any] | None = None

    def shape(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """Return the chunk to send, or None when nothing of it is left for the client. `UpstreamShapeError`
        (which the relay turns into the stream's error event) when the chunk does not fit the schema."""
        try:
            typed = _convert(chunk, _ChatChunk)  # `upstream.conform`, inlined: this runs for every chunk
        except msgspec.ValidationError as exc:
            raise upstream.shape_error("stream chunk", str(exc)) from None
        if typed.usage is not None:
            self.usage = chunk["usage"]
        checked_choices = typed.choices
        if not checked_choices:
            # Usage-only chunks (held for the final one) and choice-less chunks such as Azure's
            # prompt_filter_results: clients index choices[0] on every chunk but the usage one.
            return None
        if self.id is None:
            cid = self._completion_id or typed.id
            self.id = cid if cid else new_completion_id()
            created = typed.created
            self.created = int(created) if created is not None and created > 0 else int(time.time())
        chunk["id"] = self.id
        chunk["object"] = "chat.completion.chunk"
        chunk["created"] = self.created
        chunk["model"] = self._public_model
        if typed.system_fingerprint is None:
            chunk.pop("system_fingerprint", None)
        if len(checked_choices) == 1:
            self._shape_choice(chunk["choices"][0], checked_choices[0])
        else:
            for choice, checked in zip(chunk["choices"], checked_choices, strict=True):
                self._shape_choice(choice, checked)
        if self._include_usage:
            chunk["usage"] = None
        else:
            chunk.pop("usage", None)
        return chunk

    def _shape_choice(self, choice: dict[str, Any], checked: upstream.ChunkChoice) -> None:
        index = checked.index
        if index is None:
            index = choice["index"] = 0
        delta = choice.get("delta")
        if delta is None:
            delta = choice["delta"] = {}
        if index in self._roles_sent:
            delta.pop("role", None)
        else:
            self._roles_sent.add(index)
            delta["role"] = "assistant"
        checked_delta = checked.delta
        checked_calls = checked_delta.tool_calls if checked_delta is not None else None
        if checked_calls:
            for position, (tc, tc_checked) in enumerate(zip(delta["tool_calls"], checked_calls, strict=True)):
                tc_index = tc_checked.index
                if tc_index is None:
                    tc_index = tc["index"] = position
                key = (index, tc_index)
                fn = tc.get("function") if tc_checked.function is not None else None
                if key in self._tool_calls_seen:
                    tc.pop("id", None)
                    tc.pop("type", None)
                    if fn is not None:
                        fn.pop("name", None)
                else:
                    self._tool_calls_seen.add(key)
                    tc.setdefault("type", "function")
                if fn is not None and fn.get("arguments") is None:
                    fn["arguments"] = ""
        elif "tool_calls" in delta:
            del delta["tool_calls"]
        finish = checked.finish_reason
        choice["finish_reason"] = None if finish is None else known_finish_reason(finish)
        if checked.logprobs is not None:  # null (or absent) needs nothing: checked, it is nothing else
            _fix_logprobs(choice, checked.logprobs)

    def usage_chunk(self) -> dict[str, Any] | None:
        """The final `choices: []` chunk, when the client asked for usage and the upstream reported it."""
        if not self._include_usage or self.usage is None:
            return None
        return final_usage_chunk(
            self.id or new_completion_id(), "chat.completion.chunk", self.created, self._public_model, self.usage
        )
