"""Chat chunks → Responses stream events and the `Response` they build, in the order the SDK's
`responses.stream()` helper demands (CLIENTS.md §3.4):

    response.created → response.in_progress → response.output_item.added → response.content_part.added
    → response.output_text.delta… → response.output_text.done → response.content_part.done
    → response.output_item.done → … → response.completed | response.incomplete | response.failed

`sequence_number` starts at 0 and rises by one per event. A non-streamed answer goes through the same builder
(its completion replayed as chunks), so a streamed and a non-streamed response to the same input end equal.
The builder reads chunks after `ChunkShaper` (role once, a tool call's id and name in its first delta only).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from manifold import _json
from manifold.api.response_request import new_id
from manifold.responses.translate import response_usage

TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def _copy(obj: Any) -> Any:
    """A deep copy of plain JSON data (what an event carries, frozen as it is now). Through msgspec: about five
    times cheaper than `copy.deepcopy` (3 µs against 16 µs for a small response), which was the largest cost of
    a streamed response's own."""
    return _json.decode(_json.encode(obj))


class _Message:
    __slots__ = ("item", "output_index", "part", "part_kind")

    def __init__(self, output_index: int) -> None:
        self.output_index = output_index
        self.item: dict[str, Any] = {
            "id": new_id("msg_"),
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        self.part: dict[str, Any] | None = None
        self.part_kind: str | None = None


class _Call:
    __slots__ = ("item", "output_index")

    def __init__(self, output_index: int, call_id: str, name: str) -> None:
        self.output_index = output_index
        self.item: dict[str, Any] = {
            "id": new_id("fc_"),
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call_id,
            "name": name,
        }


class ResponseBuilder:
    """Per-response state: the `Response` as it grows, and the events that tell a client how it grew."""

    def __init__(self, response: dict[str, Any], first_sequence: int = 0) -> None:
        self.response = response
        self.sequence = first_sequence
        self._message: _Message | None = None
        self._calls: dict[int, _Call] = {}  # by the chat tool call's index
        self._open_call: _Call | None = None
        self._finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    @property
    def output(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = self.response["output"]
        return out

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def _snapshot(self) -> dict[str, Any]:
        snapshot: dict[str, Any] = _copy(self.response)
        return snapshot

    def lifecycle(self, kind: str) -> dict[str, Any]:
        """`response.created`, `response.queued` or `response.in_progress` with the response as it is now."""
        return self.event(kind, response=self._snapshot())

    # -- content ---------------------------------------------------------------------------------------------

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                events.extend(self._text("output_text", content))
            refusal = delta.get("refusal")
            if isinstance(refusal, str) and refusal:
                events.extend(self._text("refusal", refusal))
            for tc in delta.get("tool_calls") or ():
                events.extend(self._tool_call(tc))
            if choice.get("finish_reason") is not None:
                self._finish_reason = choice["finish_reason"]
        return events

    def _text(self, kind: str, text: str) -> Iterator[dict[str, Any]]:
        message = self._message
        if message is None:
            yield from self._close_call("completed")
            message = self._message = _Message(len(self.output))
            self.output.append(message.item)
            yield self.event("response.output_item.added", output_index=message.output_index, item=_copy(message.item))
        if message.part_kind != kind:
            yield from self._close_part(message)
            if kind == "output_text":
                part: dict[str, Any] = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            else:
                part = {"type": "refusal", "refusal": ""}
            message.part, message.part_kind = part, kind
            message.item["content"].append(part)
            yield self.event(
                "response.content_part.added",
                item_id=message.item["id"],
                output_index=message.output_index,
                content_index=len(message.item["content"]) - 1,
                part=_copy(part),
            )
        assert message.part is not None
        where = {
            "item_id": message.item["id"],
            "output_index": message.output_index,
            "content_index": len(message.item["content"]) - 1,
        }
        if kind == "output_text":
            message.part["text"] += text
            yield self.event("response.output_text.delta", **where, delta=text, logprobs=[])
        else:
            message.part["refusal"] += text
            yield self.event("response.refusal.delta", **where, delta=text)

    def _close_part(self, message: _Message) -> Iterator[dict[str, Any]]:
        part = message.part
        if part is None:
            return
        where = {
            "item_id": message.item["id"],
            "output_index": message.output_index,
            "content_index": len(message.item["content"]) - 1,
        }
        if message.part_kind == "output_text":
            yield self.event("response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            yield self.event("response.refusal.done", **where, refusal=part["refusal"])
        yield self.event("response.content_part.done", **where, part=_copy(part))
        message.part = message.part_kind = None

    def _close_message(self, status: str) -> Iterator[dict[str, Any]]:
        message = self._message
        if message is None:
            return
        yield from self._close_part(message)
        message.item["status"] = status
        yield self.event("response.output_item.done", output_index=message.output_index, item=_copy(message.item))
        self._message = None

    def _tool_call(self, tc: dict[str, Any]) -> Iterator[dict[str, Any]]:
        index = tc.get("index", 0)
        fn = tc.get("function") or {}
        call = self._calls.get(index)
        if call is None:
            # Each item is done before the next opens, as OpenAI streams them: the SDK wants it, and a client that
            # runs a tool on `output_item.done` gets each call as soon as its arguments are complete. (Upstreams
            # stream parallel calls one after the other; a late delta for a finished call still joins its
            # arguments in the response.)
            yield from self._close_message("completed")
            yield from self._close_call("completed")
            call = _Call(len(self.output), str(tc.get("id") or new_id("call_")), str(fn.get("name") or ""))
            self._calls[index] = call
            self._open_call = call
            self.output.append(call.item)
            yield self.event("response.output_item.added", output_index=call.output_index, item=_copy(call.item))
        arguments = fn.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.item["arguments"] += arguments
            if call is not self._open_call:
                return
            yield self.event(
                "response.function_call_arguments.delta",
                item_id=call.item["id"],
                output_index=call.output_index,
                delta=arguments,
            )

    def _close_call(self, status: str) -> Iterator[dict[str, Any]]:
        call = self._open_call
        if call is None:
            return
        self._open_call = None
        call.item["status"] = status
        yield self.event(
            "response.function_call_arguments.done",
            item_id=call.item["id"],
            name=call.item["name"],
            output_index=call.output_index,
            arguments=call.item["arguments"],
        )
        yield self.event("response.output_item.done", output_index=call.output_index, item=_copy(call.item))

    # -- the end ---------------------------------------------------------------------------------------------

    def finish(self) -> list[dict[str, Any]]:
        """Close every open item and end with `response.completed` (or `response.incomplete` when the answer
        was cut by `max_output_tokens` or a content filter)."""
        cut = self._finish_reason in ("length", "content_filter")
        status = "incomplete" if cut else "completed"
        events = [*self._close_message(status), *self._close_call(status)]
        self._calls.clear()
        self.response["status"] = status
        if cut:
            reason = "max_output_tokens" if self._finish_reason == "length" else "content_filter"
            self.response["incomplete_details"] = {"reason": reason}
        else:
            self.response["completed_at"] = int(time.time())
        usage = response_usage(self.usage)
        if usage is not None:
            self.response["usage"] = usage
        events.append(self.event(f"response.{status}", response=self._snapshot()))
        return events

    def fail(self, code: str, message: str) -> list[dict[str, Any]]:
        """End with `response.failed` (items left as they were, in progress)."""
        self.response["status"] = "failed"
        self.response["error"] = {"code": code, "message": message}
        return [self.event("response.failed", response=self._snapshot())]

    def settle(self) -> list[dict[str, Any]]:
        """Close the open message and function call: a turn of the engine's tool loop ended, more items follow
        (the next turn's tool calls count from index 0 again)."""
        events = [*self._close_message("completed"), *self._close_call("completed")]
        self._calls.clear()
        return events

    def add_item(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        """A whole item at once (a compaction item): added and done."""
        index = len(self.output)
        self.output.append(item)
        return [
            self.event("response.output_item.added", output_index=index, item=_copy(item)),
            self.event("response.output_item.done", output_index=index, item=_copy(item)),
        ]


def completion_chunks(completion: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A non-streamed `chat.completion` (normalized) replayed as the chunks a stream would have sent."""
    choices = completion.get("choices") or []
    if choices:
        choice = choices[0]
        message = choice.get("message") or {}
        delta: dict[str, Any] = {"role": "assistant"}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        calls = message.get("tool_calls") or []
        if calls:
            delta["tool_calls"] = [
                {"index": i, "id": tc.get("id"), "type": "function", "function": tc.get("function") or {}}
                for i, tc in enumerate(calls)
                if tc.get("type", "function") == "function"
            ]
        yield {"choices": [{"index": 0, "delta": delta, "finish_reason": choice.get("finish_reason")}]}
    if completion.get("usage"):
        yield {"choices": [], "usage": completion["usage"]}


def replay(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a finished (stored) response, rebuilt from it: each text part as one delta."""
    start = _copy(response)
    start.update(status="in_progress", output=[], error=None, incomplete_details=None)
    for key in ("usage", "completed_at"):
        start.pop(key, None)
    builder = ResponseBuilder(start)
    events = [builder.lifecycle("response.created"), builder.lifecycle("response.in_progress")]
    for index, item in enumerate(response.get("output") or []):
        builder.response["output"].append(_copy(item))
        if item.get("type") == "message":
            added = {**item, "status": "in_progress", "content": []}
            events.append(builder.event("response.output_item.added", output_index=index, item=added))
            for content_index, part in enumerate(item.get("content") or []):
                where = {"item_id": item["id"], "output_index": index, "content_index": content_index}
                if part.get("type") == "output_text":
                    empty = {**part, "text": ""}
                    events.append(builder.event("response.content_part.added", **where, part=empty))
                    events.append(builder.event("response.output_text.delta", **where, delta=part["text"], logprobs=[]))
                    events.append(builder.event("response.output_text.done", **where, text=part["text"], logprobs=[]))
                else:
                    events.append(builder.event("response.content_part.added", **where, part={**part, "refusal": ""}))
                    events.append(builder.event("response.refusal.delta", **where, delta=part.get("refusal", "")))
                    events.append(builder.event("response.refusal.done", **where, refusal=part.get("refusal", "")))
                events.append(builder.event("response.content_part.done", **where, part=part))
        elif item.get("type") == "function_call":
            added = {**item, "status": "in_progress", "arguments": ""}
            events.append(builder.event("response.output_item.added", output_index=index, item=added))
            where = {"item_id": item["id"], "output_index": index}
            events.append(builder.event("response.function_call_arguments.delta", **where, delta=item["arguments"]))
            events.append(
                builder.event(
                    "response.function_call_arguments.done", **where, name=item["name"], arguments=item["arguments"]
                )
            )
        else:
            events.append(builder.event("response.output_item.added", output_index=index, item=item))
        events.append(builder.event("response.output_item.done", output_index=index, item=item))
    status = response.get("status")
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete", "failed": "response.failed"}
    if status in terminal:
        events.append(builder.event(terminal[str(status)], response=_copy(response)))
    return events
