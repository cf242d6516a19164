"""A fake OpenAI-compatible upstream that answers slowly and records, per exchange, when the client went away.

It exists to prove that a client leaving Manifold stops the upstream work (docs/responses.md, "Cancellation"):
every answer takes `duration` seconds (a stream sends one chunk at once, then one every `interval`), and each
exchange notes the `time.monotonic()` at which the gateway closed the connection, or at which the fake finished
answering (the upstream "ran to its end"). `time.monotonic()` is the system's monotonic clock, so a test in another
process compares it with its own readings.

Paths (`/<mode>/v1/...`):

- `drip`: `POST …/chat/completions` and `POST …/completions` answer as above (streamed or not);
- `chat-only`: chat answers at once; `POST …/completions` answers 404 `Not Found` as a server without the route;
- `chat-model`: chat answers at once; `POST …/completions` answers OpenAI's 404 for a chat model
  (`This is a chat model and not supported in the v1/completions endpoint. …`).

`count(path_suffix)` counts the requests whose path ends with it (`/chat/completions` is not a `/completions`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from dataclasses import dataclass
from typing import Any

CHAT_MODEL_MESSAGE = (
    "This is a chat model and not supported in the v1/completions endpoint. Did you mean to use v1/chat/completions?"
)


@dataclass
class Exchange:
    path: str
    body: dict[str, Any]
    started: float
    closed: float | None = None  # the client closed the connection before the answer ended
    finished: float | None = None  # the fake sent its whole answer


class DripUpstream:
    def __init__(self, interval: float = 0.25, duration: float = 5.0) -> None:
        self.interval = interval
        self.duration = duration
        self.exchanges: list[Exchange] = []
        self.port = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def start(self) -> DripUpstream:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(5)
        return self

    async def _astart(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> DripUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def base(self, mode: str = "drip") -> str:
        return f"http://127.0.0.1:{self.port}/{mode}/v1"

    def count(self, suffix: str) -> int:
        with self._lock:
            return sum(1 for ex in self.exchanges if ex.path.endswith(suffix) and not ex.path.endswith("chat" + suffix))

    def last(self) -> Exchange | None:
        with self._lock:
            return self.exchanges[-1] if self.exchanges else None

    def wait_ended(self, exchange: Exchange, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if exchange.closed is not None or exchange.finished is not None:
                return True
            time.sleep(0.002)
        return False

    # -- serving ---------------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False
        lines = head.decode("latin-1").split("\r\n")
        _, path, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = json.loads(await reader.readexactly(length)) if length else {}
        exchange = Exchange(path, body, time.monotonic())
        with self._lock:
            self.exchanges.append(exchange)
        # The gateway sends nothing more during an answer: EOF on the socket means it closed the connection.
        gone = asyncio.ensure_future(reader.read(1))
        try:
            answer = asyncio.ensure_future(self._answer(exchange, writer))
            done, _ = await asyncio.wait((gone, answer), return_when=asyncio.FIRST_COMPLETED)
            if answer in done:
                answer.result()
                exchange.finished = time.monotonic()
                return True
            exchange.closed = time.monotonic()
            answer.cancel()
            return False
        finally:
            gone.cancel()
            await asyncio.gather(gone, return_exceptions=True)

    async def _answer(self, ex: Exchange, writer: asyncio.StreamWriter) -> None:
        mode = ex.path.split("/")[1]
        legacy = ex.path.endswith("/completions") and not ex.path.endswith("/chat/completions")
        if legacy and mode == "chat-only":
            return await _send_json(writer, 404, {"detail": "Not Found"})
        if legacy and mode == "chat-model":
            error = {"message": CHAT_MODEL_MESSAGE, "type": "invalid_request_error", "param": "model", "code": None}
            return await _send_json(writer, 404, {"error": error})
        slow = mode == "drip"
        if ex.body.get("stream"):
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            steps = int(self.duration / self.interval) if slow else 1
            for i in range(steps):
                if i:
                    await asyncio.sleep(self.interval)
                await _send_chunk(writer, b"data: " + json.dumps(_chunk(legacy, f"w{i} ")).encode() + b"\n\n")
            await _send_chunk(writer, b"data: " + json.dumps(_chunk(legacy, "", "stop")).encode() + b"\n\n")
            await _send_chunk(writer, b"data: [DONE]\n\n")
            await _send_chunk(writer, b"")
            return None
        if slow:
            await asyncio.sleep(self.duration)
        return await _send_json(writer, 200, _completion(legacy))


def _chunk(legacy: bool, text: str, finish: str | None = None) -> dict[str, Any]:
    if legacy:
        choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
        return {"id": "cmpl-drip", "object": "text_completion", "created": 1, "model": "drip", "choices": [choice]}
    delta = {"content": text} if text else {}
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return {
        "id": "chatcmpl-drip",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "drip",
        "choices": [choice],
    }


def _completion(legacy: bool) -> dict[str, Any]:
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    if legacy:
        choice: dict[str, Any] = {"index": 0, "text": "native", "logprobs": None, "finish_reason": "stop"}
        return {
            "id": "cmpl-drip",
            "object": "text_completion",
            "created": 1,
            "model": "drip",
            "choices": [choice],
            "usage": usage,
        }
    message = {"role": "assistant", "content": "chatted"}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return {
        "id": "chatcmpl-drip",
        "object": "chat.completion",
        "created": 1,
        "model": "drip",
        "choices": [choice],
        "usage": usage,
    }


async def _send_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


async def _send_json(writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
    body = json.dumps(obj).encode()
    reason = {200: "OK", 404: "Not Found"}[status]
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError):
        await writer.drain()
