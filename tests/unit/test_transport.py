"""The upstream HTTP/1.1 client (`providers/transport.py`) and `UpstreamSession`/`SSEStream`
(`providers/upstream_http.py`), against a raw TCP server on 127.0.0.1 whose every byte each test scripts
(`tests/fakes/raw_http_server.py`).

Covered: body framing (Content-Length, chunked, close-delimited, no body), headers, gzip/deflate, keep-alive and
when a connection must not be reused, the stale keep-alive retry, the pool limit and its permits (released on
success, errors, cancellation and early close), read/connect timeouts, protocol errors, backpressure, SSE
parsing and the mapping of transport failures to 502/504, and TLS with a self-signed certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import hashlib
import itertools
import random
import ssl
import time
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from manifold.api.sse_decoder import SSEEvent
from manifold.config import OpenAIDeployment, Timeouts
from manifold.errors import BadGatewayError, GatewayTimeoutError, UpstreamError
from manifold.providers import transport
from manifold.providers.transport import (
    ConnectError,
    ConnectionPool,
    ConnectTimeout,
    Disconnected,
    HTTPResponse,
    ProtocolError,
    ReadTimeout,
    TransportError,
)
from manifold.providers.upstream_http import UpstreamSession
from tests.fakes.raw_http_server import Handler, RawConn, RawRequest, RawServer, silent_port, tls_pair, unused_port

# -- wire helpers ------------------------------------------------------------------------------------------------


def response(status: int = 200, body: bytes = b"", *headers: str, reason: str = "OK", length: bool = True) -> bytes:
    """A response head (and body); `headers` are raw `Name: value` lines; Content-Length added unless length=False."""
    lines = [f"HTTP/1.1 {status} {reason}", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunk(data: bytes, ext: str = "") -> bytes:
    return f"{len(data):x}{ext}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"
OK = response(200, b"ok", "Content-Type: text/plain")
CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

Route = Callable[[RawConn, RawRequest], Awaitable[bool | None]]


async def answer_ok(conn: RawConn, req: RawRequest) -> None:
    await conn.send(OK)


async def hang(conn: RawConn, req: RawRequest) -> bool:
    """Answer nothing; wait until the client gives up the connection."""
    await conn.wait_closed_by_peer()
    return False


def fixed(*parts: bytes, pause: float = 0.0, then: str = "keep") -> Route:
    """Send `parts`; then keep serving ("keep"), close ("close") or wait for the client to close ("hang")."""

    async def route(conn: RawConn, req: RawRequest) -> bool | None:
        await conn.send(*parts, pause=pause)
        if then == "close":
            return False
        if then == "hang":
            await conn.wait_closed_by_peer()
            return False
        return None

    return route


def routes(table: dict[str, Route] | None = None) -> Handler:
    """Serve requests one after another on each connection, by target; unknown targets get `OK`."""
    table = table or {}

    async def handler(conn: RawConn) -> None:
        while (req := await conn.read_request()) is not None:
            if await table.get(req.target, answer_ok)(conn, req) is False:
                return

    return handler


async def eventually(predicate: Callable[[], bool], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


async def closed_by_client(conn: RawConn) -> None:
    """The server saw the client close (or reset) this connection."""
    await asyncio.wait_for(conn.peer_closed.wait(), 2)


async def get(pool: ConnectionPool, target: str = "/ok", headers: dict[str, str] | None = None) -> HTTPResponse:
    return await asyncio.wait_for(pool.request("GET", target, headers or {}), 5)


async def fetch(pool: ConnectionPool, target: str = "/ok") -> tuple[int, bytes]:
    resp = await get(pool, target)
    return resp.status, await asyncio.wait_for(resp.read(), 5)


async def assert_permits_free(pool: ConnectionPool, limit: int) -> None:
    """No permit leaked: `limit` requests can hold a connection at the same time (each waits for a permit)."""
    assert pool._limit._value == limit
    resps = await asyncio.wait_for(asyncio.gather(*(get(pool) for _ in range(limit))), 2)
    assert pool._limit._value == 0
    assert [await r.read() for r in resps] == [b"ok"] * limit
    assert pool._limit._value == limit


async def drain(resp: HTTPResponse) -> bytes:
    parts = []
    while (part := await asyncio.wait_for(resp.next_chunk(), 5)) is not None:
        parts.append(part)
    return b"".join(parts)


# -- fixtures ----------------------------------------------------------------------------------------------------

Serve = Callable[..., Awaitable[RawServer]]
MakePool = Callable[..., ConnectionPool]
MakeSession = Callable[..., UpstreamSession]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[RawServer] = []

    async def start(handler: Handler | None = None, *, ssl_context: ssl.SSLContext | None = None) -> RawServer:
        server = await RawServer(handler or routes(), ssl_context=ssl_context).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.aclose()
    errors = [exc for server in started for exc in server.errors]
    assert not errors, f"the scripted server failed: {errors!r}"


@pytest.fixture
async def pool_for() -> AsyncIterator[MakePool]:
    made: list[ConnectionPool] = []

    def make(target: RawServer | str, **kwargs: Any) -> ConnectionPool:
        kwargs.setdefault("read_timeout", 2.0)
        kwargs.setdefault("limit", 2)
        pool = ConnectionPool(target.origin if isinstance(target, RawServer) else target, **kwargs)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.aclose()


@pytest.fixture
async def session_for() -> AsyncIterator[MakeSession]:
    made: list[UpstreamSession] = []

    def make(
        origin: str,
        *,
        connect: float = 2.0,
        first_byte: float = 2.0,
        total: float | None = None,
        max_connections: int = 2,
    ) -> UpstreamSession:
        deployment = OpenAIDeployment(
            model_name="m",
            api_base=f"{origin}/v1",
            timeouts=Timeouts(connect=connect, first_byte=first_byte, total=total),
            max_connections=max_connections,
        )
        session = UpstreamSession(deployment)
        made.append(session)
        return session

    yield make
    for session in made:
        await session.aclose()


# == framing =====================================================================================================


async def test_content_length_body_and_the_request_bytes(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/v1/x?q=1": fixed(response(200, b"hello world", "Content-Type: text/plain"))}))
    pool = pool_for(server)

    resp = await get(pool, "/v1/x?q=1", {"authorization": "Bearer k", "x-custom": "v"})

    assert resp.status == 200
    assert resp.headers == {"content-type": "text/plain", "content-length": "11"}
    assert await resp.read() == b"hello world"
    expected = (
        f"GET /v1/x?q=1 HTTP/1.1\r\nhost: 127.0.0.1:{server.port}\r\nauthorization: Bearer k\r\nx-custom: v\r\n\r\n"
    )
    assert server.conns[0].requests[0].raw == expected.encode()


async def test_get_without_headers_sends_only_the_host(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/": fixed(response(200, b""))}))
    pool = pool_for(server)

    assert await fetch(pool, "/") == (200, b"")
    assert server.conns[0].requests[0].raw == f"GET / HTTP/1.1\r\nhost: 127.0.0.1:{server.port}\r\n\r\n".encode()


async def test_post_sends_its_body_with_a_content_length(serve: Serve, pool_for: MakePool) -> None:
    server = await serve()
    pool = pool_for(server)

    resp = await pool.request("POST", "/ok", {"content-type": "application/json"}, b'{"a": 1}')
    assert await resp.read() == b"ok"
    resp = await pool.request("POST", "/ok", {})  # no body: still an explicit length of 0
    assert await resp.read() == b"ok"

    first, second = server.conns[0].requests
    assert first.method == "POST"
    assert first.header("content-length") == "8"
    assert first.header("content-type") == "application/json"
    assert first.body == b'{"a": 1}'
    assert second.header("content-length") == "0"
    assert second.body == b""


@pytest.mark.parametrize(
    "parts",
    [
        # One chunk per write, with chunk extensions (a token and a quoted value).
        [CHUNKED_HEAD, chunk(b"hello ", ";name=value"), chunk(b"chunked ", ';q="x y"'), chunk(b"world"), LAST_CHUNK],
        # The wire cut at awkward places: inside the size line, between CR and LF, inside the data, in the trailer.
        [
            CHUNKED_HEAD + b"6",
            b";ext=1\r",
            b"\nhel",
            b"lo \r",
            b"\n",
            b"8\r\nchunked \r\n5\r\nwor",
            b"ld\r\n0",
            b"\r\nX-Trailer: t\r\n",
            b"\r\n",
        ],
        # The head itself split in the middle of a header name and value.
        [
            b"HTTP/1.1 200 OK\r\nTransfer-Enc",
            b"oding: chun",
            b"ked\r\n\r",
            b"\n" + chunk(b"hello chunked world") + b"0\r\n\r\n",
        ],
        # Everything in one write, an upper-case hex size and a valueless extension.
        [CHUNKED_HEAD + b"6;flag\r\nhello \r\nA\r\nchunked wo\r\n3\r\nrld\r\n0\r\n\r\n"],
    ],
    ids=["chunk-per-write", "awkward-splits", "split-head", "one-write"],
)
async def test_chunked_body(serve: Serve, pool_for: MakePool, parts: list[bytes]) -> None:
    server = await serve(routes({"/c": fixed(*parts, pause=0.005)}))
    pool = pool_for(server)

    resp = await get(pool, "/c")
    assert resp.status == 200
    assert "chunked" in resp.headers["transfer-encoding"]
    assert await resp.read() == b"hello chunked world"
    # The chunked body was framed exactly: the connection is reused.
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 1


async def test_chunked_body_streamed_piece_by_piece(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/c": fixed(CHUNKED_HEAD, chunk(b"one"), chunk(b"two"), LAST_CHUNK, pause=0.02)}))
    pool = pool_for(server)

    resp = await get(pool, "/c")
    assert await resp.next_chunk() == b"one"
    assert await resp.next_chunk() == b"two"
    assert await resp.next_chunk() is None
    assert resp.complete
    assert await resp.next_chunk() is None  # still None: nothing more to read


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
async def test_body_delimited_by_the_connection_closing(serve: Serve, pool_for: MakePool, version: str) -> None:
    head = f"{version} 200 OK\r\nContent-Type: text/plain\r\n\r\n".encode()
    server = await serve(routes({"/eof": fixed(head + b"part one, ", b"part two", pause=0.02, then="close")}))
    pool = pool_for(server)

    resp = await get(pool, "/eof")
    assert await asyncio.wait_for(resp.read(), 2) == b"part one, part two"
    assert resp.complete
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 2


async def test_body_delimited_by_close_streamed(serve: Serve, pool_for: MakePool) -> None:
    head = b"HTTP/1.1 200 OK\r\n\r\n"
    server = await serve(routes({"/eof": fixed(head + b"a", b"b", b"c", pause=0.02, then="close")}))
    pool = pool_for(server)

    resp = await get(pool, "/eof")
    assert await drain(resp) == b"abc"
    assert pool._limit._value == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\n\r\n',
        b'HTTP/1.1 304 Not Modified\r\nETag: "abc"\r\nContent-Length: 10\r\n\r\n',  # the length of the resource
    ],
    ids=["204", "304", "304-with-length"],
)
async def test_responses_without_a_body(serve: Serve, pool_for: MakePool, head: bytes) -> None:
    server = await serve(routes({"/none": fixed(head)}))
    pool = pool_for(server, read_timeout=1.0)

    resp = await get(pool, "/none")
    assert resp.status in (204, 304)
    assert await asyncio.wait_for(resp.read(), 0.5) == b""
    assert resp.complete
    # No body means nothing left on the wire: the connection is reused.
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 1


async def test_repeated_header_names_are_joined(serve: Serve, pool_for: MakePool) -> None:
    head = response(200, b"x", "X-Multi: one", "x-multi: two", "X-MULTI: three", "Set-Cookie: a=1", "set-cookie: b=2")
    server = await serve(routes({"/h": fixed(head)}))
    pool = pool_for(server)

    resp = await get(pool, "/h")
    assert resp.headers["x-multi"] == "one, two, three"
    assert resp.headers["set-cookie"] == "a=1, b=2"
    assert all(name == name.lower() for name in resp.headers)
    await resp.read()


@pytest.mark.parametrize(
    ("status", "reason"), [(200, "OK"), (404, "Not Found"), (500, "Internal Server Error"), (201, "Whatever")]
)
async def test_status_codes_are_readable(serve: Serve, pool_for: MakePool, status: int, reason: str) -> None:
    body = f"status {status}".encode()
    server = await serve(routes({"/s": fixed(response(status, body, reason=reason))}))
    pool = pool_for(server)

    assert await fetch(pool, "/s") == (status, body)  # the transport raises for no status
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Content-Type: Text/Event-Stream; charset=utf-8", "text/event-stream"),
        ("content-type:   application/json  ", "application/json"),
        ("Content-Type: application/json;charset=UTF-8", "application/json"),
        (None, ""),
    ],
)
async def test_content_type(serve: Serve, pool_for: MakePool, header: str | None, expected: str) -> None:
    server = await serve(routes({"/t": fixed(response(200, b"{}", *([header] if header else [])))}))
    pool = pool_for(server)

    resp = await get(pool, "/t")
    assert resp.content_type == expected
    await resp.read()


# == content encodings ===========================================================================================

TEXT = b"The quick brown fox jumps over the lazy dog. " * 200


@pytest.mark.parametrize(
    ("encoding", "encoded"),
    [
        ("gzip", gzip.compress(TEXT)),
        ("x-gzip", gzip.compress(TEXT)),
        ("GZIP", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),
    ],
)
async def test_encoded_body_is_decoded(serve: Serve, pool_for: MakePool, encoding: str, encoded: bytes) -> None:
    server = await serve(routes({"/z": fixed(response(200, encoded, f"Content-Encoding: {encoding}"))}))
    pool = pool_for(server)

    resp = await get(pool, "/z")
    assert resp.headers["content-length"] == str(len(encoded))
    assert await resp.read() == TEXT
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_encoded_body_streamed_with_next_chunk(serve: Serve, pool_for: MakePool, encoding: str) -> None:
    text = bytes(random.Random(7).choices(b"abcdefgh \n", k=50_000))
    encoded = gzip.compress(text) if encoding == "gzip" else zlib.compress(text)
    # Chunks cut at odd places of the compressed stream (inside the gzip header, the deflate blocks, the trailer).
    cuts = [0, 1, 7, 11, 300, 1001, len(encoded) - 5, len(encoded) - 1, len(encoded)]
    pieces = [chunk(encoded[a:b]) for a, b in itertools.pairwise(cuts)]
    head = f"HTTP/1.1 200 OK\r\nContent-Encoding: {encoding}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    server = await serve(routes({"/z": fixed(head, *pieces, LAST_CHUNK, pause=0.005)}))
    pool = pool_for(server)

    resp = await get(pool, "/z")
    assert await drain(resp) == text
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 1


async def test_encoded_body_with_iter_chunks(serve: Serve, pool_for: MakePool) -> None:
    encoded = zlib.compress(TEXT)
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\n\r\n"  # and delimited by the connection closing
    server = await serve(routes({"/z": fixed(head + encoded[:50], encoded[50:], pause=0.02, then="close")}))
    pool = pool_for(server)

    resp = await get(pool, "/z")
    assert b"".join([piece async for piece in resp.iter_chunks()]) == TEXT


async def test_unknown_encoding_is_passed_through(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/br": fixed(response(200, b"\x1b\x00\x00brotli?", "Content-Encoding: br"))}))
    pool = pool_for(server)

    assert await fetch(pool, "/br") == (200, b"\x1b\x00\x00brotli?")


async def test_corrupt_gzip_is_a_protocol_error(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/z": fixed(response(200, b"definitely not gzip", "Content-Encoding: gzip"))}))
    pool = pool_for(server)

    with pytest.raises(ProtocolError):
        resp = await get(pool, "/z")
        await resp.read()
    await closed_by_client(server.conns[0])
    await assert_permits_free(pool, 2)
    assert [len(c.requests) for c in server.conns] == [1, 1, 1]  # the broken connection served nothing more


# == keep-alive ==================================================================================================


async def test_sequential_requests_reuse_one_connection(serve: Serve, pool_for: MakePool) -> None:
    server = await serve()
    pool = pool_for(server)

    for _ in range(3):
        assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 1
    assert len(server.conns[0].requests) == 3
    assert len(pool._all) == 1
    assert pool._limit._value == 2


async def test_connection_close_response_is_not_reused(serve: Serve, pool_for: MakePool) -> None:
    # The server keeps its end open after `Connection: close`: the client must close it anyway.
    server = await serve(routes({"/last": fixed(response(200, b"bye", "Connection: close"))}))
    pool = pool_for(server)

    assert await fetch(pool, "/last") == (200, b"bye")
    await closed_by_client(server.conns[0])
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 2
    assert pool._limit._value == 2


async def test_http10_response_is_not_reused(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/old": fixed(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold")}))
    pool = pool_for(server)

    assert await fetch(pool, "/old") == (200, b"old")
    await closed_by_client(server.conns[0])
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 2


async def _stop_early(resp: HTTPResponse, how: str) -> None:
    if how == "release":
        resp.release()
    elif how == "close":
        resp.close()
    elif how == "one-chunk-then-release":
        assert await resp.next_chunk() == b"01234"
        resp.release()
    elif how == "iter-chunks-break":
        async with contextlib.aclosing(resp.iter_chunks()) as pieces:
            async for piece in pieces:
                assert piece == b"01234"
                break
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["release", "close", "one-chunk-then-release", "iter-chunks-break"])
async def test_response_not_read_to_its_end_closes_its_connection(serve: Serve, pool_for: MakePool, how: str) -> None:
    # Half the body is sent, the rest never: the connection is mid-response and cannot be reused.
    server = await serve(routes({"/half": fixed(response(200, b"0123456789")[:-5], then="hang")}))
    pool = pool_for(server)

    resp = await get(pool, "/half")
    await eventually(lambda: resp.has_buffered)
    await _stop_early(resp, how)

    await closed_by_client(server.conns[0])
    assert not resp.complete
    await assert_permits_free(pool, 2)
    # The check's two requests went out on two new connections; the first one carried only "/half".
    assert [[r.target for r in c.requests] for c in server.conns] == [["/half"], ["/ok"], ["/ok"]]


async def test_fully_received_response_released_unread_is_reused(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/full": fixed(response(200, b"0123456789"))}))
    pool = pool_for(server)

    resp = await get(pool, "/full")
    await eventually(lambda: resp.complete)
    resp.release()
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 1


async def test_unsolicited_bytes_on_an_idle_connection_close_it(serve: Serve, pool_for: MakePool) -> None:
    async def ok_then_junk(conn: RawConn, req: RawRequest) -> bool:
        await conn.send(OK)
        await asyncio.sleep(0.05)
        await conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\njunk")
        await conn.wait_closed_by_peer()
        return False

    server = await serve(routes({"/junk": ok_then_junk}))
    pool = pool_for(server)

    assert await fetch(pool, "/junk") == (200, b"ok")
    await closed_by_client(server.conns[0])
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 2


async def test_bytes_after_a_complete_response_are_not_part_of_it(serve: Serve, pool_for: MakePool) -> None:
    # The upstream sends a second, unrequested response right behind the first, in the same write. The first
    # response is exactly `Content-Length: 2` bytes; the rest belongs to no request.
    extra = b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-Extra: 1\r\n\r\nevil"
    server = await serve(routes({"/two": fixed(response(200, b"ok") + extra)}))
    pool = pool_for(server)

    resp = await get(pool, "/two")
    body = await resp.read()
    assert (resp.status, body) == (200, b"ok")
    assert "x-extra" not in resp.headers
    assert resp.headers["content-length"] == "2"
    # That connection's byte stream is out of step with its requests: it must not serve the next one.
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 2


async def test_interim_1xx_response_is_skipped(serve: Serve, pool_for: MakePool) -> None:
    # RFC 9110 15.2: a client MUST parse 1xx responses received before the final one, even unexpected ones.
    early_hints = b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    server = await serve(routes({"/hints": fixed(early_hints, response(200, b"final"), pause=0.05)}))
    pool = pool_for(server)

    resp = await get(pool, "/hints")
    body = await asyncio.wait_for(resp.read(), 2)
    assert (resp.status, body) == (200, b"final")


async def test_idle_connection_expires_after_keepalive_timeout(serve: Serve, pool_for: MakePool) -> None:
    server = await serve()
    pool = pool_for(server, keepalive_timeout=0.05)

    assert await fetch(pool) == (200, b"ok")
    await asyncio.sleep(0.1)
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 2
    await closed_by_client(server.conns[0])  # the expired connection was closed, not leaked


async def test_pool_aclose_closes_idle_connections(serve: Serve, pool_for: MakePool) -> None:
    server = await serve()
    pool = pool_for(server)

    assert await fetch(pool) == (200, b"ok")
    await pool.aclose()
    await closed_by_client(server.conns[0])
    assert not pool._all


# == stale keep-alive connections =================================================================================


@pytest.mark.parametrize("noticed", [True, False], ids=["close-noticed", "close-in-flight"])
async def test_server_closed_the_idle_connection(serve: Serve, pool_for: MakePool, noticed: bool) -> None:
    server = await serve(routes({"/once": fixed(OK, then="close")}))
    pool = pool_for(server)

    assert await fetch(pool, "/once") == (200, b"ok")
    if noticed:
        await eventually(lambda: not pool._all)
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 2
    assert pool._limit._value == 2


@pytest.mark.parametrize("ending", ["close", "reset"])
async def test_request_the_upstream_read_is_never_sent_again(serve: Serve, pool_for: MakePool, ending: str) -> None:
    # The upstream took the whole request on a reused connection, then dropped the connection without a byte of
    # answer (a worker that crashed after 30 s of generation, a proxy timeout): it may have acted on it, so the
    # POST must not go out a second time.
    async def handler(conn: RawConn) -> None:
        if conn.index == 0:
            await conn.read_request()
            await conn.send(OK)
            await conn.read_request()  # the second request, read to its end...
            if ending == "reset":  # ...then the connection dropped without a byte of answer
                conn.abort()
            return
        await routes()(conn)

    server = await serve(handler)
    pool = pool_for(server, limit=1)

    assert await fetch(pool) == (200, b"ok")
    with pytest.raises(Disconnected):
        await asyncio.wait_for(pool.request("POST", "/ok", {}, b"payload"), 2)
    assert server.accepts == 1
    assert [r.body for r in server.conns[0].requests] == [b"", b"payload"]
    await assert_permits_free(pool, 1)


BIG = b"x" * (32 * 1024 * 1024)  # more than the kernel's socket buffers hold: the write is still going on


async def test_request_the_upstream_never_took_is_sent_again(serve: Serve, pool_for: MakePool) -> None:
    # The reused connection dies while the request is still being written: the upstream cannot have received
    # all of it, so nothing can have acted on it; it goes out once more on a fresh connection, and says so.
    async def handler(conn: RawConn) -> None:
        if conn.index == 0:
            await conn.read_request()
            await conn.send(OK)
            await conn.reader.read(1)  # the next request has begun to arrive: reset with most of it unread
            conn.abort()
            return
        await routes()(conn)

    server = await serve(handler)
    pool = pool_for(server, limit=1)  # the re-send must get the one permit back from the failed connection

    assert await fetch(pool) == (200, b"ok")
    resp = await asyncio.wait_for(pool.request("POST", "/ok", {}, BIG), 10)
    assert await resp.read() == b"ok"
    assert resp.resends == 1
    assert server.accepts == 2
    assert server.conns[1].requests[0].body == BIG
    await assert_permits_free(pool, 1)


async def test_a_request_is_sent_again_only_once(serve: Serve, pool_for: MakePool) -> None:
    async def handler(conn: RawConn) -> None:
        if conn.index == 0:
            await conn.read_request()
            await conn.send(OK)
        await conn.reader.read(1)  # then every connection resets while the request is being written
        conn.abort()

    server = await serve(handler)
    pool = pool_for(server)

    assert await fetch(pool) == (200, b"ok")
    with pytest.raises(Disconnected):
        await asyncio.wait_for(pool.request("POST", "/ok", {}, BIG), 10)
    assert server.accepts == 2
    assert pool._limit._value == 2


async def test_fresh_connection_closed_without_answer_is_not_retried(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/drop": fixed(then="close")}))
    pool = pool_for(server)

    with pytest.raises(Disconnected):
        await get(pool, "/drop")
    assert server.accepts == 1
    await assert_permits_free(pool, 2)


async def test_partial_answer_on_reused_connection_is_not_retried(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/partial": fixed(b"HTTP/1.1 200 OK\r\nContent-Le", then="close")}))
    pool = pool_for(server)

    assert await fetch(pool) == (200, b"ok")
    with pytest.raises(Disconnected):
        await get(pool, "/partial")
    assert server.accepts == 1  # some bytes came back: the upstream may have acted on it, so no retry
    await assert_permits_free(pool, 2)


@pytest.mark.parametrize(
    "wire",
    [
        response(200, b"0123456789")[:-5],
        CHUNKED_HEAD + chunk(b"01234") + b"5\r\n56",
        CHUNKED_HEAD + chunk(b"01234"),  # every chunk complete, but no last chunk
    ],
    ids=["content-length", "chunked-mid-chunk", "chunked-no-last-chunk"],
)
async def test_connection_dying_mid_body_raises_disconnected(serve: Serve, pool_for: MakePool, wire: bytes) -> None:
    server = await serve(routes({"/cut": fixed(wire, then="close")}))
    pool = pool_for(server)

    resp = await get(pool, "/cut")
    assert await resp.next_chunk() == b"01234"
    with pytest.raises(Disconnected):
        await drain(resp)
    assert not resp.complete

    resp = await get(pool, "/cut")
    with pytest.raises(Disconnected):
        await resp.read()
    assert server.accepts == 2
    await assert_permits_free(pool, 2)


# == the pool limit and its permits ==============================================================================


async def test_pool_limit_bounds_the_connections(serve: Serve, pool_for: MakePool) -> None:
    in_flight = 0
    most_in_flight = 0

    async def slow_ok(conn: RawConn, req: RawRequest) -> None:
        nonlocal in_flight, most_in_flight
        in_flight += 1
        most_in_flight = max(most_in_flight, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        await conn.send(OK)

    server = await serve(routes({"/slow": slow_ok}))
    pool = pool_for(server, limit=2)
    most_open = 0

    async def watch() -> None:
        nonlocal most_open
        while True:
            most_open = max(most_open, len(pool._all))
            await asyncio.sleep(0.002)

    watcher = asyncio.create_task(watch())
    try:
        results = await asyncio.wait_for(asyncio.gather(*(fetch(pool, "/slow") for _ in range(4))), 3)
    finally:
        watcher.cancel()
    assert results == [(200, b"ok")] * 4
    assert server.max_active <= 2
    assert server.accepts == 2
    assert most_in_flight == 2
    assert most_open <= 2
    assert pool._limit._value == 2


async def test_permit_released_after_connect_error(pool_for: MakePool) -> None:
    pool = pool_for(f"http://127.0.0.1:{unused_port()}", limit=1)

    for _ in range(3):  # with a leaked permit the second attempt would wait forever
        with pytest.raises(ConnectError) as info:
            await asyncio.wait_for(pool.request("GET", "/", {}), 2)
        assert not isinstance(info.value, ConnectTimeout)
    assert pool._limit._value == 1
    assert not pool._all


async def test_connect_timeout(pool_for: MakePool) -> None:
    with silent_port() as port:
        pool = pool_for(f"http://127.0.0.1:{port}", limit=1, connect_timeout=0.1)
        started = time.monotonic()
        with pytest.raises(ConnectTimeout) as info:
            await asyncio.wait_for(pool.request("GET", "/", {}), 2)
        assert 0.08 < time.monotonic() - started < 1.0
        assert isinstance(info.value, ConnectError)  # callers catching ConnectError see it too
        assert isinstance(info.value, TimeoutError)
        assert pool._limit._value == 1


async def test_read_timeout_waiting_for_headers(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/silent": hang}))
    pool = pool_for(server, read_timeout=0.1)

    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        await asyncio.wait_for(pool.request("GET", "/silent", {}), 2)
    assert 0.08 < time.monotonic() - started < 1.0
    await closed_by_client(server.conns[0])
    await assert_permits_free(pool, 2)


@pytest.mark.parametrize("reader", ["next_chunk", "read"])
async def test_read_timeout_between_body_chunks(serve: Serve, pool_for: MakePool, reader: str) -> None:
    server = await serve(routes({"/stall": fixed(CHUNKED_HEAD + chunk(b"first"), then="hang")}))
    pool = pool_for(server, read_timeout=0.1)

    resp = await get(pool, "/stall")
    started = time.monotonic()
    with pytest.raises(ReadTimeout):
        if reader == "next_chunk":
            assert await resp.next_chunk() == b"first"
            await asyncio.wait_for(resp.next_chunk(), 2)
        else:
            await asyncio.wait_for(resp.read(), 2)
    assert 0.08 < time.monotonic() - started < 1.0
    await closed_by_client(server.conns[0])
    await assert_permits_free(pool, 2)


async def test_read_timeout_bounds_each_gap_not_the_whole_body(serve: Serve, pool_for: MakePool) -> None:
    pieces = [chunk(b"%d" % i) for i in range(5)]
    server = await serve(routes({"/trickle": fixed(CHUNKED_HEAD, *pieces, LAST_CHUNK, pause=0.06)}))
    pool = pool_for(server, read_timeout=0.2)

    resp = await get(pool, "/trickle")  # ~0.3 s in all, but never silent for 0.2 s
    assert await resp.read() == b"01234"


async def test_permit_released_after_disconnect_before_headers(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/drop": fixed(then="close")}))
    pool = pool_for(server, limit=1)

    for _ in range(2):
        with pytest.raises(Disconnected):
            await get(pool, "/drop")
    await assert_permits_free(pool, 1)


async def test_cancelling_a_request_awaiting_headers(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/silent": hang}))
    pool = pool_for(server, limit=1)

    task = asyncio.create_task(pool.request("GET", "/silent", {}))
    await eventually(lambda: bool(server.conns and server.conns[0].requests))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await closed_by_client(server.conns[0])  # the upstream sees the client leave (and can stop generating)
    await assert_permits_free(pool, 1)


async def test_cancelling_a_request_on_a_reused_connection(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/silent": hang}))
    pool = pool_for(server, limit=1)

    assert await fetch(pool) == (200, b"ok")
    task = asyncio.create_task(pool.request("GET", "/silent", {}))
    await eventually(lambda: len(server.conns[0].requests) == 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await closed_by_client(server.conns[0])
    await assert_permits_free(pool, 1)


async def test_cancelling_a_request_waiting_for_a_permit(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/half": fixed(response(200, b"0123456789")[:-5], then="hang")}))
    pool = pool_for(server, limit=1)

    holder = await get(pool, "/half")  # holds the only permit
    waiter = asyncio.create_task(pool.request("GET", "/ok", {}))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    holder.close()
    await assert_permits_free(pool, 1)
    assert server.accepts == 2  # the cancelled waiter never opened a connection


async def test_cancelling_a_body_read(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/stall": fixed(CHUNKED_HEAD + chunk(b"first"), then="hang")}))
    pool = pool_for(server, limit=1)

    resp = await get(pool, "/stall")
    assert await resp.next_chunk() == b"first"
    task = asyncio.create_task(resp.next_chunk())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await closed_by_client(server.conns[0])
    await assert_permits_free(pool, 1)


async def test_permit_released_when_a_streamed_response_is_closed_early(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/stream": fixed(CHUNKED_HEAD, chunk(b"a"), chunk(b"b"), pause=0.01, then="hang")}))
    pool = pool_for(server, limit=2)

    first, second = await asyncio.gather(get(pool, "/stream"), get(pool, "/stream"))
    assert pool._limit._value == 0
    assert await first.next_chunk() == b"a"
    first.close()
    async with contextlib.aclosing(second.iter_chunks()) as pieces:
        async for _ in pieces:
            break
    await closed_by_client(server.conns[0])
    await closed_by_client(server.conns[1])
    await assert_permits_free(pool, 2)


# == protocol errors =============================================================================================


@pytest.mark.parametrize(
    "garbage",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n",
        b"garbage garbage\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header Without Colon\r\n\r\n",
    ],
    ids=["ssh-banner", "words", "bad-status", "bad-length", "bad-header"],
)
async def test_garbage_instead_of_http_is_a_protocol_error(serve: Serve, pool_for: MakePool, garbage: bytes) -> None:
    server = await serve(routes({"/bad": fixed(garbage, then="hang")}))
    pool = pool_for(server)

    with pytest.raises(ProtocolError):
        await get(pool, "/bad")
    await closed_by_client(server.conns[0])
    await assert_permits_free(pool, 2)


@pytest.mark.parametrize("same_read", [False, True], ids=["while-reading", "before-reading"])
async def test_invalid_chunk_framing_mid_body_is_a_protocol_error(
    serve: Serve, pool_for: MakePool, same_read: bool
) -> None:
    parts = [CHUNKED_HEAD + chunk(b"fine"), b"zz\r\nnot a chunk\r\n"]
    if same_read:  # the bad framing arrives with the head, before the caller starts reading the body
        parts = [b"".join(parts)]
    server = await serve(routes({"/bad": fixed(*parts, pause=0.05, then="hang")}))
    pool = pool_for(server)

    resp = await get(pool, "/bad")
    if same_read:
        await asyncio.sleep(0.05)  # the client has parsed it all (and closed the connection) by now
    with pytest.raises(ProtocolError):
        await resp.read()
    await closed_by_client(server.conns[0])
    await assert_permits_free(pool, 2)


def test_transport_errors_form_one_hierarchy() -> None:
    for cls in (ConnectError, ConnectTimeout, ReadTimeout, Disconnected, ProtocolError):
        assert issubclass(cls, TransportError)
    assert issubclass(ConnectTimeout, TimeoutError)
    assert issubclass(ReadTimeout, TimeoutError)
    assert not issubclass(Disconnected, TimeoutError)


# == backpressure ================================================================================================

BIG = random.Random(0).randbytes(8 << 20)


async def test_large_body_streamed_intact_with_backpressure(serve: Serve, pool_for: MakePool) -> None:
    server = await serve(routes({"/big": fixed(response(200, BIG, "Content-Type: application/octet-stream"))}))
    pool = pool_for(server)

    resp = await get(pool, "/big")
    digest = hashlib.sha256()
    first = await resp.next_chunk()
    assert first is not None
    digest.update(first)
    # A consumer that stops reading: the client stops reading the socket instead of buffering all 8 MiB.
    await asyncio.sleep(0.1)
    assert resp._buffered <= 2 * transport._HIGH_WATER
    assert resp._conn._paused
    size = len(first)
    while (piece := await asyncio.wait_for(resp.next_chunk(), 5)) is not None:
        digest.update(piece)
        size += len(piece)
    assert size == len(BIG)
    assert digest.digest() == hashlib.sha256(BIG).digest()
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 1


async def test_read_returns_a_body_larger_than_the_high_water_mark(serve: Serve, pool_for: MakePool) -> None:
    body = BIG[: 3 * transport._HIGH_WATER]  # e.g. a large embeddings answer, read whole with read()
    server = await serve(routes({"/big": fixed(response(200, body))}))
    pool = pool_for(server, read_timeout=0.3)

    resp = await get(pool, "/big")
    assert hashlib.sha256(await resp.read()).digest() == hashlib.sha256(body).digest()


async def test_large_gzip_body_streamed(serve: Serve, pool_for: MakePool) -> None:
    text = b"".join(b"line %d of a long and repetitive body\n" % i for i in range(80_000))  # ~3 MB
    encoded = gzip.compress(text, compresslevel=1)
    pieces = [chunk(encoded[i : i + 65536]) for i in range(0, len(encoded), 65536)]
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = await serve(routes({"/gz": fixed(head + b"".join(pieces) + LAST_CHUNK)}))
    pool = pool_for(server)

    resp = await get(pool, "/gz")
    assert hashlib.sha256(await drain(resp)).digest() == hashlib.sha256(text).digest()


# == misc ========================================================================================================


@pytest.mark.parametrize(
    ("url", "host_header", "port"),
    [
        ("http://example.com", "example.com", 80),
        ("https://example.com/v1/", "example.com", 443),
        ("http://example.com:8080/v1", "example.com:8080", 8080),
        ("https://example.com:80", "example.com:80", 80),
        ("http://[::1]:9000", "[::1]:9000", 9000),
    ],
)
def test_pool_origin_and_host_header(url: str, host_header: str, port: int) -> None:
    pool = ConnectionPool(url, ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))  # (no CA loading: faster)
    assert pool.host_header == host_header
    assert pool.port == port
    assert pool.encode_request("GET", "/x", {}, None) == f"GET /x HTTP/1.1\r\nhost: {host_header}\r\n\r\n".encode()


@pytest.mark.parametrize("url", ["ftp://example.com", "http://", "example.com", "unix:///tmp/sock"])
def test_pool_rejects_non_http_urls(url: str) -> None:
    with pytest.raises(ValueError):
        ConnectionPool(url)


# == UpstreamSession and SSEStream ===============================================================================

SSE_BODY_PIECES = [
    b"da",  # inside a field name
    b'ta: {"a":1}\n',
    b"\n",
    b"event: ping\r",  # between CR and LF
    b"\ndata: h\xc3",  # inside a UTF-8 character
    b"\xa9llo\r\n\r\n",
    b": keep-alive\n\n",
    b"id: 7\ndata: line1\nda",
    b"ta: line2\n\ndata: [DONE]\n\n",
]
SSE_EVENTS = [
    SSEEvent(None, b'{"a":1}', None),
    SSEEvent("ping", "héllo".encode(), None),
    SSEEvent(None, b"line1\nline2", "7"),
    SSEEvent(None, b"[DONE]", "7"),
]


def sse_route(*pieces: bytes, pause: float = 0.0, then: str = "keep") -> Route:
    return fixed(SSE_HEAD, *[chunk(p) for p in pieces], pause=pause, then=then)


async def collect(stream: AsyncIterator[SSEEvent]) -> list[SSEEvent]:
    return [event async for event in stream]


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
async def test_sse_events_parsed_across_chunk_splits(serve: Serve, session_for: MakeSession, framing: str) -> None:
    if framing == "chunked":
        route = fixed(SSE_HEAD, *[chunk(p) for p in SSE_BODY_PIECES], LAST_CHUNK, pause=0.01)
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
        route = fixed(head, *SSE_BODY_PIECES, pause=0.01, then="close")
    server = await serve(routes({"/v1/chat/completions": route}))
    session = session_for(server.origin)

    resp = await session.request("POST", f"{server.origin}/v1/chat/completions", data=b"{}")
    assert resp.content_type == "text/event-stream"
    stream = session.sse(resp)
    assert await asyncio.wait_for(collect(stream), 5) == SSE_EVENTS
    assert stream.complete


async def test_sse_buffered_when_several_events_arrived_in_one_read(serve: Serve, session_for: MakeSession) -> None:
    go_on = asyncio.Event()

    async def route(conn: RawConn, req: RawRequest) -> None:
        await conn.send(SSE_HEAD + chunk(b"data: 1\n\ndata: 2\n\ndata: 3\n\n"))
        await go_on.wait()
        await conn.send(chunk(b"data: 4\n\n") + LAST_CHUNK)

    server = await serve(routes({"/v1/s": route}))
    session = session_for(server.origin)
    stream = session.sse(await session.request("GET", f"{server.origin}/v1/s"))

    seen = []
    for _ in range(3):
        event = await asyncio.wait_for(anext(stream), 2)
        seen.append((event.data, stream.buffered()))
    assert seen == [(b"1", True), (b"2", True), (b"3", False)]
    go_on.set()
    assert (await asyncio.wait_for(anext(stream), 2)).data == b"4"
    assert not stream.buffered()
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


@pytest.mark.parametrize("to_the_end", [True, False], ids=["iterated-to-the-end", "last-event-taken"])
async def test_sse_close_after_complete_body_reuses_the_connection(
    serve: Serve, session_for: MakeSession, to_the_end: bool
) -> None:
    body = b"data: 1\n\ndata: 2\n\n"
    server = await serve(routes({"/v1/s": fixed(SSE_HEAD + chunk(body) + LAST_CHUNK)}))
    session = session_for(server.origin)
    url = f"{server.origin}/v1/s"

    stream = session.sse(await session.request("GET", url))
    if to_the_end:
        assert [e.data for e in await collect(stream)] == [b"1", b"2"]
    else:
        assert (await anext(stream)).data == b"1"
        assert (await anext(stream)).data == b"2"
        await eventually(lambda: stream.complete)
    stream.close()

    stream = session.sse(await session.request("GET", url))
    assert [e.data for e in await collect(stream)] == [b"1", b"2"]
    assert server.accepts == 1
    assert session.transport._limit._value == 2


async def test_sse_close_on_partial_body_closes_the_connection(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(routes({"/v1/s": sse_route(b"data: 1\n\n", then="hang")}))
    session = session_for(server.origin, max_connections=1)
    url = f"{server.origin}/v1/s"

    stream = session.sse(await session.request("GET", url))
    assert (await asyncio.wait_for(anext(stream), 2)).data == b"1"
    assert not stream.complete
    stream.close()
    await closed_by_client(server.conns[0])
    assert session.transport._limit._value == 1

    resp = await session.request("GET", f"{server.origin}/ok")
    assert await resp.read() == b"ok"
    assert server.accepts == 2


async def test_iter_sse_stopped_early_closes_the_connection(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(routes({"/v1/s": sse_route(b"data: 1\n\ndata: 2\n\n", then="hang")}))
    session = session_for(server.origin, max_connections=1)

    resp = await session.request("GET", f"{server.origin}/v1/s")
    iterator = session.iter_sse(resp)
    assert isinstance(iterator, AsyncGenerator)  # closable: `aclose()` is how a consumer stops early
    async with contextlib.aclosing(iterator) as events:
        async for event in events:
            assert event.data == b"1"
            break
    await closed_by_client(server.conns[0])
    assert session.transport._limit._value == 1


async def test_session_connect_failure_is_502_upstream_unreachable(session_for: MakeSession) -> None:
    origin = f"http://127.0.0.1:{unused_port()}"
    session = session_for(origin)

    with pytest.raises(BadGatewayError) as info:
        await asyncio.wait_for(session.request("POST", f"{origin}/v1/chat/completions", data=b"{}"), 2)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_unreachable"
    assert "127.0.0.1" not in info.value.message  # the message names the deployment, never its URL
    assert "'m'" in info.value.message
    assert session.transport._limit._value == 2


async def test_session_connect_timeout_is_504(session_for: MakeSession) -> None:
    with silent_port() as port:
        origin = f"http://127.0.0.1:{port}"
        session = session_for(origin, connect=0.1)
        with pytest.raises(GatewayTimeoutError) as info:
            await asyncio.wait_for(session.request("GET", f"{origin}/v1/models"), 2)
        assert info.value.status_code == 504


async def test_session_upstream_5xx_is_502(serve: Serve, session_for: MakeSession) -> None:
    body = b'{"error": {"message": "overloaded", "type": "server_error"}}'
    server = await serve(routes({"/v1/x": fixed(response(503, body, "Retry-After: 3", reason="Busy"))}))
    session = session_for(server.origin)

    with pytest.raises(BadGatewayError) as info:
        await session.request("POST", f"{server.origin}/v1/x", data=b"{}")
    assert info.value.status_code == 502
    assert info.value.code == "upstream_error"
    assert "503" in info.value.message
    assert "overloaded" in info.value.message
    # The error body was read to its end: the connection serves the next request.
    assert await (await session.request("GET", f"{server.origin}/ok")).read() == b"ok"
    assert server.accepts == 1


async def test_session_upstream_429_keeps_status_and_retry_after(serve: Serve, session_for: MakeSession) -> None:
    body = b'{"error": {"message": "slow down", "type": "rate_limit_error", "code": "rate_limited"}}'
    head = ["Retry-After: 7", "retry-after-ms: 7000", "Content-Type: application/json", "Set-Cookie: s=1"]
    server = await serve(routes({"/v1/x": fixed(response(429, body, *head, reason="Too Many Requests"))}))
    session = session_for(server.origin)

    with pytest.raises(UpstreamError) as info:
        await session.request("POST", f"{server.origin}/v1/x", data=b"{}")
    err = info.value
    assert err.status_code == 429
    assert err.headers == {"retry-after": "7", "retry-after-ms": "7000"}
    assert err.to_dict()["error"] == {
        "message": "slow down",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limited",
    }
    assert session.transport._limit._value == 2
    assert server.accepts == 1


async def test_session_upstream_4xx_with_a_cut_error_body(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(routes({"/v1/x": fixed(response(404, b"0123456789")[:-4], then="close")}))
    session = session_for(server.origin)

    with pytest.raises(UpstreamError) as info:
        await session.request("GET", f"{server.origin}/v1/x")
    assert info.value.status_code == 404
    assert session.transport._limit._value == 2


async def test_session_read_timeout_is_504(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(routes({"/v1/x": hang}))
    session = session_for(server.origin, first_byte=0.1)

    started = time.monotonic()
    with pytest.raises(GatewayTimeoutError) as info:
        await asyncio.wait_for(session.request("POST", f"{server.origin}/v1/x", data=b"{}"), 2)
    assert time.monotonic() - started < 1.0
    assert info.value.status_code == 504
    assert "did not answer in time" in info.value.message
    await closed_by_client(server.conns[0])
    assert session.transport._limit._value == 2


async def test_session_garbage_is_502(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(routes({"/v1/x": fixed(b"not http at all\r\n\r\n", then="hang")}))
    session = session_for(server.origin)

    with pytest.raises(BadGatewayError) as info:
        await session.request("GET", f"{server.origin}/v1/x")
    assert info.value.status_code == 502
    assert "ProtocolError" in info.value.message


async def test_sse_stream_stalling_is_504(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(routes({"/v1/s": sse_route(b"data: 1\n\n", then="hang")}))
    session = session_for(server.origin, first_byte=0.1)

    stream = session.sse(await session.request("GET", f"{server.origin}/v1/s"))
    assert (await anext(stream)).data == b"1"
    with pytest.raises(GatewayTimeoutError) as info:
        await asyncio.wait_for(anext(stream), 2)
    assert info.value.status_code == 504
    assert "stopped sending" in info.value.message
    await closed_by_client(server.conns[0])
    assert session.transport._limit._value == 2


async def test_sse_stream_cut_is_502(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(routes({"/v1/s": sse_route(b"data: 1\n\n", b"data: 2", then="close")}))
    session = session_for(server.origin)

    stream = session.sse(await session.request("GET", f"{server.origin}/v1/s"))
    with pytest.raises(BadGatewayError) as info:
        await asyncio.wait_for(collect(stream), 2)
    assert info.value.status_code == 502
    assert "cut the stream" in info.value.message
    assert session.transport._limit._value == 2


async def test_sse_total_timeout_is_504(serve: Serve, session_for: MakeSession) -> None:
    async def endless(conn: RawConn, req: RawRequest) -> None:
        await conn.send(SSE_HEAD)
        while True:
            await conn.send(chunk(b"data: tick\n\n"))
            await asyncio.sleep(0.05)

    server = await serve(routes({"/v1/s": endless}))
    session = session_for(server.origin, first_byte=1.0, total=0.2)

    stream = session.sse(await session.request("GET", f"{server.origin}/v1/s"))
    started = time.monotonic()
    with pytest.raises(GatewayTimeoutError) as info:
        await asyncio.wait_for(collect(stream), 2)
    assert 0.15 < time.monotonic() - started < 1.0
    assert "did not finish in time" in info.value.message
    await eventually(lambda: server.active == 0)  # the client closed the connection: the endless writer stopped
    assert session.transport._limit._value == 2


async def test_session_post_json(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(
        routes(
            {
                "/v1/good": fixed(response(200, b'{"id": "x", "n": [1, 2]}', "Content-Type: application/json")),
                "/v1/bad": fixed(response(200, b'{"id": ', "Content-Type: application/json")),
            }
        )
    )
    session = session_for(server.origin)

    assert await session.post_json(f"{server.origin}/v1/good", b"{}", {}) == {"id": "x", "n": [1, 2]}
    with pytest.raises(BadGatewayError) as info:
        await session.post_json(f"{server.origin}/v1/bad", b"{}", {})
    assert "malformed JSON" in info.value.message
    assert server.accepts == 1


async def test_session_post_json_total_timeout_is_504(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(routes({"/v1/x": fixed(CHUNKED_HEAD, chunk(b"{"), chunk(b'"a"'), pause=0.15, then="hang")}))
    session = session_for(server.origin, first_byte=1.0, total=0.25)

    with pytest.raises(GatewayTimeoutError) as info:
        await asyncio.wait_for(session.post_json(f"{server.origin}/v1/x", b"{}", {}), 2)
    assert "did not finish in time" in info.value.message
    await closed_by_client(server.conns[0])
    assert session.transport._limit._value == 2


async def test_session_probe(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(routes({"/v1/models": fixed(response(401, b"no key"))}))
    session = session_for(server.origin)
    assert await session.probe(f"{server.origin}/v1/models") == 401

    origin = f"http://127.0.0.1:{unused_port()}"
    assert await session_for(origin).probe(f"{origin}/v1/models") is None


async def test_session_rejects_urls_of_another_origin(session_for: MakeSession) -> None:
    session = session_for("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        await session.request("GET", "http://127.0.0.2:1/v1/models")


# == TLS =========================================================================================================


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return tls_pair()


async def test_https_request_and_keep_alive(
    serve: Serve, pool_for: MakePool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls
    server = await serve(ssl_context=server_ctx)
    pool = pool_for(server, ssl_context=client_ctx)

    assert server.origin.startswith("https://")
    assert await fetch(pool) == (200, b"ok")
    assert await fetch(pool) == (200, b"ok")
    assert server.accepts == 1
    assert server.conns[0].requests[0].header("host") == f"127.0.0.1:{server.port}"


async def test_https_streamed_and_closed_early(
    serve: Serve, pool_for: MakePool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, client_ctx = tls
    server = await serve(routes({"/half": fixed(CHUNKED_HEAD + chunk(b"a"), then="hang")}), ssl_context=server_ctx)
    pool = pool_for(server, ssl_context=client_ctx, limit=1)

    resp = await get(pool, "/half")
    assert await resp.next_chunk() == b"a"
    resp.close()
    await closed_by_client(server.conns[0])
    await assert_permits_free(pool, 1)


async def test_https_untrusted_certificate_is_a_connect_error(
    serve: Serve, pool_for: MakePool, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_ctx, _ = tls
    server = await serve(ssl_context=server_ctx)
    # A verifying client context that does not trust the test certificate (like the system's CAs, but no loading).
    pool = pool_for(server, limit=1, ssl_context=ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))

    for _ in range(2):
        with pytest.raises(ConnectError) as info:
            await get(pool)
        assert "certificate" in str(info.value).lower()
    assert pool._limit._value == 1
