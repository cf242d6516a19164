"""Incremental parsers for the two OIP streams, one instance per request.

Both take the raw bytes of an SSE body as they arrive (split anywhere: inside a JSON string, between `\\r` and
`\\n`, inside a UTF-8 character) and return `chat.completion.chunk` dicts. Neither server ends its stream with
`[DONE]` (MLServer sends none; Triton's generate_stream neither), so `close()` at end of body adds the final
chunk with a `finish_reason` when the server sent none.

- `InferStreamParser`: `/infer_stream` (MLServer, Seldon's runtimes): every event is a whole inference response,
  with `output_all` (a raw OpenAI chunk) or `role`/`content` tensors (a piece of text).
- `GenerateStreamParser`: `/generate_stream` (Triton, OIP generate): events `{"text_output", "done"?}`.
"""

from __future__ import annotations

from typing import Any

from manifold import _json
from manifold.api.sse import SSEDecoder, SSEEvent
from manifold.providers.kserve_v2.translate import (
    OIPFormatError,
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


class InferStreamParser:
    __slots__ = ("_choices", "_events", "_finished", "_sse")

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._events = 0
        self._choices: set[int] = set()
        self._finished: set[int] = set()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out = []
        for event in self._sse.feed(data):
            if event.data == b"[DONE]":
                continue
            chunk = chunk_from_infer_event(_decode(event))
            self._events += 1
            for choice in chunk.get("choices") or ():
                index = choice.get("index", 0)
                self._choices.add(index)
                if choice.get("finish_reason") is not None:
                    self._finished.add(index)
            out.append(chunk)
        return out

    def close(self) -> list[dict[str, Any]]:
        self._sse.flush()
        if not self._events:
            raise OIPFormatError("the stream ended before the first response")
        return [_stop_chunk(i) for i in sorted(self._choices - self._finished)]


class GenerateStreamParser:
    __slots__ = ("_events", "_finished", "_sse")

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._events = 0
        self._finished = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        out = []
        for event in self._sse.feed(data):
            if event.data == b"[DONE]" or self._finished:
                continue
            chunks, last = chunks_from_generate_event(_decode(event))
            self._events += 1
            self._finished = last
            out.extend(chunks)
        return out

    def close(self) -> list[dict[str, Any]]:
        self._sse.flush()
        if not self._events:
            raise OIPFormatError("the stream ended before the first response")
        return [] if self._finished else [_stop_chunk(0)]
