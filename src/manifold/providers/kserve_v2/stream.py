"""Incremental parsers for the two OIP streams, one instance per request.

Both take the raw bytes of an SSE body as they arrive (split anywhere: inside a JSON string, between `\\r` and
`\\n`, inside a UTF-8 character) and return `chat.completion.chunk` dicts. Neither server ends its stream with
`[DONE]` (MLServer sends none; Triton's generate_stream neither), so `close()` at end of body adds the final
chunk with a `finish_reason` when the server sent none.

- `InferStreamParser`: `/infer_stream` (MLServer, Seldon's runtimes): every event is a whole inference response,
  with `output_all` (a raw OpenAI chunk) or `role`/`content` tensors (a piece of text).
- `GenerateStreamParser`: `/generate_stream` (Triton, OIP generate): events `{"text_output", "done"?}`.

A failure (an `{"error": …}` event, a malformed one) never swallows the chunks parsed before it in the same
bytes: they are returned first and the failure is raised by the next `feed` or `close`.
"""

from __future__ import annotations

import abc
from typing import Any

from manifold import _json
from manifold.api import upstream
from manifold.api.sse_decoder import SSEDecoder, SSEEvent
from manifold.providers.kserve_v2.translate import (
    OIPFormatError,
    OIPStreamError,
    chunk_from_infer_event,
    chunks_from_generate_event,
)


def _decode(event: SSEEvent) -> Any:
    try:
        return _json.decode(event.data)
    except _json.DecodeError:
        raise OIPFormatError("a stream event is not valid JSON") from None


def _stop_chunk(index: int) -> dict[str, Any]:
    return {"choices": [{"index": index, "delta": {}, "finish_reason": "stop"}]}


class _Parser(abc.ABC):
    __slots__ = ("_error", "_events", "_sse")

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self._sse = SSEDecoder() if max_line_bytes is None else SSEDecoder(max_line_bytes)
        self._events = 0
        self._error: Exception | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._raise_pending()
        out: list[dict[str, Any]] = []
        for event in self._sse.feed(data):
            if event.data == b"[DONE]":
                continue
            try:
                chunks = self._event(_decode(event))
            except (OIPFormatError, OIPStreamError, upstream.UpstreamShapeError) as exc:
                if not out:
                    raise
                self._error = exc
                return out
            self._events += 1
            out.extend(chunks)
        return out

    def close(self) -> list[dict[str, Any]]:
        self._raise_pending()
        self._sse.flush()
        if not self._events:
            raise OIPFormatError("the stream ended before the first response")
        return self._final()

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    @abc.abstractmethod
    def _event(self, event: Any) -> list[dict[str, Any]]:
        """The chunks one server event becomes."""

    @abc.abstractmethod
    def _final(self) -> list[dict[str, Any]]:
        """The chunks that close the stream."""


class InferStreamParser(_Parser):
    __slots__ = ("_choices", "_finished")

    def __init__(self, max_line_bytes: int | None = None) -> None:
        super().__init__(max_line_bytes)
        self._choices: set[int] = set()
        self._finished: set[int] = set()

    def _event(self, event: Any) -> list[dict[str, Any]]:
        chunk = chunk_from_infer_event(event)  # checked: choices are objects, `index` an integer or null
        for choice in chunk.get("choices") or ():
            index = choice.get("index") or 0
            self._choices.add(index)
            if choice.get("finish_reason") is not None:
                self._finished.add(index)
        return [chunk]

    def _final(self) -> list[dict[str, Any]]:
        return [_stop_chunk(i) for i in sorted(self._choices - self._finished)]


class GenerateStreamParser(_Parser):
    __slots__ = ("_done",)

    def __init__(self, max_line_bytes: int | None = None) -> None:
        super().__init__(max_line_bytes)
        self._done = False

    def _event(self, event: Any) -> list[dict[str, Any]]:
        if self._done:
            return []
        chunks, self._done = chunks_from_generate_event(event)
        return chunks

    def _final(self) -> list[dict[str, Any]]:
        return [] if self._done else [_stop_chunk(0)]
