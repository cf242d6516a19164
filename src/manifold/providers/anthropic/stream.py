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
from manifold.api.sse_decoder import SSEEvent
from manifold.errors import BadGatewayError
from manifold.providers.anthropic import shapes
from manifold.providers.anthropic.translate import arguments_text, finish_reason, usage_from_anthropic
from manifold.providers.anthropic.upstream_errors import anthropic_error

_TEXT = "text"
_TOOL = "tool"
_ANSWER = "answer"  # the response_format tool: its input is streamed as content
_OTHER = "other"  # thinking, server tools, block types added later
_EVENT = "stream event"
_START = shapes.EVENTS["content_block_start"][1]
_DELTA = shapes.EVENTS["content_block_delta"][1]


class _Block:
    __slots__ = ("kind", "sent_arguments", "start_input", "tool_index")

    def __init__(self, kind: str, tool_index: int = -1, start_input: Any = None) -> None:
        self.kind = kind
        self.tool_index = tool_index
        self.start_input = start_input
        self.sent_arguments = False


class AnthropicStreamParser:
    """Feed it every SSE event of one response; it returns the chunks each event yields. An event that does not
    fit the Messages schema (`shapes`) is `UpstreamShapeError`: the stream ends with an error event."""

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
        self._stop_reason: str | None = None
        self._usage: shapes.Usage | None = None
        self.finished = False

    def feed(self, event: SSEEvent) -> list[dict[str, Any]]:
        try:
            data = _json.decode(event.data)
        except msgspec.DecodeError:
            raise BadGatewayError(f"The upstream for {self._label} sent a malformed stream event.") from None
        if not isinstance(data, dict):
            raise BadGatewayError(f"The upstream for {self._label} sent a non-object stream event.")
        kind = data.get("type")
        if not isinstance(kind, str):
            kind = shapes.conform(data, shapes.Block, _EVENT).type  # raises, naming `type`
        shape = shapes.EVENTS.get(kind)
        if shape is None and kind != "message_stop":
            return []  # ping, and event types added after this was written
        typed: Any = None if shape is None else shapes.conform(data, shape[0], shape[1])
        if kind == "error":
            error = typed.error or shapes.ErrorBody()
            raise anthropic_error(None, error.type, error.message, self._label)
        if self.finished:
            return []
        if kind == "message_start":
            return self._message_start(typed)
        if not self._started:
            raise BadGatewayError(f"The upstream for {self._label} sent {kind!r} before 'message_start'.")
        if kind == "content_block_start":
            return self._block_start(typed)
        if kind == "content_block_delta":
            return self._block_delta(typed)
        if kind == "content_block_stop":
            return self._block_stop(typed)
        if kind == "message_stop":
            return self._message_stop()
        # message_delta
        if typed.delta.stop_reason is not None:
            self._stop_reason = typed.delta.stop_reason
        self._add_usage(typed.usage)
        return []

    def check_complete(self) -> None:
        """At the end of the body: a stream that never reached `message_stop` was cut."""
        if not self.finished:
            raise BadGatewayError(f"The upstream for {self._label} ended the stream before 'message_stop'.")

    # -- events ------------------------------------------------------------------------------------------------

    def _message_start(self, event: shapes.MessageStart) -> list[dict[str, Any]]:
        if self._started:
            return []
        self._started = True
        message = event.message
        self._id = message.id or new_completion_id()
        self._add_usage(message.usage)
        return [self._chunk({"role": "assistant", "content": ""})]

    def _message_stop(self) -> list[dict[str, Any]]:
        self.finished = True
        chunk = self._chunk({}, finish_reason(self._stop_reason, self._tool_calls > 0))
        usage = usage_from_anthropic(self._usage)
        if usage is not None:
            chunk["usage"] = usage
        return [chunk]

    def _block_start(self, event: shapes.BlockStart) -> list[dict[str, Any]]:
        index = event.index
        kind, block = shapes.typed_part(event.content_block, shapes.BLOCKS, _START, "content_block")
        if kind == "text":
            self._blocks[index] = _Block(_TEXT)
            return [self._chunk({"content": block.text})] if block.text else []
        if kind != "tool_use":
            # Thinking, redacted thinking, server tools: no Chat Completions form, their deltas are skipped.
            self._blocks[index] = _Block(_OTHER)
            return []
        if self._response_tool is not None and block.name == self._response_tool:
            self._blocks[index] = _Block(_ANSWER, start_input=block.input)
            return []
        tool_index = self._tool_calls
        self._tool_calls += 1
        self._blocks[index] = _Block(_TOOL, tool_index, block.input)
        call = {
            "index": tool_index,
            "id": block.id,
            "type": "function",
            "function": {"name": block.name, "arguments": ""},
        }
        return [self._chunk({"tool_calls": [call]})]

    def _block(self, index: int, kind: str) -> _Block:
        block = self._blocks.get(index)
        if block is None:
            # The SDK's accumulator fails on it too (it indexes the blocks started so far); skipping it would drop
            # content.
            raise shapes.shape_error(
                shapes.EVENTS[kind][1], f"at 'index': {index} names no block started by 'content_block_start'"
            )
        return block

    def _block_delta(self, event: shapes.BlockDelta) -> list[dict[str, Any]]:
        block = self._block(event.index, "content_block_delta")
        kind, delta = shapes.typed_part(event.delta, shapes.DELTAS, _DELTA, "delta")
        if block.kind == _OTHER:
            return []
        if kind == "text_delta":
            if block.kind != _TEXT:
                raise self._mismatch(kind, block)
            return [self._chunk({"content": delta.text})] if delta.text else []
        if kind == "input_json_delta":
            if block.kind == _TEXT:
                raise self._mismatch(kind, block)
            if not delta.partial_json:
                return []
            block.sent_arguments = True
            return [self._arguments(block, delta.partial_json)]
        return []  # thinking_delta, signature_delta, citations_delta

    def _mismatch(self, kind: str, block: _Block) -> Exception:
        what = "a text block" if block.kind == _TEXT else "a tool_use block"
        return shapes.shape_error(_DELTA, f"at 'delta.type': {kind!r} does not belong to {what}")

    def _block_stop(self, event: shapes.BlockStop) -> list[dict[str, Any]]:
        block = self._block(event.index, "content_block_stop")
        if block.kind in (_TEXT, _OTHER) or block.sent_arguments:
            return []
        block.sent_arguments = True  # a repeated stop adds nothing
        # No input_json_delta carried anything: the input is the start block's (`{}` for a call without
        # arguments), so clients always get a JSON object to parse.
        return [self._arguments(block, arguments_text(block.start_input))]

    # -- chunks ------------------------------------------------------------------------------------------------

    def _arguments(self, block: _Block, text: str) -> dict[str, Any]:
        if block.kind == _ANSWER:
            return self._chunk({"content": text})
        return self._chunk({"tool_calls": [{"index": block.tool_index, "function": {"arguments": text}}]})

    def _add_usage(self, usage: shapes.Usage | None) -> None:
        # message_delta's counts are cumulative: later values replace earlier ones, absent ones stay.
        if usage is None:
            return
        if self._usage is None:
            self._usage = usage
            return
        for name in usage.__struct_fields__:
            value = getattr(usage, name)
            if value is not None:
                setattr(self._usage, name, value)

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._public_model,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }
