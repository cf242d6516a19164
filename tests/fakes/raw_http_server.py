"""A raw asyncio TCP server whose every byte a test scripts, for testing the upstream HTTP client.

Unlike ``FakeUpstream`` (a real HTTP server), nothing here writes HTTP on its own: a test's handler reads the
client's requests and writes whatever bytes it likes, split wherever it likes, so framing, keep-alive,
half-sent answers and silences are under the test's control::

    async def handler(conn: RawConn) -> None:
        request = await conn.read_request()
        await conn.send(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\nok")

    server = await RawServer(handler).start()       # listens on 127.0.0.1, a random port
    ...                                              # server.port, server.accepts, server.max_active
    await server.aclose()

The server counts the connections it accepts, how many are open at once, and which ones the client closed.
``tls_pair()`` gives a self-signed certificate for ``127.0.0.1``/``localhost`` (embedded: no network, no
``openssl`` needed) as a server context and a client context that trusts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

Handler = Callable[["RawConn"], Awaitable[None]]


@dataclass
class RawRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value
        return None


@dataclass
class RawConn:
    """One accepted connection, as the handler sees it."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[RawRequest] = field(default_factory=list)
    peer_closed: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_request(self) -> RawRequest | None:
        """The next request (head and a Content-Length body), or None once the client closed or reset."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.peer_closed.set()
            return None
        lines = head[:-4].decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
        length = 0
        for name, value in headers:
            if name.lower() == "content-length":
                length = int(value)
        try:
            body = await self.reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, ConnectionError):
            self.peer_closed.set()
            return None
        request = RawRequest(method, target, version, headers, body, head + body)
        self.requests.append(request)
        return request

    async def send(self, *parts: bytes, pause: float = 0.0) -> None:
        """Write each part (drained); with `pause`, sleep between parts so they tend to arrive in separate reads."""
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            self.writer.write(part)
            await self.writer.drain()

    async def wait_closed_by_peer(self) -> None:
        """Read (and drop) until the client closes or resets the connection."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.peer_closed.set()

    def close(self) -> None:
        self.writer.close()

    def abort(self) -> None:
        """Close with a reset (RST) rather than a FIN: SO_LINGER with a zero timeout makes close() send one."""
        transport = self.writer.transport
        if not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()


class RawServer:
    def __init__(self, handler: Handler, *, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.port = 0
        self.accepts = 0
        self.active = 0
        self.max_active = 0
        self.conns: list[RawConn] = []
        self.errors: list[BaseException] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> RawServer:
        self._server = await asyncio.start_server(self._on_connect, "127.0.0.1", 0, ssl=self.ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def origin(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = RawConn(self.accepts, reader, writer)
        self.accepts += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.conns.append(conn)
        try:
            await self.handler(conn)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        except Exception as exc:  # noqa: BLE001 (a broken test script: the fixture that owns the server reports it)
            self.errors.append(exc)
        finally:
            self.active -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)


def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def silent_port() -> Iterator[int]:
    """A port on 127.0.0.1 that never completes a TCP handshake: its listen queue is full, so (on Linux) the
    kernel drops new SYNs and connect() hangs until the caller's own timeout."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(3):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.02)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# A self-signed test certificate (EC P-256, CN=manifold-test, SAN IP:127.0.0.1 and DNS:localhost, valid 2000-2125).
# It protects nothing: it exists only so TLS can be tested offline. The key is public on purpose.
TEST_CERT_PEM = """\
-----BEGIN CERTIFICATE-----
MIIBkjCCATegAwIBAgIBATAKBggqhkjOPQQDAjAYMRYwFAYDVQQDDA1tYW5pZm9s
ZC10ZXN0MCAXDTAwMDEwMTAwMDAwMFoYDzIxMjUwMTAxMDAwMDAwWjAYMRYwFAYD
VQQDDA1tYW5pZm9sZC10ZXN0MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEg4vZ
14I9YYbj/3HvqDjZpq9fYPHPJG3YEZkg1qkAom1zmbzdMMEHykrgzGXHq4uwq4p5
0+/cYx8LK/Cqj/SCFKNwMG4wGgYDVR0RBBMwEYcEfwAAAYIJbG9jYWxob3N0MAwG
A1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgeAMBMGA1UdJQQMMAoGCCsGAQUFBwMB
MB0GA1UdDgQWBBQzQw5Mj99Aw9oR5z11Zsczo8lr3TAKBggqhkjOPQQDAgNJADBG
AiEAsjXPsVeb1PwIf8EjX7spKLWwZNlIcXUwpNOPbCsJshoCIQDawmQgiR0z8skO
MaFpwHbpRmo1hSm+Z97PKfd5rI+Hig==
-----END CERTIFICATE-----
"""

TEST_KEY_PEM = """\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgVgxOhtcCeClOXm5v
8J0DSCzLkCa5XJqSQaZUNuKKFf+hRANCAASDi9nXgj1hhuP/ce+oONmmr19g8c8k
bdgRmSDWqQCibXOZvN0wwQfKSuDMZceri7CrinnT79xjHwsr8KqP9IIU
-----END PRIVATE KEY-----
"""


def tls_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context with the test certificate, client context trusting only that certificate)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(TEST_CERT_PEM + TEST_KEY_PEM)
        server.load_cert_chain(path)
    finally:
        os.unlink(path)
    client = ssl.create_default_context(cadata=TEST_CERT_PEM)
    return server, client
