"""A hostile fake upstream on 127.0.0.1: it answers every POST with whatever the current `Script` says, byte
for byte: any status and reason, any content type, JSON of any shape, SSE events of any shape, oversized headers
or lines, a connection reset in the middle, silence.

It runs its own event loop in a thread, so synchronous tests (and hypothesis) drive it: set `upstream.script`
before each request. `GET …/models` (the gateway's readiness probe) always answers 200. Each received request
is recorded (method, path, body) so a test can check what the gateway sent::

    upstream = HostileUpstream().start()
    upstream.script = Script(body=b'{"choices": "hello"}')
    ...                                          # a request through the gateway, at upstream.base_url
    upstream.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field

DONE = b"[DONE]"


@dataclass(frozen=True)
class Script:
    """One answer. With `events` the answer is an SSE stream (each item sent as `data: <item>\\n\\n`, then
    `data: [DONE]` when `done`); otherwise `body` is sent with a Content-Length."""

    status: int = 200
    reason: str = "OK"
    content_type: str = "application/json"
    body: bytes = b"{}"
    events: tuple[bytes, ...] | None = None
    done: bool = True
    headers: tuple[tuple[str, str], ...] = ()
    # Reset (RST) the connection after this many SSE events, or, for a plain body, after half of it.
    reset_after: int | None = None
    # Send the status line and headers, then nothing more until the client gives up.
    stall: bool = False


@dataclass
class Received:
    method: str
    path: str
    body: bytes


@dataclass
class HostileUpstream:
    script: Script = field(default_factory=Script)
    received: list[Received] = field(default_factory=list, repr=False)
    port: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> HostileUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
            self.port = self._server.sockets[0].getsockname()[1]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="hostile-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the hostile upstream did not start")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._server is None:
            return
        server = self._server

        async def shutdown() -> None:
            server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                request = await self._read(reader)
                if request is None:
                    return
                self.received.append(request)
                if request.method == "GET":
                    await self._send_body(writer, Script(body=b'{"object": "list", "data": []}'))
                    continue
                script = self.script
                if not await self._answer(writer, script):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client left, or `stop()` ended a stalled answer
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> Received | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            return None
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        body = await reader.readexactly(length) if length else b""
        return Received(method, path, body)

    def _head(self, script: Script, extra: list[tuple[str, str]]) -> bytes:
        lines = [f"HTTP/1.1 {script.status} {script.reason}", f"Content-Type: {script.content_type}"]
        lines += [f"{k}: {v}" for k, v in (*script.headers, *extra)]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def _send_body(self, writer: asyncio.StreamWriter, script: Script) -> bool:
        body = script.body
        writer.write(self._head(script, [("Content-Length", str(len(body)))]))
        if script.stall:
            await writer.drain()
            await asyncio.sleep(3600)
        if script.reset_after is not None:
            writer.write(body[: len(body) // 2])
            await writer.drain()
            writer.transport.abort()
            return False
        writer.write(body)
        await writer.drain()
        return True

    async def _answer(self, writer: asyncio.StreamWriter, script: Script) -> bool:
        if script.events is None:
            return await self._send_body(writer, script)
        writer.write(self._head(script, [("Transfer-Encoding", "chunked")]))
        if script.stall:
            await writer.drain()
            await asyncio.sleep(3600)
        events = [*script.events, DONE] if script.done else list(script.events)
        for i, data in enumerate(events):
            if script.reset_after is not None and i == script.reset_after:
                await writer.drain()
                writer.transport.abort()
                return False
            frame = b"data: " + data + b"\n\n"
            writer.write(f"{len(frame):x}\r\n".encode() + frame + b"\r\n")
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True
