"""Anthropic's streaming events → `chat.completion.chunk` dicts, incrementally, with per-request state.

An Anthropic stream is (https://docs.claude.com/en/docs/build-with-claude/streaming):
``message_start`` → per content block ``content_block_start``, ``content_block_delta``…, ``content_block_stop``
→ one or more ``message_delta`` (stop reason, cumulative usage) → ``message_stop``; ``ping`` anywhere, and an
``error`` event (e.g. ``overloaded_error``) possibly after the 200. Unknown event types are skipped, as the
versioning policy asks.

The chunks obey the SDK's accumulation rules on their own (the server's ChunkShaper enforces them again):
``role`` once, in the first chunk; each tool call's ``id``/``type``/``function.name`` only in its first delta,
later deltas carry ``index`` and ``function.arguments`` from ``input_json_delta``. The finish reason and the
usage go out in one last chunk when ``message_stop`` arrives; the shaper turns that usage into the final
``choices: []`` chunk when the client asked for ``stream_options.include_usage``.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from manifold import _json
from manifold.api.chat_response import new_completion_id
from manifold.api.sse import SSEEvent
from manifold.errors import BadGatewayError
from manifold.providers.anthropic.translate import arguments_text, finish_reason, usage_from_anthropic
from manifold.providers.anthropic.upstream_errors import anthropic_error, error_fields

_TEXT = "text"
_TOOL = "tool"
_ANSWER = "answer"  # the response_format tool: its input is streamed as content


class _Block:
    __slots__ = ("kind", "sent_arguments", "start_input", "tool_index")

    def __init__(self, kind: str, tool_index: int = -1, start_input: Any = None) -> None:
        self.kind = kind
        self.tool_index = tool_index
        self.start_input = start_input
        self.sent_arguments = False


class AnthropicStreamParser:
    """Feed it every SSE event of one response; it returns the chunks each event yields."""

    __slots__ = (
        "_blocks",
        "_created",
        "_id",
        "_label",
        "_public_model",
        "_response_tool",
        "_started",
        "_stop_reason",
        "_tool_calls",
        "_usage",
        "finished",
    )

    def __init__(
        self,
        public_model: str,
        *,
        response_tool: str | None = None,
        label: str = "'anthropic'",
        created: int | None = None,
    ) -> None:
        self._public_model = public_model
        self._response_tool = response_tool
        self._label = label
        self._created = created if created is not None else int(time.time())
        self._id = ""
        self._started = False
        self._blocks: dict[int, _Block] = {}
        self._tool_calls = 0
        self._stop_reason: Any = None
        self._usage: dict[str, Any] = {}
        self.finished = False

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        try:
            data = _json.decode(event.data)
        except msgspec.DecodeError:
            raise BadGatewayError(f"The upstream for {self._label} sent a malformed stream event.") from None
        if not isinstance(data, dict):
            raise BadGatewayError(f"The upstream for {self._label} sent a non-object stream event.")
        kind = data.get("type")
        if kind == "error":
            etype, message = error_fields(data)
            raise anthropic_error(None, etype, message, self._label)
        if self.finished:
            return []
        if kind == "message_start":
            return self._message_start(data.get("message"))
        if not self._started:
            if kind == "ping":
                return []
            raise BadGatewayError(f"The upstream for {self._label} sent {kind!r} before 'message_start'.")
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "content_block_delta":
            return self._block_delta(data)
        if kind == "content_block_stop":
            return self._block_stop(data)
        if kind == "message_delta":
            delta = data.get("delta")
            if isinstance(delta, dict) and delta.get("stop_reason") is not None:
                self._stop_reason = delta["stop_reason"]
            self._add_usage(data.get("usage"))
            return []
        if kind == "message_stop":
            self.finished = True
            has_tools = self._tool_calls > 0
            chunk = self._chunk({}, finish_reason(self._stop_reason, has_tools))
            usage = usage_from_anthropic(self._usage) if self._usage else None
            if usage is not None:
                chunk["usage"] = usage
            return [chunk]
        return []  # ping, and event types added after this was written

    def check_complete(self) -> None:
        """At the end of the body: a stream that never reached `message_stop` was cut."""
        if not self.finished:
            raise BadGatewayError(f"The upstream for {self._label} ended the stream before 'message_stop'.")

    # -- events ------------------------------------------------------------------------------------------------

    def _message_start(self, message: Any) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        message = message if isinstance(message, dict) else {}
        mid = message.get("id")
        self._id = mid if isinstance(mid, str) and mid else new_completion_id()
        self._add_usage(message.get("usage"))
        return [self._chunk({"role": "assistant", "content": ""})]

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        index = data.get("index")
        block = data.get("content_block")
        if not isinstance(index, int) or not isinstance(block, dict):
            return []
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = _Block(_TEXT)
            text = block.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if kind != "tool_use":
            return []  # thinking, redacted thinking, server tools: no Chat Completions form
        start_input = block.get("input")
        if self._response_tool is not None and block.get("name") == self._response_tool:
            self._blocks[index] = _Block(_ANSWER, start_input=start_input)
            return []
        tool_index = self._tool_calls
        self._tool_calls += 1
        self._blocks[index] = _Block(_TOOL, tool_index, start_input)
        call = {
            "index": tool_index,
            "id": block.get("id"),
            "type": "function",
            "function": {"name": block.get("name"), "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        index = data.get("index")
        block = self._blocks.get(index) if isinstance(index, int) else None
        delta = data.get("delta")
        if block is None or not isinstance(delta, dict):
            return []
        kind = delta.get("type")
        if kind == "text_delta" and block.kind == _TEXT:
            text = delta.get("text")
            return [self._chunk({"content": text})] if isinstance(text, str) and text else []
        if kind == "input_json_delta" and block.kind != _TEXT:
            partial = delta.get("partial_json")
            if not isinstance(partial, str) or not partial:
                return []
            block.sent_arguments = True
            return [self._arguments(block, partial)]
        return []  # thinking_delta, signature_delta, citations_delta

    def _block_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        index = data.get("index")
        block = self._blocks.pop(index, None) if isinstance(index, int) else None
        if block is None or block.kind == _TEXT or block.sent_arguments:
            return []
        # No input_json_delta carried anything: the input is the start block's (`{}` for a call without
        # arguments), so clients always get a JSON object to parse.
        return [self._arguments(block, arguments_text(block.start_input))]

    # -- chunks ------------------------------------------------------------------------------------------------

    def _arguments(self, block: _Block, text: str) -> dict[str, Any]:
        if block.kind == _ANSWER:
            return self._chunk({"content": text})
        return self._chunk({"tool_calls": [{"index": block.tool_index, "function": {"arguments": text}}]})

    def _add_usage(self, usage: Any) -> None:
        # message_delta's counts are cumulative: later values replace earlier ones, absent ones stay.
        if isinstance(usage, dict):
            self._usage.update({k: v for k, v in usage.items() if v is not None})

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._public_model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
