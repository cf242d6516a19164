"""Upstream HTTP you can trust (issue 11): the defects found in the built-in client, each reproduced against a
raw server on 127.0.0.1 whose bytes the test scripts, plus the transport seam (an in-memory transport, httpx),
proxies (a CONNECT proxy on 127.0.0.1) and TLS options (a CA made in the test run, mutual TLS too).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from manifold.config import Deployment, OpenAIDeployment, Timeouts
from manifold.errors import BadGatewayError, ConfigError, InvalidRequestError, RateLimitError
from manifold.providers.base import Call
from manifold.providers.httpx_transport import HttpxTransport
from manifold.providers.transport import (
    ConnectionPool,
    Disconnected,
    InvalidHeader,
    ResponseTooLarge,
    tls_context,
)
from manifold.providers.upstream_http import UpstreamSession
from manifold.routing.router import ATTEMPTS_HEADER, Router
from manifold.validation import parse_config
from tests.fakes.certificates import GeneratedCA, make_test_ca
from tests.fakes.connect_proxy import ConnectProxy
from tests.fakes.memory_transport import MemoryTransport, Scripted
from tests.fakes.raw_http_server import RawConn, RawRequest, RawServer

# -- helpers -----------------------------------------------------------------------------------------------------

Route = Callable[[RawConn, RawRequest], Awaitable[bool | None]]


def response(status: int = 200, body: bytes = b"", *headers: str, length: bool = True) -> bytes:
    lines = [f"HTTP/1.1 {status} X", *headers]
    if length:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


OK = response(200, b"ok", "Content-Type: text/plain")
JSON_OK = response(200, b'{"id": "x"}', "Content-Type: application/json")
SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"


def fixed(*parts: bytes, then: str = "keep") -> Route:
    async def route(conn: RawConn, req: RawRequest) -> bool | None:
        for part in parts:
            await conn.send(part)
            await asyncio.sleep(0.005)
        if then == "close":
            return False
        if then == "reset":
            conn.abort()
            return False
        if then == "hang":
            await conn.wait_closed_by_peer()
            return False
        return None

    return route


def routes(table: dict[str, Route] | None = None) -> Callable[[RawConn], Awaitable[None]]:
    table = table or {}

    async def answer_ok(conn: RawConn, req: RawRequest) -> None:
        await conn.send(OK)

    async def handler(conn: RawConn) -> None:
        while (req := await conn.read_request()) is not None:
            if await table.get(req.target, answer_ok)(conn, req) is False:
                return

    return handler


Serve = Callable[..., Awaitable[RawServer]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[RawServer] = []

    async def start(handler: Any = None, *, ssl_context: Any = None) -> RawServer:
        server = await RawServer(handler or routes(), ssl_context=ssl_context).start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.aclose()


MakeSession = Callable[..., UpstreamSession]


@pytest.fixture
async def session_for() -> AsyncIterator[MakeSession]:
    made: list[UpstreamSession] = []

    def make(origin: str, **fields: Any) -> UpstreamSession:
        fields.setdefault("timeouts", Timeouts(connect=2.0, first_byte=2.0))
        fields.setdefault("max_connections", 2)
        deployment = parse_deployment({"model_name": "m", "provider": "openai", "api_base": f"{origin}/v1", **fields})
        session = UpstreamSession(deployment)
        made.append(session)
        return session

    yield make
    for session in made:
        await session.aclose()


def parse_deployment(fields: dict[str, Any]) -> Deployment:
    import msgspec

    return msgspec.convert(
        {k: msgspec.to_builtins(v) if isinstance(v, Timeouts) else v for k, v in fields.items()}, Deployment
    )


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> GeneratedCA:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    p = await ConnectProxy().start()
    yield p
    await p.aclose()


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


# == 1. a request that reached the upstream is never sent twice; a re-send is counted ==============================


def _chat_call(content: str) -> Call:
    return Call({"model": "m", "messages": [{"role": "user", "content": content}]}, "m", "req_1", False)


async def test_resend_counts_as_an_attempt_and_a_delivered_request_is_not_resent(serve: Serve) -> None:
    completion = response(
        200,
        b'{"id":"c","object":"chat.completion","created":1,"model":"m","choices":[{"index":0,'
        b'"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}]}',
        "Content-Type: application/json",
    )
    plan = ["answer", "reset-while-writing", "answer", "answer", "read-then-drop"]

    async def handler(conn: RawConn) -> None:
        while plan:
            step = plan.pop(0)
            if step == "reset-while-writing":
                await conn.reader.read(1)  # the request has begun to arrive; reset with most of it unread
                conn.abort()
                return
            if await conn.read_request() is None:
                return
            if step == "read-then-drop":
                conn.close()  # read to its end, then dropped without an answer: it may have been acted on
                return
            await conn.send(completion)

    server = await serve(handler)
    deployment = OpenAIDeployment(model_name="m", api_base=f"{server.origin}/v1", timeouts=Timeouts(first_byte=5.0))
    from manifold.config import RouterSettings

    router = Router([deployment], settings=RouterSettings(num_retries=0))
    try:
        seen: dict[str, str] = {}
        await router.chat(_chat_call("hello"), seen.__setitem__)
        assert seen[ATTEMPTS_HEADER] == "1"

        big = "x" * (32 * 1024 * 1024)  # still being written when the reused connection is reset
        await asyncio.wait_for(router.chat(_chat_call(big), seen.__setitem__), 20)
        assert seen[ATTEMPTS_HEADER] == "2"
        assert server.accepts == 2

        # The other side: the upstream read the whole request on a reused connection and then dropped it.
        seen.clear()
        await router.chat(_chat_call("warm"), seen.__setitem__)
        with pytest.raises(BadGatewayError):
            await router.chat(_chat_call("only once"), seen.__setitem__)
        assert seen[ATTEMPTS_HEADER] == "1"
        bodies = [r.body for c in server.conns for r in c.requests]
        assert sum(b"only once" in b for b in bodies) == 1
    finally:
        await router.aclose()


async def test_a_connection_already_closing_when_the_request_goes_out_is_not_used(serve: Serve) -> None:
    # The upstream's close of an idle connection was seen (the transport is closing) but not yet delivered as
    # connection_lost: not a byte went out on it, so the request goes on a fresh connection, counted as a re-send.
    server = await serve()
    pool = ConnectionPool(server.origin, read_timeout=2.0, limit=1)
    try:
        assert await (await pool.request("GET", "/ok", {})).read() == b"ok"
        (idle,) = pool._idle
        assert idle.transport is not None
        idle.transport.close()
        resp = await pool.request("POST", "/ok", {}, b"payload")
        assert await resp.read() == b"ok"
        assert resp.resends == 1
        assert server.accepts == 2
        assert [r.body for r in server.conns[1].requests] == [b"payload"]
        assert [r.body for r in server.conns[0].requests] == [b""]
    finally:
        await pool.aclose()


# == 2. a close-delimited body cut by a reset is not complete ======================================================

CLOSE_DELIMITED_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"


async def test_close_delimited_body_cut_by_a_reset_is_an_error(serve: Serve) -> None:
    server = await serve(routes({"/cut": fixed(CLOSE_DELIMITED_HEAD + b"part one, ", then="reset")}))
    pool = ConnectionPool(server.origin, read_timeout=2.0)
    try:
        resp = await pool.request("GET", "/cut", {})
        with pytest.raises(Disconnected):
            await asyncio.wait_for(resp.read(), 2)
        assert not resp.complete

        resp = await pool.request("GET", "/cut", {})
        assert await asyncio.wait_for(resp.next_chunk(), 2) == b"part one, "
        with pytest.raises(Disconnected):
            await asyncio.wait_for(resp.next_chunk(), 2)
        assert not resp.complete
    finally:
        await pool.aclose()


async def test_close_delimited_body_ended_by_a_clean_close_is_complete(serve: Serve) -> None:
    server = await serve(routes({"/eof": fixed(CLOSE_DELIMITED_HEAD + b"all of it", then="close")}))
    pool = ConnectionPool(server.origin, read_timeout=2.0)
    try:
        resp = await pool.request("GET", "/eof", {})
        assert await asyncio.wait_for(resp.read(), 2) == b"all of it"
        assert resp.complete
    finally:
        await pool.aclose()


async def test_close_delimited_stream_cut_by_a_reset_is_a_502(serve: Serve, session_for: MakeSession) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
    server = await serve(routes({"/v1/s": fixed(head + b"data: 1\n\n", then="reset")}))
    session = session_for(server.origin)
    stream = session.sse(await session.request("GET", f"{server.origin}/v1/s"))
    assert (await asyncio.wait_for(anext(stream), 2)).data == b"1"
    with pytest.raises(BadGatewayError) as info:
        await asyncio.wait_for(anext(stream), 2)
    assert "cut the stream" in info.value.message


# == 3. size limits ===============================================================================================


async def test_an_8_mib_response_header_is_refused(serve: Serve, session_for: MakeSession) -> None:
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (8 * 1024 * 1024) + b"\r\nContent-Length: 2\r\n\r\nok"
    server = await serve(routes({"/v1/x": fixed(head, then="hang")}))
    session = session_for(server.origin)
    with pytest.raises(BadGatewayError) as info:
        await asyncio.wait_for(session.request("GET", f"{server.origin}/v1/x"), 5)
    assert info.value.status_code == 502
    assert info.value.code == "upstream_response_too_large"
    assert "limits.max_header_bytes" in info.value.message
    assert session.transport._limit._value == 2  # type: ignore[attr-defined]


@pytest.mark.parametrize("count", [300, 100_000])
@pytest.mark.parametrize("names", ["distinct", "repeated"])
async def test_too_many_response_headers_are_refused(
    serve: Serve, session_for: MakeSession, count: int, names: str
) -> None:
    lines = (b"h%d: v\r\n" % i if names == "distinct" else b"h: v\r\n" for i in range(count))
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(lines) + b"Content-Length: 0\r\n\r\n"
    server = await serve(routes({"/v1/x": fixed(head, then="hang")}))
    session = session_for(server.origin)
    with pytest.raises(BadGatewayError) as info:
        await asyncio.wait_for(session.request("GET", f"{server.origin}/v1/x"), 5)
    assert "limits.max_header" in info.value.message  # the count (or, for 100,000, possibly the size)
    if count == 300:
        assert "more than 256 response headers (limits.max_headers)" in info.value.message


async def test_the_limits_can_be_raised(serve: Serve, session_for: MakeSession) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(300)) + b"Content-Length: 2\r\n\r\nok"
    server = await serve(routes({"/v1/x": fixed(head)}))
    session = session_for(server.origin, limits={"max_headers": 400})
    resp = await session.request("GET", f"{server.origin}/v1/x")
    assert await resp.read() == b"ok"


BOMB = gzip.compress(b"\0" * (200 * 1024 * 1024), compresslevel=9)  # about 200 KB on the wire


async def test_a_gzip_bomb_is_refused_by_default(serve: Serve, session_for: MakeSession) -> None:
    assert len(BOMB) < 300_000
    head = response(200, BOMB, "Content-Type: application/json", "Content-Encoding: gzip")
    server = await serve(routes({"/v1/x": fixed(head)}))
    session = session_for(server.origin)
    with pytest.raises(BadGatewayError) as info:
        await session.post_json(f"{server.origin}/v1/x", b"{}", {})
    assert info.value.code == "upstream_response_too_large"
    assert f"larger than {128 * 1024 * 1024} bytes (limits.max_body_bytes)" in info.value.message


async def test_a_decoded_stream_past_the_body_limit_is_refused(serve: Serve, session_for: MakeSession) -> None:
    events = b"".join(b'data: {"n": %d}\n\n' % i for i in range(20_000))  # about 300 KB decoded
    compressed = zlib.compress(events)
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: deflate\r\n"
    server = await serve(routes({"/v1/s": fixed(head + b"Transfer-Encoding: chunked\r\n\r\n" + chunk(compressed))}))
    session = session_for(server.origin, limits={"max_body_bytes": 100_000})
    stream = session.sse(await session.request("GET", f"{server.origin}/v1/s"))
    with pytest.raises(BadGatewayError) as info:
        async for _ in stream:
            pass
    assert "limits.max_body_bytes" in info.value.message


async def test_a_whole_body_past_the_limit_is_refused(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(routes({"/v1/x": fixed(response(200, b"[" + b"1," * 100_000 + b"1]"), then="hang")}))
    session = session_for(server.origin, limits={"max_body_bytes": 50_000})
    with pytest.raises(BadGatewayError) as info:
        await asyncio.wait_for(session.post_json(f"{server.origin}/v1/x", b"{}", {}), 5)
    assert "limits.max_body_bytes" in info.value.message


async def test_an_sse_line_past_the_limit_is_a_502_before_the_stream(serve: Serve, session_for: MakeSession) -> None:
    line = b"data: " + b"z" * 200_000
    server = await serve(
        routes({"/v1/s": fixed(SSE_HEAD, *[chunk(line[i : i + 4096]) for i in range(0, len(line), 4096)], then="hang")})
    )
    session = session_for(server.origin, limits={"max_sse_line_bytes": 100_000})
    stream = session.sse(await session.request("GET", f"{server.origin}/v1/s"))
    with pytest.raises(BadGatewayError) as info:
        await asyncio.wait_for(anext(stream), 5)
    assert "limits.max_sse_line_bytes" in info.value.message
    assert session.transport._limit._value == 2  # type: ignore[attr-defined]


async def test_an_sse_line_past_the_limit_mid_stream_ends_it(serve: Serve, session_for: MakeSession) -> None:
    server = await serve(
        routes({"/v1/s": fixed(SSE_HEAD, chunk(b"data: 1\n\n"), chunk(b"data: " + b"z" * 200_000), then="hang")})
    )
    session = session_for(server.origin, limits={"max_sse_line_bytes": 100_000})
    stream = session.sse(await session.request("GET", f"{server.origin}/v1/s"))
    assert (await asyncio.wait_for(anext(stream), 2)).data == b"1"
    with pytest.raises(BadGatewayError) as info:
        await asyncio.wait_for(anext(stream), 5)
    assert "limits.max_sse_line_bytes" in info.value.message


# == 4. header injection ==========================================================================================

BAD_VALUES = [("a\r\nX-Injected: 1", "line break"), ("a\nb", "line break"), ("a\0b", "NUL"), ("é€", "latin-1")]


@pytest.mark.parametrize(("value", "why"), BAD_VALUES)
def test_config_headers_that_would_break_the_request_are_refused_at_load(value: str, why: str) -> None:
    deployment = {"model_name": "m", "provider": "openai", "api_base": "http://127.0.0.1:1/v1"}
    with pytest.raises(ConfigError) as info:
        parse_config({"model_list": [{**deployment, "headers": {"X-Tenant": value}}]})
    assert any(p.startswith("model_list[0].headers.X-Tenant:") and why in p for p in info.value.problems)


def test_an_api_key_with_a_line_break_is_refused_without_echoing_it() -> None:
    deployment = {"model_name": "m", "provider": "openai", "api_base": "http://127.0.0.1:1/v1"}
    with pytest.raises(ConfigError) as info:
        parse_config({"model_list": [{**deployment, "api_key": "sk-secret\r\nX-Injected: 1"}]})
    problems = "\n".join(info.value.problems)
    assert "model_list[0].api_key:" in problems
    assert "sk-secret" not in problems


@pytest.mark.parametrize(("value", "why"), BAD_VALUES)
async def test_request_headers_that_would_break_the_request_are_a_400(
    serve: Serve, session_for: MakeSession, value: str, why: str
) -> None:
    server = await serve()
    session = session_for(server.origin)
    with pytest.raises(InvalidRequestError) as info:
        await session.request("POST", f"{server.origin}/v1/x", data=b"{}", headers={"x-client-tag": value})
    assert info.value.status_code == 400
    assert info.value.param == "x-client-tag"
    assert "x-client-tag" in info.value.message
    assert server.accepts == 0  # nothing reached the wire
    resp = await session.request("POST", f"{server.origin}/v1/x", data=b"{}", headers={"x-client-tag": "fine"})
    assert await resp.read() == b"ok"


def test_the_check_costs_nothing_for_good_headers() -> None:
    pool = ConnectionPool("http://127.0.0.1:1")
    head = pool.encode_request("POST", "/v1/x", {"a": "1", "b": "two words"}, b"{}")
    assert head == b"POST /v1/x HTTP/1.1\r\nhost: 127.0.0.1:1\r\na: 1\r\nb: two words\r\ncontent-length: 2\r\n\r\n{}"
    with pytest.raises(InvalidHeader) as info:
        pool.encode_request("GET", "/", {"a": "1", "x-bad": "x\r\ny: 1"}, None)
    assert info.value.name == "x-bad"


# == 5. a bounded wait for a pooled connection ====================================================================


async def test_waiting_for_a_pooled_connection_is_bounded_and_answered_429(
    serve: Serve, session_for: MakeSession
) -> None:
    server = await serve(routes({"/v1/slow": fixed(SSE_HEAD, chunk(b"data: 1\n\n"), then="hang")}))
    session = session_for(server.origin, max_connections=1, timeouts={"connect": 2.0, "first_byte": 2.0, "pool": 0.2})
    held = await session.request("GET", f"{server.origin}/v1/slow")  # holds the only connection
    with pytest.raises(RateLimitError) as info:
        await asyncio.wait_for(session.request("GET", f"{server.origin}/v1/other"), 3)
    err = info.value
    assert err.status_code == 429
    assert err.code == "concurrency_limit_exceeded"
    assert err.headers == {"retry-after": "1"}
    held.close()
    resp = await session.request("GET", f"{server.origin}/v1/other")
    assert await resp.read() == b"ok"


# == 7 and issue 10 §5: only an answer is an answer ================================================================


@pytest.mark.parametrize(
    ("wire", "named"),
    [
        (response(301, b"", "Location: https://elsewhere.example/v1/x"), "redirect (status 301)"),
        (response(302, b'{"object": "chat.completion"}', "Content-Type: application/json"), "redirect (status 302)"),
        (response(307, b"<html>moved</html>", "Content-Type: text/html"), "redirect (status 307)"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", "status 204"),
        (response(202, b'{"id": "job"}', "Content-Type: application/json"), "status 202"),
    ],
)
async def test_statuses_that_carry_no_answer_are_a_502(
    serve: Serve, session_for: MakeSession, wire: bytes, named: str
) -> None:
    server = await serve(routes({"/v1/x": fixed(wire)}))
    session = session_for(server.origin)
    for call in (
        lambda: session.post_json(f"{server.origin}/v1/x", b"{}", {}),
        lambda: session.request("POST", f"{server.origin}/v1/x", data=b"{}"),
    ):
        with pytest.raises(BadGatewayError) as info:
            await call()
        assert info.value.status_code == 502
        assert named in info.value.message
        assert info.value.code == "upstream_unexpected_status"
        assert "elsewhere" not in info.value.message  # never the upstream's URLs
    assert session.transport._limit._value == 2  # type: ignore[attr-defined]


# == 6. proxies and TLS options ===================================================================================


@pytest.mark.parametrize("transport", ["builtin", "httpx"])
async def test_https_upstream_through_a_connect_proxy_from_the_environment(
    serve: Serve,
    session_for: MakeSession,
    proxy: ConnectProxy,
    ca: GeneratedCA,
    monkeypatch: pytest.MonkeyPatch,
    transport: str,
) -> None:
    server = await serve(ssl_context=ca.server_context())
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    session = session_for(server.origin, tls={"ca_file": str(ca.ca_file)}, transport=transport)
    for _ in range(2):
        resp = await session.request("GET", f"{server.origin}/ok")
        assert await resp.read() == b"ok"
    assert [(r.method, r.target) for r in proxy.requests] == [("CONNECT", f"127.0.0.1:{server.port}")]
    assert server.conns[0].requests[0].target == "/ok"  # TLS end to end: the proxy saw only the tunnel
    assert server.accepts == 1


async def test_no_proxy_and_proxy_false_go_direct(
    serve: Serve, session_for: MakeSession, proxy: ConnectProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await serve()
    monkeypatch.setenv("HTTP_PROXY", proxy.url)
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    resp = await session_for(server.origin).request("GET", f"{server.origin}/ok")
    assert await resp.read() == b"ok"
    monkeypatch.delenv("NO_PROXY")
    resp = await session_for(server.origin, proxy=False).request("GET", f"{server.origin}/ok")
    assert await resp.read() == b"ok"
    assert proxy.requests == []


async def test_http_upstream_through_a_configured_proxy_with_credentials(
    serve: Serve, session_for: MakeSession, proxy: ConnectProxy
) -> None:
    server = await serve()
    session = session_for(server.origin, proxy=f"http://user:p%40ss@127.0.0.1:{proxy.port}")
    resp = await session.request("GET", f"{server.origin}/v1/models")
    assert await resp.read() == b"ok"
    (seen,) = proxy.requests
    assert seen.target == f"http://127.0.0.1:{server.port}/v1/models"  # the absolute form a proxy needs
    assert seen.headers["proxy-authorization"] == "Basic " + base64.b64encode(b"user:p@ss").decode()
    assert seen.headers["host"] == f"127.0.0.1:{server.port}"


async def test_a_proxy_that_refuses_the_tunnel_is_a_502(
    serve: Serve, session_for: MakeSession, ca: GeneratedCA
) -> None:
    refusing = await ConnectProxy(refuse_with=407).start()
    try:
        server = await serve(ssl_context=ca.server_context())
        session = session_for(
            server.origin, proxy=f"http://user:hunter2@127.0.0.1:{refusing.port}", tls={"ca_file": str(ca.ca_file)}
        )
        with pytest.raises(BadGatewayError) as info:
            await session.request("GET", f"{server.origin}/ok")
        assert info.value.code == "upstream_unreachable"
        assert "hunter2" not in info.value.message
        assert server.accepts == 0
    finally:
        await refusing.aclose()


async def test_tls_with_a_private_ca(serve: Serve, session_for: MakeSession, ca: GeneratedCA) -> None:
    server = await serve(ssl_context=ca.server_context())
    with pytest.raises(BadGatewayError) as info:  # the system's CAs do not know the test CA
        await session_for(server.origin).request("GET", f"{server.origin}/ok")
    assert info.value.code == "upstream_unreachable"
    resp = await session_for(server.origin, tls={"ca_file": str(ca.ca_file)}).request("GET", f"{server.origin}/ok")
    assert await resp.read() == b"ok"
    resp = await session_for(server.origin, tls={"verify": False}).request("GET", f"{server.origin}/ok")
    assert await resp.read() == b"ok"


@pytest.mark.parametrize("transport", ["builtin", "httpx"])
async def test_mutual_tls(serve: Serve, session_for: MakeSession, ca: GeneratedCA, transport: str) -> None:
    server = await serve(ssl_context=ca.server_context(require_client_cert=True))
    without = session_for(server.origin, tls={"ca_file": str(ca.ca_file)}, transport=transport)
    with pytest.raises(BadGatewayError):
        resp = await without.request("GET", f"{server.origin}/ok")
        await without.read_json(resp)
    with_cert = session_for(
        server.origin,
        tls={"ca_file": str(ca.ca_file), "cert_file": str(ca.client_cert), "key_file": str(ca.client_key)},
        transport=transport,
    )
    resp = await with_cert.request("GET", f"{server.origin}/ok")
    assert await resp.read() == b"ok"


def test_tls_and_proxy_options_are_checked_at_load(tmp_path: Path) -> None:
    deployment = {"model_name": "m", "provider": "openai", "api_base": "https://127.0.0.1:1/v1"}
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "model_list": [
                    {**deployment, "tls": {"ca_file": str(tmp_path / "missing.pem")}},
                    {**deployment, "tls": {"key_file": "k.pem"}},
                    {**deployment, "proxy": "socks5://127.0.0.1:1080"},
                    {**deployment, "proxy": True},
                    {**deployment, "transport": "carrier-pigeon"},
                ]
            }
        )
    problems = info.value.problems
    assert any(p.startswith("model_list[0].tls:") for p in problems)
    assert any(p.startswith("model_list[1].tls.key_file:") for p in problems)
    assert any(p.startswith("model_list[2].proxy:") for p in problems)
    assert any(p.startswith("model_list[3].proxy:") for p in problems)
    assert any(p.startswith("model_list[4].transport") for p in problems)


# == the transport seam ===========================================================================================


async def test_an_in_memory_transport_behind_the_session() -> None:
    transport = MemoryTransport(
        [
            Scripted(200, {"Content-Type": "application/json"}, [b'{"id": ', b'"x"}']),
            Scripted(200, {"Content-Type": "text/event-stream"}, [b"data: 1\n\nda", b"ta: 2\n\n"]),
            Scripted(302, {"Location": "/elsewhere"}, [b"{}"]),
        ]
    )
    deployment = OpenAIDeployment(model_name="m", api_base="http://upstream.invalid/v1")
    session = UpstreamSession(deployment, transport=transport)
    assert await session.post_json("http://upstream.invalid/v1/x", b"{}", {"k": "v"}) == {"id": "x"}
    stream = session.sse(await session.request("POST", "http://upstream.invalid/v1/s", data=b"{}"))
    assert [e.data async for e in stream] == [b"1", b"2"]
    with pytest.raises(BadGatewayError):
        await session.post_json("http://upstream.invalid/v1/x", b"{}", {})
    assert transport.responses[2].closed
    first = transport.sent[0]
    assert (first.method, first.target, first.headers, first.body) == ("POST", "/v1/x", {"k": "v"}, b"{}")
    await session.aclose()
    assert transport.closed


def test_transport_httpx_is_chosen_per_deployment() -> None:
    builtin = UpstreamSession(OpenAIDeployment(model_name="m", api_base="http://127.0.0.1:1/v1"))
    chosen = UpstreamSession(OpenAIDeployment(model_name="m", api_base="http://127.0.0.1:1/v1", transport="httpx"))
    assert isinstance(builtin.transport, ConnectionPool)
    assert isinstance(chosen.transport, HttpxTransport)


async def test_httpx_transport_keeps_the_contract(serve: Serve, session_for: MakeSession) -> None:
    many = b"HTTP/1.1 200 OK\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(300)) + b"Content-Length: 0\r\n\r\n"
    server = await serve(
        routes(
            {
                "/v1/json": fixed(JSON_OK),
                "/v1/s": fixed(SSE_HEAD, chunk(b"data: 1\n\n"), chunk(b"data: 2\n\n"), b"0\r\n\r\n"),
                "/v1/redirect": fixed(response(301, b"", "Location: /v2")),
                "/v1/many": fixed(many),
                "/v1/bomb": fixed(response(200, BOMB, "Content-Type: application/json", "Content-Encoding: gzip")),
            }
        )
    )
    session = session_for(server.origin, transport="httpx")
    assert await session.post_json(f"{server.origin}/v1/json", b"{}", {}) == {"id": "x"}
    stream = session.sse(await session.request("POST", f"{server.origin}/v1/s", data=b"{}"))
    assert [e.data async for e in stream] == [b"1", b"2"]
    with pytest.raises(BadGatewayError, match="redirect"):
        await session.post_json(f"{server.origin}/v1/redirect", b"{}", {})
    with pytest.raises(BadGatewayError, match=r"limits\.max_headers"):
        await session.post_json(f"{server.origin}/v1/many", b"{}", {})
    with pytest.raises(BadGatewayError, match=r"limits\.max_body_bytes"):
        await session.post_json(f"{server.origin}/v1/bomb", b"{}", {})
    with pytest.raises(InvalidRequestError):
        await session.post_json(f"{server.origin}/v1/json", b"{}", {"x-a": "1\r\nx-b: 2"})


async def test_httpx_transport_speaks_http2(ca: GeneratedCA) -> None:
    h2_server = await _start_h2_server(ca)
    try:
        transport = HttpxTransport(
            f"https://127.0.0.1:{h2_server.port}",
            ssl_context=tls_context(ca_file=str(ca.ca_file)),
        )
        resp = await transport.request("POST", "/v1/x", {"content-type": "application/json"}, b'{"q": 1}')
        assert resp.status == 200
        assert await resp.read() == b'{"protocol": "h2"}'
        assert h2_server.requests == [("POST", "/v1/x", b'{"q": 1}')]
        await transport.aclose()
    finally:
        h2_server.close()


class _H2Server:
    def __init__(self) -> None:
        self.port = 0
        self.requests: list[tuple[str, str, bytes]] = []
        self.server: asyncio.Server | None = None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def _start_h2_server(ca: GeneratedCA) -> _H2Server:
    """An HTTP/2-only upstream (ALPN h2) made with the `h2` library: it answers every request with one JSON body."""
    import h2.config
    import h2.connection
    import h2.events

    state = _H2Server()
    context = ca.server_context()
    context.set_alpn_protocols(["h2"])

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        heads: dict[int, tuple[str, str]] = {}
        bodies: dict[int, bytes] = {}
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    fields = {k.decode() if isinstance(k, bytes) else k: v for k, v in event.headers}
                    method = fields[":method"]
                    path = fields[":path"]
                    heads[event.stream_id] = (
                        method.decode() if isinstance(method, bytes) else method,
                        path.decode() if isinstance(path, bytes) else path,
                    )
                    bodies[event.stream_id] = b""
                elif isinstance(event, h2.events.DataReceived):
                    bodies[event.stream_id] += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    method, path = heads[event.stream_id]
                    state.requests.append((method, path, bodies[event.stream_id]))
                    body = b'{"protocol": "h2"}'
                    conn.send_headers(
                        event.stream_id,
                        [(":status", "200"), ("content-type", "application/json"), ("content-length", str(len(body)))],
                    )
                    conn.send_data(event.stream_id, body, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()
        writer.close()

    state.server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=context)
    state.port = state.server.sockets[0].getsockname()[1]
    return state


def test_random_header_values_never_reach_the_wire_with_a_line_break() -> None:
    rng = random.Random(11)
    pool = ConnectionPool("http://127.0.0.1:1")
    alphabet = "ab \t\r\n\0é€:"
    for _ in range(2000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 8)))
        try:
            head = pool.encode_request("POST", "/x", {"x-v": value}, b"")
        except InvalidHeader:
            assert any(c in value for c in "\r\n\0€")
            continue
        assert head.count(b"\n") == 5 and head.count(b"\r") == 5 and b"\0" not in head


async def test_the_pool_raises_response_too_large(serve: Serve) -> None:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(b"h%d: v\r\n" % i for i in range(20)) + b"Content-Length: 0\r\n\r\n"
    server = await serve(routes({"/x": fixed(head, then="hang")}))
    pool = ConnectionPool(server.origin, read_timeout=2.0, max_headers=10)
    try:
        with pytest.raises(ResponseTooLarge, match="more than 10 response headers"):
            await pool.request("GET", "/x", {})
        assert pool._limit._value == 256
    finally:
        await pool.aclose()
