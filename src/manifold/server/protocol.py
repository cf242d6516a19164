"""The HTTP/1.1 connection `manifold serve` runs: uvicorn's httptools protocol, plus the limits it lacks.

uvicorn bounds neither the time a client takes to send a request nor the size of its head: a client that sends
its headers (or its body) one byte at a time, or never finishes them, holds a connection and its memory forever
(slowloris). Here, per request:

- the request line and headers must arrive within `server.header_timeout` seconds of the request's first byte
  (or of the connection's opening), else `408` and the connection is closed;
- the body must arrive within `server.body_timeout` seconds of the headers, else `408` and the connection is
  closed (the application sees the client as gone, so the request's work stops);
- the request line and headers together may not exceed `server.max_header_size` bytes, else `431`.

Each answer is OpenAI's error envelope with `Connection: close`. Done in the protocol, these cost one timer
per request and nothing per byte; they apply where `manifold serve` runs the app (an app mounted in another
server has that server's limits).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from manifold import _json
from manifold.config import ServerSettings

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
_DEFAULTS = ServerSettings()


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    # Class attributes, set once per process by `configure` (uvicorn builds one protocol per connection from
    # the class alone, and a worker process gets the class by reference).
    header_timeout: ClassVar[float] = _DEFAULTS.header_timeout
    body_timeout: ClassVar[float] = _DEFAULTS.body_timeout
    max_header_size: ClassVar[int] = _DEFAULTS.max_header_size

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timer: asyncio.TimerHandle | None = None
        self._head_size = 0
        self._rejected = False

    # -- timers -----------------------------------------------------------------------------------------------

    def _arm(self, seconds: float, what: str) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, self._expired, what)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self, what: str) -> None:
        self._timer = None
        cycle = self.cycle
        if what == "headers" and cycle is not None and not cycle.response_complete:
            # A pipelined request's head is waiting behind an answer still being sent: its time starts later.
            self._arm(self.header_timeout, what)
            return
        if what == "body" and cycle is not None and cycle.response_started:
            if cycle.response_complete:
                self.transport.close()  # answered without reading the rest (e.g. a 413): nothing more to wait for
            return
        seconds = self.header_timeout if what == "headers" else self.body_timeout
        self._reject(408, f"The request's {what} did not arrive within {seconds:g} seconds.")

    # -- uvicorn's callbacks ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, "headers")  # a connection that never sends a byte is a slow head too

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._rejected:
            super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0
        self._arm(self.header_timeout, "headers")

    def on_url(self, url: bytes) -> None:
        if self._grow(len(url)):
            super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._grow(len(name) + len(value) + 4):
            super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self._rejected:
            return
        self._arm(self.body_timeout, "body")
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._rejected:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        self._disarm()
        super().on_message_complete()

    # -- refusing -----------------------------------------------------------------------------------------------

    def _grow(self, size: int) -> bool:
        """Count bytes of the request head; False once it is over the limit (and the request refused)."""
        if self._rejected:
            return False
        self._head_size += size
        if self._head_size <= self.max_header_size:
            return True
        self._reject(431, f"The request's line and headers exceed {self.max_header_size} bytes.")
        return False

    def _reject(self, status: int, message: str) -> None:
        self._rejected = True
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # The application is still at this request (a slow body): it sees the client as gone and stops.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        if self.transport.is_closing():
            return
        code = "request_timeout" if status == 408 else "request_header_fields_too_large"
        body = _json.encode(
            {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        )
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
            % (status, _REASONS[status], len(body))
            + body
        )
        self.transport.close()
        self.logger.info("%s: %s (answered %d)", _client(self.client), message, status)


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


def configure(settings: ServerSettings) -> None:
    """Apply the `server:` limits to the connections this process serves."""
    GuardedHttpToolsProtocol.header_timeout = settings.header_timeout
    GuardedHttpToolsProtocol.body_timeout = settings.body_timeout
    GuardedHttpToolsProtocol.max_header_size = settings.max_header_size
