"""Assemble a streamed chat completion into the `chat.completion` it stands for (to store it).

It reads the chunks as they are sent to the client, after `ChunkShaper`: `role`, a tool call's `id`, `type` and
`function.name` arrive once, strings are concatenated per choice, tool calls are keyed by their `index`. The
result is what the same request would have answered without `stream`.
"""

from __future__ import annotations

import time
from typing import Any

from manifold.api.chat_response import ChunkShaper, new_completion_id, normalize_completion


class _Choice:
    __slots__ = ("content", "finish_reason", "function_call", "logprobs", "refusal", "saw_content", "tool_calls")

    def __init__(self) -> None:
        self.content: list[str] = []
        self.saw_content = False
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, str] | None = None
        self.finish_reason: str | None = None
        self.logprobs: dict[str, list[Any] | None] | None = None

    def add(self, choice: dict[str, Any]) -> None:
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str):
            self.saw_content = True
            self.content.append(content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            self.refusal.append(refusal)
        for tc in delta.get("tool_calls") or ():
            self._add_tool_call(tc)
        fc = delta.get("function_call")
        if isinstance(fc, dict):
            if self.function_call is None:
                self.function_call = {"name": "", "arguments": ""}
            self.function_call["name"] += fc.get("name") or ""
            self.function_call["arguments"] += fc.get("arguments") or ""
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        lp = choice.get("logprobs")
        if isinstance(lp, dict):
            if self.logprobs is None:
                self.logprobs = {"content": None, "refusal": None}
            for key in ("content", "refusal"):
                tokens = lp.get(key)
                if isinstance(tokens, list):
                    held = self.logprobs[key]
                    self.logprobs[key] = tokens if held is None else held + tokens

    def _add_tool_call(self, tc: dict[str, Any]) -> None:
        entry = self.tool_calls.setdefault(tc.get("index", len(self.tool_calls)), {"id": "", "type": "function"})
        if tc.get("id"):
            entry["id"] = tc["id"]
        if tc.get("type"):
            entry["type"] = tc["type"]
        fn = tc.get("function")
        if isinstance(fn, dict):
            held = entry.setdefault("function", {"name": "", "arguments": ""})
            held["name"] += fn.get("name") or ""
            held["arguments"] += fn.get("arguments") or ""
        custom = tc.get("custom")
        if isinstance(custom, dict):
            held = entry.setdefault("custom", {"name": "", "input": ""})
            held["name"] += custom.get("name") or ""
            held["input"] += custom.get("input") or ""

    def message(self) -> dict[str, Any]:
        text = "".join(self.content)
        message: dict[str, Any] = {
            "role": "assistant",
            # A tool-calling turn's empty first delta (`content: ""`) is no answer: null, as without `stream`.
            "content": text if self.saw_content and (text or not self.tool_calls) else None,
            "refusal": "".join(self.refusal) if self.refusal else None,
        }
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        if self.function_call is not None:
            message["function_call"] = self.function_call
        return message


class CompletionAssembler:
    __slots__ = ("_choices", "_extra")

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._extra: dict[str, Any] = {}

    def add(self, chunk: dict[str, Any]) -> None:
        for key in ("system_fingerprint", "service_tier"):
            if chunk.get(key) is not None:
                self._extra[key] = chunk[key]
        for choice in chunk.get("choices") or ():
            index = choice.get("index", 0)
            state = self._choices.get(index)
            if state is None:
                state = self._choices[index] = _Choice()
            state.add(choice)

    def completion(self, completion_id: str, created: int, model: str, usage: dict[str, Any] | None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": i,
                    "message": c.message(),
                    "finish_reason": c.finish_reason,
                    "logprobs": c.logprobs,
                }
                for i, c in sorted(self._choices.items())
            ],
            **self._extra,
        }
        if usage is not None:
            obj["usage"] = dict(usage)
        return normalize_completion(obj, model)


class AssemblingChunkShaper(ChunkShaper):
    """A `ChunkShaper` that also assembles what it shaped (used for streams created with `store: true`)."""

    __slots__ = ("assembler",)

    def __init__(self, public_model: str, include_usage: bool, completion_id: str) -> None:
        super().__init__(public_model, include_usage, completion_id=completion_id)
        self.assembler = CompletionAssembler()

    def shape(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        shaped = super().shape(chunk)
        if shaped is not None:
            self.assembler.add(shaped)
        return shaped

    def assembled(self, public_model: str) -> dict[str, Any]:
        created = self.created if self.created is not None else int(time.time())
        return self.assembler.completion(self.id or new_completion_id(), created, public_model, self.usage)
