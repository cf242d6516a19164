"""Server-Sent Events at the edge: framing, keep-alive comments, `[DONE]`, and errors after the 200.

Chunks stay dicts until here and are encoded once. Before the first chunk a `:` comment is sent every
`keepalive_interval` seconds so proxies do not cut a slow model; comments are the one keep-alive both SDKs ignore
(an `event: ping` without JSON data would break them). Once the 200 is sent, a failure can only be reported in
the stream: one `data: {"error": {...}}` event, then the stream ends (both SDKs raise `APIError` on it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from manifold import _json
from manifold.errors import ManifoldError
from manifold.server.asgi import Request, body_send

log = logging.getLogger("manifold.stream")

DONE = b"data: [DONE]\n\n"
KEEPALIVE = b": keep-alive\n\n"
SSE_CONTENT_TYPE = b"text/event-stream; charset=utf-8"
T = TypeVar("T")


class StreamShaper(Protocol):
    """Per-stream state that makes upstream chunks exact (chat: `ChunkShaper`; legacy completions:
    `TextChunkShaper`)."""

    def shape(self, chunk: dict[str, Any]) -> dict[str, Any] | None:
        """The chunk to send, or None when nothing of it is left for the client."""

    def usage_chunk(self) -> dict[str, Any] | None:
        """The final `choices: []` chunk with the usage, when the client asked for it."""


def frame(obj: Any) -> bytes:
    return b"data: " + _json.encode(obj) + b"\n\n"


class EventStream:
    """The response side of one SSE stream: commits headers once and writes frames."""

    __slots__ = ("committed", "request", "send_body")

    def __init__(self, request: Request) -> None:
        self.request = request
        self.committed = False
        self.send_body = request.send  # until the response has started (`commit`)

    async def commit(self) -> None:
        if not self.committed:
            self.committed = True
            headers = self.request.base_headers(SSE_CONTENT_TYPE)
            headers.append((b"cache-control", b"no-cache"))
            headers.append((b"x-accel-buffering", b"no"))
            await self.request.send({"type": "http.response.start", "status": 200, "headers": headers})
            self.send_body = body_send(self.request)

    async def write(self, data: bytes) -> None:
        await self.send_body({"type": "http.response.body", "body": data, "more_body": True})

    async def end(self, data: bytes = b"") -> None:
        await self.send_body({"type": "http.response.body", "body": data, "more_body": False})


async def stream_chat(
    request: Request,
    open_stream: Callable[[], Awaitable[AsyncIterator[dict[str, Any]]]],
    shaper: StreamShaper,
    keepalive_interval: float,
    before_done: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Open the upstream stream, then relay shaped chunks. Errors before the 200 propagate (the caller answers
    with a status); after it they become one error event. `before_done` runs after the last chunk and before
    `[DONE]` (storing the completion): the client is told the stream completed only once it has returned."""
    out = EventStream(request)
    stream: AsyncIterator[dict[str, Any]] | None = None
    pending: list[bytes] = []  # frames held back to be written together; still sent if the stream then fails
    try:
        stream = await _next_with_keepalive(out, open_stream(), keepalive_interval)
        assert stream is not None
        iterator = aiter(stream)
        first = await _next_with_keepalive(out, anext(iterator, None), keepalive_interval)
        await out.commit()
        if first is not None:
            # Chunks that arrived together (one upstream read) go out in one write.
            buffered = getattr(stream, "buffered", None)
            shaped = shaper.shape(first)
            if shaped is not None:
                pending.append(frame(shaped))
            while True:
                if pending and (buffered is None or not buffered()):
                    await out.write(pending[0] if len(pending) == 1 else b"".join(pending))
                    pending.clear()
                try:
                    chunk = await anext(iterator)
                except StopAsyncIteration:
                    break
                shaped = shaper.shape(chunk)
                if shaped is not None:
                    pending.append(frame(shaped))
            if pending:
                await out.write(b"".join(pending))
        if before_done is not None:
            await before_done()
        usage = shaper.usage_chunk()
        await out.end((frame(usage) + DONE) if usage is not None else DONE)
    except ManifoldError as exc:
        if not out.committed:
            raise
        log.warning("stream %s failed after the first byte: %s", request.request_id, exc.message)
        await out.end(b"".join(pending) + frame(exc.to_dict()))
    finally:
        if stream is not None:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:
                await aclose()


def event_frame(event: dict[str, Any]) -> bytes:
    """A typed event (the Responses API): `event: <type>` + `data: <json>`; no `[DONE]` follows the last."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + _json.encode(event) + b"\n\n"


class _Keepalive:
    """A `:` comment every `interval` seconds from a timer until `cancel`. An object, not closures: a timer
    callback naming itself makes a closure cell that holds its own function, a reference cycle that would keep
    the stream (and through it the whole request) alive until the cyclic collector ran."""

    __slots__ = ("handle", "interval", "loop", "out", "writes")

    def __init__(self, out: EventStream, interval: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.out = out
        self.interval = interval
        self.writes: list[asyncio.Task[None]] = []
        self.handle = self.loop.call_later(interval, self.fire)

    def fire(self) -> None:
        writes = self.writes
        if not writes or writes[-1].done():
            writes.append(self.loop.create_task(self.write()))
        self.handle = self.loop.call_later(self.interval, self.fire)

    async def write(self) -> None:
        await self.out.commit()
        await self.out.write(KEEPALIVE)

    async def drop_writes(self) -> None:
        # A comment still waiting for its turn is dropped, so that it cannot follow the next frame or the end.
        for write in self.writes:
            write.cancel()
        await asyncio.gather(*self.writes, return_exceptions=True)
        self.writes.clear()


async def _next_with_keepalive(out: EventStream, step: Awaitable[T], interval: float) -> T:
    """`await step`, with a `:` comment every `interval` seconds meanwhile. The comments come from a timer, not
    from a task wrapped around the step: the step runs in the caller's task, so when it is done the caller
    goes on at once (a task and `asyncio.wait` cost three turns of the event loop where a plain await costs
    one, and on a busy loop each turn is waited for); a client that leaves cancels the caller, and with it
    the step."""
    keepalive = _Keepalive(out, interval)
    try:
        return await step
    finally:
        keepalive.handle.cancel()
        if keepalive.writes:
            await keepalive.drop_writes()


async def stream_events(request: Request, events: AsyncIterator[dict[str, Any]], keepalive_interval: float) -> None:
    """Relay typed events. The first is awaited before the 200 is sent, so an error before it still gets its
    status; a failure after it becomes one `error` event (`{type, code, message, param, sequence_number}`).
    While an event is awaited, a `:` comment goes out every `keepalive_interval` seconds.

    Events that are ready together (`events.buffered()`, where the iterator has it: a response's events built
    from one upstream read) are taken without a wait and go out in one write; the frames are the same."""
    out = EventStream(request)
    iterator = aiter(events)
    buffered: Callable[[], bool] | None = getattr(iterator, "buffered", None)
    next_sequence = 0
    frames: list[bytes] = []  # ready frames held back to be written together; still sent if the stream then fails
    try:
        while True:
            if buffered is not None and buffered():
                event = await anext(iterator, None)
            else:
                if frames:
                    await out.write(frames[0] if len(frames) == 1 else b"".join(frames))
                    frames.clear()
                event = await _next_with_keepalive(out, anext(iterator, None), keepalive_interval)
            await out.commit()
            if event is None:
                break
            next_sequence = int(event.get("sequence_number", next_sequence)) + 1
            frames.append(event_frame(event))
        await out.end(b"".join(frames))
    except ManifoldError as exc:
        if not out.committed:
            raise
        log.warning("stream %s failed after the first byte: %s", request.request_id, exc.message)
        error = {
            "type": "error",
            "code": exc.code,
            "message": exc.message,
            "param": exc.param,
            "sequence_number": next_sequence,
        }
        await out.end(b"".join(frames) + event_frame(error))
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()
