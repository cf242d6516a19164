"""A small HTTP/1.1 client for upstream calls: a keep-alive pool, the httptools parser, one write per request.

Why not aiohttp's client: measured on the same machine against the same fake upstream, aiohttp spends about
0.16-0.24 ms of CPU per request (request objects, header multidicts, cookie jar, payload wrappers, timers);
this client spends about 0.02-0.03 ms (bench/README.md). A gateway pays that on every request, so the transport
is kept to what upstream calls need:

- HTTP/1.1 over TCP or TLS, keep-alive, a bounded number of connections per upstream (callers wait for one);
- bodies with Content-Length, chunked, or delimited by the connection closing; gzip/deflate decoded;
- a read timeout on every silent gap (waiting for headers, between two body reads), a connect timeout;
- a connection whose response was not read to its end is closed, never reused (that is what cancels an
  upstream generation when a client leaves);
- a request is sent again (once, on a fresh connection) only when the reused connection provably did not
  deliver it: it failed while the request was still being written, or it was already closing when the request
  was about to go out. A connection that breaks after the whole request went out is an error, never a re-send:
  an LLM call answers nothing until it is done, so the upstream may have worked on it (and billed it);
- limits on what an upstream may send: the response head (bytes and header count), the body after decoding
  (a small gzip body can expand to gigabytes), and a bounded wait for a pooled connection;
- header values with CR, LF or NUL, or outside latin-1, never reach the wire (`InvalidHeader`);
- an HTTP proxy: plain requests in absolute form, https through a CONNECT tunnel (`proxy.py`).

Errors are `TransportError` subclasses; `providers/upstream_http.py` maps them to 502/504 (429 for `PoolTimeout`).
`Transport` and `Response` are the seam `UpstreamSession` talks to: this client is the default, `httpx_transport`
is the other one, and tests may bring their own.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
import zlib
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Protocol
from urllib.parse import urlsplit

import httptools

from manifold.providers import proxy as proxies

DEFAULT_MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_HEADERS = 256
DEFAULT_MAX_BODY_BYTES = 128 * 1024 * 1024


class TransportError(Exception):
    """Base of every failure to get a complete HTTP answer."""


class ConnectError(TransportError):
    """The connection could not be opened (refused, unreachable, TLS failure)."""


class ConnectTimeout(ConnectError, TimeoutError):
    pass


class ReadTimeout(TransportError, TimeoutError):
    """The upstream stayed silent longer than the read timeout."""


class Disconnected(TransportError):
    """The connection closed or broke before the answer was complete."""


class ProtocolError(TransportError):
    """The upstream's bytes are not valid HTTP/1.1."""


class ResponseTooLarge(TransportError):
    """The response exceeds a limit (head size, header count, decoded body size); the message names which."""


class PoolTimeout(TransportError, TimeoutError):
    """Every connection of the pool stayed busy for longer than the pool timeout."""


class InvalidHeader(ValueError):
    """A request header that cannot be sent as it is (CR, LF or NUL in it, or not latin-1); `name` says which."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"header {name!r}: {why}")
        self.name = name


def header_problem(name: str, value: str) -> str | None:
    """Why `name: value` cannot go on the wire, or None when it can."""
    if not name or any(c in name for c in _NOT_IN_NAMES):
        return "not a valid header name"
    if "\r" in value or "\n" in value or "\0" in value:
        return "contains a line break or NUL (header injection)"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "contains characters outside latin-1"
    return None


_NOT_IN_NAMES = frozenset(' \t\r\n\0:()<>@,;\\"/[]?={}')


class Response(Protocol):
    """One upstream response, as a transport hands it to `UpstreamSession`."""

    status: int
    headers: dict[str, str]  # lower-case names
    read_timeout: float | None  # None: the transport's; set to bound a stream's gaps differently
    resends: int  # how many times the request went out again on a fresh connection

    @property
    def content_type(self) -> str: ...
    @property
    def has_buffered(self) -> bool: ...
    @property
    def complete(self) -> bool: ...
    async def read(self) -> bytes: ...
    async def next_chunk(self) -> bytes | None: ...
    def release(self) -> None: ...
    def close(self) -> None: ...


class Transport(Protocol):
    """Requests to one origin. `target` is the path and query; `headers` are sent as given."""

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> Response: ...

    async def aclose(self) -> None: ...


_HIGH_WATER = 1 << 20  # pause reading from an upstream that runs this far ahead of its consumer
_LOW_WATER = 1 << 18


class HTTPResponse:
    """One response. Read it with `read()` or `iter_chunks()`; `release()` (or `close()`) when done."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_conn",
        "_decoder",
        "_done",
        "_error",
        "_max_body",
        "_received",
        "_released",
        "_streaming",
        "_waiter",
        "headers",
        "read_timeout",
        "resends",
        "status",
    )

    def __init__(self, conn: _Connection) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._released = False
        self._streaming = False  # read piece by piece: apply backpressure to the upstream
        self._decoder: Any = None
        self.read_timeout: float | None = None  # None: the connection's; set to bound a stream's gaps differently
        self.resends = 0
        self._received = 0  # body bytes after decoding
        self._max_body = conn.pool.max_body_bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    # -- fed by the connection -------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        if self._decoder is not None:
            if self._error is not None:
                return
            # Never more than the limit allows out of one piece: a gzip bomb stops here, not in memory.
            data = self._decoder.decompress(data, self._max_body - self._received + 1)
            self._received += len(data)
            if self._decoder.unconsumed_tail or self._received > self._max_body:
                self._conn._fail(self._too_large())
                return
            if not data:
                return
        self._chunks.append(data)
        self._buffered += len(data)
        if self._streaming:
            # Read piece by piece: backpressure bounds what is held (and `_received` what was decoded).
            if self._buffered > _HIGH_WATER:
                self._conn.pause()
        elif self._buffered > self._max_body:  # a whole body, held until read() joins it
            self._conn._fail(self._too_large())
            return
        self._wake()

    def _too_large(self) -> ResponseTooLarge:
        return ResponseTooLarge(f"a response body larger than {self._max_body} bytes (limits.max_body_bytes)")

    def _finish(self) -> None:
        if self._error is not None:
            return  # failed (a limit) while the parser still held the rest of the message: never complete
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self._done = True
        self._wake()

    def _fail(self, exc: BaseException) -> None:
        if not self._done and self._error is None:  # the first cause is the one to report
            self._error = exc
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    # -- consumed by the caller ------------------------------------------------------------------------------

    async def _wait(self) -> None:
        loop = self._conn.loop
        waiter = self._waiter = loop.create_future()
        timeout = self.read_timeout if self.read_timeout is not None else self._conn.read_timeout
        timer = loop.call_later(timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            self._error = ReadTimeout("the upstream stopped sending")
            waiter.set_result(None)

    async def read(self) -> bytes:
        """The whole body; the connection then goes back to the pool."""
        try:
            while not self._done:
                if self._error is not None:
                    raise self._error
                await self._wait()
            if self._error is not None and not self._done:
                raise self._error
            body = b"".join(self._chunks)
            self._chunks.clear()
            return body
        finally:
            self.release()

    @property
    def has_buffered(self) -> bool:
        """Whether body bytes have arrived that were not read yet."""
        return bool(self._chunks)

    @property
    def complete(self) -> bool:
        return self._done and self._error is None

    async def next_chunk(self) -> bytes | None:
        """The next piece of the body as it arrives; None at its end (the connection then goes back to the
        pool). On failure the error is raised and the connection closed."""
        self._streaming = True
        try:
            while not self._chunks:
                if self._done:
                    self.release()
                    return None
                if self._error is not None:
                    raise self._error
                await self._wait()
        except BaseException:
            self.close()
            raise
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._buffered < _LOW_WATER:
            self._conn.resume()
        return chunk

    async def iter_chunks(self) -> AsyncGenerator[bytes, None]:
        """Body bytes as they arrive. Stopping early closes the connection."""
        try:
            while (chunk := await self.next_chunk()) is not None:
                yield chunk
        finally:
            self.release()

    def release(self) -> None:
        """Give the connection back if the body was read to its end, else close it."""
        if self._released:
            return
        self._released = True
        if self._done and self._error is None:
            self._conn.response_finished()
        else:
            self._conn.abort()

    def close(self) -> None:
        if not self._released:
            self._released = True
            self._conn.abort()


class _Connection(asyncio.Protocol):
    """One TCP/TLS connection, parsing responses with httptools."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.read_timeout = pool.read_timeout
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.response: HTTPResponse | None = None
        self.headers_waiter: asyncio.Future[None] | None = None
        self.received_any = False
        self.closed = False
        self.holds_permit = False  # this connection carries a request: it holds one of the pool's permits
        self.keep_alive = True
        self.interim = False  # parsing a 1xx informational response, which a client skips (RFC 9110 15.2)
        self.message_done = False
        self.idle_since = 0.0
        self.writing = False  # bytes of the request are still in our send buffer, not yet with the kernel
        self.undelivered = False  # it broke before the whole request left us: nothing can have acted on it
        self.head_bytes = 0  # bytes of response heads received for the current request
        self.repeated_headers = 0
        self._paused = False

    # -- asyncio.Protocol ------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # High-water mark 0: pause_writing() is called whenever a write leaves bytes behind, and resume_writing()
        # once they all reached the kernel. That is how we know whether a request was written in full.
        transport.set_write_buffer_limits(0)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.writing = True

    def resume_writing(self) -> None:
        self.writing = False

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.response is None or self.closed:
            # Bytes nobody asked for (on an idle connection): this connection is no longer trustworthy.
            self.abort()
            return
        if self.message_done:
            self.keep_alive = False  # more than the one response we asked for
            return
        if self.headers_waiter is not None:  # still set while 1xx interim heads arrive
            # Bound what httptools buffers for a head: everything before this read was head, all of it.
            if self.head_bytes > self.pool.max_header_bytes:
                self._fail(self._head_too_large())
                return
            self.head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(ProtocolError("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            if not self.closed:
                self._fail(ProtocolError(f"invalid HTTP from the upstream: {exc}"))

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.writing and not self.received_any:
            self.undelivered = True
        self.closed = True
        response = self.response
        if response is not None and not response._done:
            if self.headers_waiter is None and not self._has_length() and exc is None:
                # A body delimited by the connection closing: complete only on a clean close, never on a reset.
                response._finish()
            else:
                what = "reset" if exc is not None else "closed"
                response._fail(Disconnected(f"the upstream {what} the connection before the body was complete"))
        self._resolve_headers(Disconnected("the upstream closed the connection before answering"))
        self.pool._forget(self)

    # -- httptools callbacks ---------------------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        response = self.response
        if response is not None and not self.message_done and not self.interim and not self.closed:
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            previous = response.headers.get(key)
            if previous is None:
                response.headers[key] = text
                return
            # A repeated name is joined to the first; bound how many, or a head of one name repeated thousands of
            # times would cost quadratic time in the joining.
            self.repeated_headers += 1
            if self.repeated_headers > self.pool.max_headers:
                self._fail(ResponseTooLarge(f"more than {self.pool.max_headers} response headers (limits.max_headers)"))
                return
            response.headers[key] = f"{previous}, {text}"

    def on_message_begin(self) -> None:
        if self.message_done:
            # Bytes after the response we asked for: never part of it, and the connection is not reusable.
            self.keep_alive = False

    def on_headers_complete(self) -> None:
        response = self.response
        if response is None or self.message_done or self.closed:
            return
        if self.head_bytes > self.pool.max_header_bytes and self.parser.get_status_code() >= 200:
            # The read that completed the head may hold body bytes too: measure the head itself.
            head = sum(len(k) + len(v) + 4 for k, v in response.headers.items())
            if head > self.pool.max_header_bytes:
                self._fail(self._head_too_large())
                return
        if len(response.headers) > self.pool.max_headers:
            # Counted once the head is complete: its size was bounded while it arrived (repeated names are
            # joined into one entry, and count against the size limit instead).
            self._fail(ResponseTooLarge(f"more than {self.pool.max_headers} response headers (limits.max_headers)"))
            return
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self.interim = True
            response.headers = {}
            return
        response.status = status
        self.keep_alive = self.parser.should_keep_alive()
        encoding = response.headers.get("content-encoding", "").lower()
        if encoding in ("gzip", "deflate", "x-gzip"):
            response._decoder = zlib.decompressobj(47)  # 32 + 15: gzip or zlib header, detected
        self._resolve_headers(None)

    def _head_too_large(self) -> ResponseTooLarge:
        return ResponseTooLarge(
            f"response headers larger than {self.pool.max_header_bytes} bytes (limits.max_header_bytes)"
        )

    def on_body(self, body: bytes) -> None:
        if self.response is not None and not self.message_done and not self.interim:
            self.response._feed(body)

    def on_message_complete(self) -> None:
        if self.interim:
            self.interim = False
            return
        if self.response is not None and not self.message_done:
            self.message_done = True
            self.response._finish()

    # -- helpers ---------------------------------------------------------------------------------------------

    def _has_length(self) -> bool:
        response = self.response
        if response is None:
            return True
        h = response.headers
        return "content-length" in h or "chunked" in h.get("transfer-encoding", "").lower()

    def _resolve_headers(self, exc: BaseException | None) -> None:
        waiter = self.headers_waiter
        if waiter is not None:
            self.headers_waiter = None
            if not waiter.done():
                if exc is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(exc)

    def _fail(self, exc: BaseException) -> None:
        if self.response is not None:
            self.response._fail(exc)
        self._resolve_headers(exc)
        self.abort()

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.closed:
            self._paused = False
            self.transport.resume_reading()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()
        self.pool._forget(self)

    def response_finished(self) -> None:
        self.response = None
        self.resume()
        if self.keep_alive and not self.closed:
            self.parser = httptools.HttpResponseParser(self)
            self.pool._put_back(self)
        else:
            self.abort()

    async def send(self, data: bytes) -> HTTPResponse:
        """Write one request and wait for its response headers."""
        transport = self.transport
        assert transport is not None
        if self.closed or transport.is_closing():
            self.undelivered = True  # closing before a byte of this request went out
            self.abort()
            raise Disconnected("the upstream closed the connection")
        response = self.response = HTTPResponse(self)
        self.received_any = False
        self.message_done = False
        self.interim = False
        self.head_bytes = 0
        self.repeated_headers = 0
        waiter = self.headers_waiter = self.loop.create_future()
        transport.write(data)
        timer = self.loop.call_later(self.read_timeout, self._headers_timed_out, waiter)
        try:
            await waiter
        except BaseException:
            self.abort()
            raise
        finally:
            timer.cancel()
        return response

    def _headers_timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(ReadTimeout("the upstream did not answer in time"))


class ConnectionPool:
    """Keep-alive connections to one origin (scheme, host, port), directly or through an HTTP proxy."""

    def __init__(
        self,
        base_url: str,
        *,
        limit: int = 256,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        keepalive_timeout: float = 75.0,
        pool_timeout: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
        proxy: str | None = None,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.keepalive_timeout = keepalive_timeout
        self.pool_timeout = pool_timeout
        self.max_header_bytes = max_header_bytes
        self.max_headers = max_headers
        self.max_body_bytes = max_body_bytes
        self._ssl: ssl.SSLContext | None = None
        if parts.scheme == "https":
            self._ssl = ssl_context or ssl.create_default_context()
        self.proxy = proxies.Proxy.parse(proxy) if proxy else None
        # What goes between the method and the target, and extra head lines: a plain request through a proxy
        # names the whole URL (absolute form) and carries the proxy's credentials; a tunnel needs neither.
        self._target_prefix = ""
        self._extra_head = ""
        if self.proxy is not None and self._ssl is None:
            self._target_prefix = f"http://{self.host_header}"
            if self.proxy.authorization:
                self._extra_head = f"proxy-authorization: {self.proxy.authorization}\r\n"
        self._head_line_ends = 1 + self._extra_head.count("\n")  # the first element holds two line ends
        self._limit = asyncio.Semaphore(limit)
        self._idle: collections.deque[_Connection] = collections.deque()
        self._all: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def encode_request(self, method: str, target: str, headers: Mapping[str, str], body: bytes | None) -> bytes:
        lines = [f"{method} {self._target_prefix}{target} HTTP/1.1\r\nhost: {self.host_header}\r\n{self._extra_head}"]
        lines.extend(f"{k}: {v}\r\n" for k, v in headers.items())
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"content-length: {len(body) if body else 0}\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # Two counts over the head instead of a check per header: any CR or LF beyond the line ends written here
        # (or a NUL) came from a header value; look for it only then.
        ends = len(lines) + self._head_line_ends
        if text.count("\n") != ends or text.count("\r") != ends or "\0" in text:
            raise _header_at_fault(headers) or InvalidHeader(":target", "contains a line break or NUL")
        try:
            head = text.encode("latin-1")
        except UnicodeEncodeError:
            raise _header_at_fault(headers) or InvalidHeader(":target", "contains characters outside latin-1") from None
        return head + body if body else head

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> HTTPResponse:
        """Send a request (`target` is the path and query) and return once the response headers arrived.

        The request holds one of the pool's `limit` permits until its response is released or closed."""
        data = self.encode_request(method, target, headers, body)
        if self.pool_timeout is not None and self._limit.locked():
            await self._acquire_bounded()
        else:
            await self._limit.acquire()
        conn = self._take_idle()
        resends = 0
        if conn is not None:
            conn.holds_permit = True
            try:
                return await conn.send(data)
            except Disconnected:
                if not conn.undelivered:
                    raise
                # The reused connection broke before the request left us: nothing upstream can have acted on it.
                # The failed connection gave its permit back; take one for the fresh connection.
                resends = 1
                await self._acquire_bounded()
        try:
            conn = await self._connect()
        except BaseException:
            self._limit.release()
            raise
        conn.holds_permit = True
        response = await conn.send(data)
        response.resends = resends
        return response

    async def _acquire_bounded(self) -> None:
        if self.pool_timeout is None:
            await self._limit.acquire()
            return
        try:
            async with asyncio.timeout(self.pool_timeout):
                await self._limit.acquire()
        except TimeoutError:
            raise PoolTimeout(f"no connection of the pool freed up within {self.pool_timeout:g} s") from None

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.closed or now - conn.idle_since > self.keepalive_timeout:
                conn.abort()
                continue
            return conn
        return None

    async def _connect(self) -> _Connection:
        loop = self.loop
        proxy = self.proxy
        try:
            async with asyncio.timeout(self.connect_timeout):
                if proxy is None:
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self),
                        self.host,
                        self.port,
                        ssl=self._ssl,
                        server_hostname=self.host if self._ssl is not None else None,
                    )
                elif self._ssl is None:
                    _, conn = await loop.create_connection(lambda: _Connection(self), proxy.host, proxy.port)
                else:
                    sock = await proxies.open_tunnel(loop, proxy, self.host, self.port, self.max_header_bytes)
                    _, conn = await loop.create_connection(
                        lambda: _Connection(self), sock=sock, ssl=self._ssl, server_hostname=self.host
                    )
        except TimeoutError:
            raise ConnectTimeout(f"connecting took longer than {self.connect_timeout} s") from None
        except proxies.TunnelRefused as exc:
            raise ConnectError(str(exc)) from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(str(exc) or type(exc).__name__) from None
        self._all.add(conn)
        return conn

    def _put_back(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.append(conn)
        self._give_permit(conn)

    def _forget(self, conn: _Connection) -> None:
        self._all.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass
        self._give_permit(conn)

    def _give_permit(self, conn: _Connection) -> None:
        if conn.holds_permit:
            conn.holds_permit = False
            self._limit.release()

    async def aclose(self) -> None:
        for conn in list(self._all):
            conn.abort()
        self._idle.clear()


def _header_at_fault(headers: Mapping[str, str]) -> InvalidHeader | None:
    for name, value in headers.items():
        why = header_problem(name, value)
        if why is not None:
            return InvalidHeader(name, why)
    return None


def tls_context(
    *, ca_file: str | None = None, cert_file: str | None = None, key_file: str | None = None, verify: bool = True
) -> ssl.SSLContext:
    """A client context: the system's CAs (or `ca_file`), a client certificate for mutual TLS, or no
    verification at all (`verify=False`: for tests and private networks only). Raises OSError/SSLError."""
    context = ssl.create_default_context(cafile=ca_file)
    if cert_file:
        context.load_cert_chain(cert_file, key_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
