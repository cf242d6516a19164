"""The HTTP/1.1 connection `manifold serve` runs: uvicorn's httptools protocol, plus the limits it lacks.

uvicorn bounds neither the time a client takes to send a request nor the size of its head: a client that sends
its headers (or its body) one byte at a time, or never finishes them, holds a connection and its memory forever
(slowloris). Here, per request:

- the request line and headers must arrive within `server.header_timeout` seconds of the request's first byte
  (or of the connection's opening), else `408` and the connection is closed;
- the body must arrive within `server.body_timeout` seconds of the headers, else `408` and the connection is
  closed (the application sees the client as gone, so the request's work stops);
- the request line and headers together may not exceed `server.max_header_size` bytes, else `431`.

Each answer is OpenAI's error envelope with `Connection: close`. Done in the protocol, these cost a few float
stores per request and nothing per byte; they apply where `manifold serve` runs the app (an app mounted in another
server has that server's limits).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http import httptools_impl
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
        # When the part of the request now awaited (`_awaiting`: "headers" or "body") is late; None: nothing is.
        # A deadline, not a timer per request: arming and cancelling timers doubled what this class costs;
        # one sweep per process closes what is late (`_Sweeper`).
        self.deadline: float | None = None
        self._awaiting = "headers"
        self._head_size = 0  # bytes of reads that ended inside the current request's head
        self._read_size = 0
        self._rejected = False

    def late(self) -> None:
        """Called by the sweep once the deadline has passed."""
        self.deadline = None
        cycle = self.cycle
        what = self._awaiting
        if what == "headers" and cycle is not None and not cycle.response_complete:
            # A pipelined request's head is waiting behind an answer still being sent: its time starts later.
            self.deadline = self.loop.time() + self.header_timeout
            return
        if what == "body" and cycle is not None and cycle.response_started:
            if cycle.response_complete:
                self.transport.close()  # answered without reading the rest (e.g. a 413): nothing more to wait for
            return
        seconds = self.header_timeout if what == "headers" else self.body_timeout
        self._reject(408, f"The request's {what} did not arrive within {seconds:g} seconds.")

    # -- uvicorn's callbacks (each override is on the hot path: kept to a few attribute writes) -----------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is a slow head too.
        self.deadline = self.loop.time() + self.header_timeout
        _Sweeper.watch(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline = None
        _Sweeper.forget(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return
        self._read_size = len(data)
        super().data_received(data)
        if self._awaiting == "headers" and not self._rejected:
            # The head is still incomplete after this read, so all of it was head: a head sent slowly in
            # pieces is refused as soon as it passes the limit, not once it is complete.
            self._head_size += len(data)
            if self._head_size > self.max_header_size:
                self._reject(431, f"The request's line and headers exceed {self.max_header_size} bytes.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._awaiting = "headers"
        self._head_size = 0
        self.deadline = self.loop.time() + self.header_timeout

    def on_headers_complete(self) -> None:
        if self._rejected:
            return
        # The exact size is summed only when the reads so far could hold a head over the limit.
        if self._head_size + self._read_size > self.max_header_size:
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if size > self.max_header_size:
                self._reject(431, f"The request's line and headers exceed {self.max_header_size} bytes.")
                return
        self._awaiting = "body"
        self.deadline = self.loop.time() + self.body_timeout
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._rejected:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._rejected:
            return
        self.deadline = None
        super().on_message_complete()

    # -- refusing -----------------------------------------------------------------------------------------------

    def _reject(self, status: int, message: str) -> None:
        self._rejected = True
        self.deadline = None
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


class _Sweeper:
    """One timer per process that closes the connections whose request is late, while there are connections."""

    connections: ClassVar[set[GuardedHttpToolsProtocol]] = set()
    timer: ClassVar[asyncio.TimerHandle | None] = None
    loop: ClassVar[asyncio.AbstractEventLoop | None] = None

    @classmethod
    def watch(cls, protocol: GuardedHttpToolsProtocol) -> None:
        cls.connections.add(protocol)
        if cls.timer is None or cls.loop is not protocol.loop:  # (a new loop: a server restarted in-process)
            if cls.timer is not None:
                cls.timer.cancel()
            cls.loop = protocol.loop
            cls.timer = protocol.loop.call_later(cls.interval(), cls.sweep, protocol.loop)

    @classmethod
    def forget(cls, protocol: GuardedHttpToolsProtocol) -> None:
        cls.connections.discard(protocol)

    @staticmethod
    def interval() -> float:
        # A quarter of the shorter limit: a late request is closed at most 25% after its time (at most 1 s).
        shortest = min(GuardedHttpToolsProtocol.header_timeout, GuardedHttpToolsProtocol.body_timeout)
        return min(1.0, max(0.01, shortest / 4))

    @classmethod
    def sweep(cls, loop: asyncio.AbstractEventLoop) -> None:
        cls.timer = None
        now = loop.time()
        for protocol in [p for p in cls.connections if p.deadline is not None and p.deadline <= now]:
            protocol.late()
        if cls.connections:
            cls.timer = loop.call_later(cls.interval(), cls.sweep, loop)


def _client(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "a client"


class _CheckedNames(dict[bytes, Any]):
    """uvicorn's check of a response header's name (`HEADER_RE.search(name)`: a match means invalid), remembered
    by name. An answer's names are a few dozen constants, checked by a regular expression twice per answer each
    (~0.3 us a name, 13 names on an answer with access control on); a name checked before is now a dict lookup
    in C. Unknown names still go through the expression; the memory is bounded (emptied when full). Names must be
    `bytes`, as ASGI says (a `bytearray`, which uvicorn's expression took, is unhashable: a TypeError)."""

    __slots__ = ("pattern", "search")
    KEPT: ClassVar[int] = 4096

    def __init__(self, pattern: Any) -> None:
        super().__init__()
        self.pattern = pattern
        self.search = self.__getitem__  # what uvicorn calls: dict's own lookup, in C (`__missing__` on a miss)

    def __missing__(self, name: bytes) -> Any:
        found = self.pattern.search(name)
        if len(self) >= self.KEPT:
            self.clear()
        self[name] = found
        return found


def _remember_header_names() -> None:
    pattern = httptools_impl.HEADER_RE
    if not isinstance(pattern, _CheckedNames):
        httptools_impl.HEADER_RE = _CheckedNames(pattern)  # type: ignore[assignment]


def configure(settings: ServerSettings) -> None:
    """Apply the `server:` limits to the connections this process serves."""
    GuardedHttpToolsProtocol.header_timeout = settings.header_timeout
    GuardedHttpToolsProtocol.body_timeout = settings.body_timeout
    GuardedHttpToolsProtocol.max_header_size = settings.max_header_size
    _remember_header_names()
