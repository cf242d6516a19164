"""A small pipelined Redis connection for the admission's scripts: RESP over one asyncio connection, replies
parsed by `hiredis` (Redis's own C parser).

Why not redis-py's asyncio client: its per-command machinery (connection pool, retries, command packing and
parsing in Python) costs 150-400 µs of CPU per command, several times Manifold's whole budget for a request;
this costs 10-50 µs. Commands issued in one turn of the event loop are written with one system call; replies
come back in order on the one connection, so each is matched to its waiter by position. A lost connection fails
every waiter (with `ConnectionError`) and the next command connects again.

URLs: `redis://[[user]:password@]host[:port][/db]`, `rediss://…` (TLS) and `unix:///path/to/socket[?db=N]`.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from abc import ABC, abstractmethod
from collections import deque
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis

__all__ = ["Detached", "RespConnection", "RespError"]


class RespError(Exception):
    """An error reply (`NOSCRIPT …`, `WRONGTYPE …`)."""


def _pack(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        out.append(bulk(a))
    return b"".join(out)


def bulk(value: Any) -> bytes:
    """One argument of a command, as RESP writes it (a caller may build a command's frame from these)."""
    b = value if isinstance(value, bytes) else str(value).encode()
    return b"$%d\r\n%b\r\n" % (len(b), b)


def array_header(count: int) -> bytes:
    return b"*%d\r\n" % count


class Detached(ABC):
    """A command whose reply nobody awaits (`_Protocol.send_detached`): told only of a failure, by `failed`, from
    the connection's own callbacks. Where a future per command cost its creation, a done-callback and a turn of
    the event loop to run that callback when the reply came. A subclass says what a failure does."""

    __slots__ = ()

    @abstractmethod
    def failed(self, exc: BaseException) -> None:
        """The command's reply was an error, or the connection was lost or late before it came."""

    # What `_Protocol._fail` asks of whatever waits.
    def done(self) -> bool:
        return False

    def set_exception(self, exc: BaseException) -> None:
        self.failed(exc)


class _Protocol(asyncio.Protocol):
    """Replies come back in order, so the oldest command waiting is the one late first: one timer per
    connection (armed for the oldest command's deadline) bounds every wait, where a timeout around each call
    cost a timer handle armed and cancelled per command. A command that outlives `timeout_s` fails the
    connection: every waiter gets `TimeoutError`, and the next command connects again."""

    def __init__(self, timeout_s: float) -> None:
        self.reader = hiredis.Reader()
        self.waiting: deque[asyncio.Future[Any] | Detached] = deque()
        self.deadlines: deque[float] = deque()  # loop time by which each waiting command must be answered
        self.timeout_s = timeout_s
        self.watchdog: asyncio.TimerHandle | None = None
        self.transport: Any = None  # an asyncio or uvloop transport (uvloop's are not asyncio.Transport)
        self.buffer: list[bytes] = []
        self.lost = False
        # The loop it was made in (`asyncio.get_running_loop()` per command is a getpid system call on 3.11).
        self.loop = asyncio.get_running_loop()
        self.future_type = type(self.loop.create_future())  # what `send_frame` waits with (else: `Detached`)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        waiting = self.waiting
        while True:
            reply = reader.gets()
            if reply is False:
                return
            if not waiting:  # a reply nobody waits for: the stream is out of step, start again
                self._fail(ConnectionError("Redis sent an unexpected reply"))
                return
            future = waiting.popleft()
            self.deadlines.popleft()
            if future.__class__ is not self.future_type:  # detached: only an error is told
                if isinstance(reply, hiredis.ReplyError):
                    future.failed(RespError(str(reply)))  # type: ignore[union-attr]
                continue
            if future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(RespError(str(reply)))
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError("the connection to Redis was lost"))

    def _fail(self, exc: Exception) -> None:
        self.lost = True
        if self.watchdog is not None:
            self.watchdog.cancel()
            self.watchdog = None
        self.deadlines.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        if self.transport is not None:
            self.transport.abort()

    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        return self.send_frame(_pack(args))

    def send_frame(self, frame: bytes, at_once: bool = False) -> asyncio.Future[Any]:
        """Queue a command (written with the others of this turn of the event loop), or with `at_once` write
        it now, after those queued before it: it is in Redis's socket before the caller writes anything else."""
        future: asyncio.Future[Any] = self.loop.create_future()
        if self.lost:
            future.set_exception(ConnectionError("the connection to Redis was lost"))
            return future
        self._wait_for(future)
        if at_once:
            self.buffer.append(frame)
            self._flush()
        else:
            if not self.buffer:
                self.loop.call_soon(self._flush)
            self.buffer.append(frame)
        return future

    def send_detached(self, frame: bytes, waiter: Detached) -> None:
        """Write a command now (after those queued before it) whose reply nobody awaits: `waiter.failed` is
        called with the error if its reply is one, or if the connection is lost or late before it comes (at
        once when the connection is lost already)."""
        if self.lost:
            waiter.failed(ConnectionError("the connection to Redis was lost"))
            return
        self._wait_for(waiter)
        self.buffer.append(frame)
        self._flush()

    def _wait_for(self, waiter: asyncio.Future[Any] | Detached) -> None:
        """`waiter` is next in line for a reply, due within `timeout_s` (the watchdog armed if it is not)."""
        loop = self.loop
        deadline = loop.time() + self.timeout_s
        self.waiting.append(waiter)
        self.deadlines.append(deadline)
        if self.watchdog is None:
            self.watchdog = loop.call_at(deadline, self._check)

    def _check(self) -> None:
        self.watchdog = None
        if not self.deadlines:
            return
        loop = self.loop
        oldest = self.deadlines[0]
        if oldest <= loop.time():
            self._fail(TimeoutError(f"Redis did not answer within {self.timeout_s:g} s"))
        else:
            self.watchdog = loop.call_at(oldest, self._check)

    def _flush(self) -> None:
        if not self.buffer:  # written already by an `at_once` command
            return
        data = b"".join(self.buffer)
        self.buffer = []
        if self.transport is not None and not self.lost:
            try:
                self.transport.write(data)
            except Exception as exc:  # noqa: BLE001 - a transport closing under us: every waiter fails cleanly
                self._fail(ConnectionError(f"writing to Redis failed ({type(exc).__name__})"))


class RespConnection:
    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        self.timeout = timeout_s
        self.tls = parts.scheme == "rediss"
        self.path = parts.path if parts.scheme == "unix" else None
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        if parts.scheme == "unix":
            self.db = int(parse_qs(parts.query).get("db", ["0"])[0])
        else:
            self.db = int(parts.path.lstrip("/") or 0)
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            protocol = self._protocol
            if protocol is not None and not protocol.lost:
                return protocol
            loop = asyncio.get_running_loop()
            async with asyncio.timeout(self.timeout):
                make = functools.partial(_Protocol, self.timeout)
                if self.path is not None:
                    _, protocol = await loop.create_unix_connection(make, self.path)
                else:
                    context = ssl.create_default_context() if self.tls else None
                    _, protocol = await loop.create_connection(make, self.host, self.port, ssl=context)
                setup: list[asyncio.Future[Any]] = []
                if self.password is not None:
                    auth = ("AUTH", self.user, self.password) if self.user else ("AUTH", self.password)
                    setup.append(protocol.send(auth))
                if self.db:
                    setup.append(protocol.send(("SELECT", self.db)))
                for future in setup:
                    await future
            self._protocol = protocol
            return protocol

    def ready(self) -> _Protocol | None:
        """The connection when it is up (a command can be sent without awaiting a connect), else None."""
        protocol = self._protocol
        return None if protocol is None or protocol.lost else protocol

    async def call(self, *args: Any) -> Any:
        return await self.call_frame(_pack(args))

    async def call_frame(self, frame: bytes) -> Any:
        """A command already packed (`array_header` and `bulk` pieces): what `call` sends, without packing.
        Bounded by the connection's timer (`_Protocol`): `TimeoutError` after `timeout_s`."""
        protocol = self._protocol
        if protocol is None or protocol.lost:
            protocol = await self._connect()
        return await protocol.send_frame(frame)

    async def aclose(self) -> None:
        protocol = self._protocol
        self._protocol = None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
