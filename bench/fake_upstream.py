"""A fast fake OpenAI-compatible upstream for the overhead benchmark.

One process, uvloop, a raw asyncio Protocol with the httptools parser, HTTP/1.1 keep-alive. Every answer
is built once at start-up, so a request costs little more than parsing it and one ``transport.write``:

- ``POST /v1/chat/completions``: a fixed ``chat.completion`` (about 630 bytes), or, when the body has
  ``"stream": true``, a fixed SSE stream (chunked transfer encoding): ``--chunks`` content chunks, a finish
  chunk, a usage chunk when ``stream_options.include_usage`` is asked for, then ``data: [DONE]``;
- ``GET /v1/models``: one model; ``GET /health``: ``{"status":"ok"}``; anything else: an OpenAI 404.

``--latency-ms`` delays every answer by a fixed time (without blocking the loop).
On start it prints ``READY <port>`` on stdout (``--port 0``: any free port).

    python bench/fake_upstream.py --port 0 [--latency-ms 0] [--chunks 20]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import cast

import httptools
import msgspec

MODEL = "gpt-4o-mini-2024-07-18"
CREATED = 1_732_000_000
COMPLETION_ID = "chatcmpl-AXbench0000000000000000000000"
FINGERPRINT = "fp_0ba0d124f1"
CONTENT = (
    "Manifold is an OpenAI-compatible gateway that validates each request, forwards it upstream, "
    "and returns the answer in exact OpenAI form."
)
PROMPT_TOKENS = 27
COMPLETION_TOKENS = 41


class _Body(msgspec.Struct):
    """The only fields of a request body the fake looks at."""

    stream: bool | None = None
    stream_options: dict[str, object] | None = None


_decode_body = msgspec.json.Decoder(_Body).decode


def _usage() -> dict[str, object]:
    return {
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": COMPLETION_TOKENS,
        "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def completion_body() -> bytes:
    """The fixed non-streaming answer."""
    return msgspec.json.encode(
        {
            "id": COMPLETION_ID,
            "object": "chat.completion",
            "created": CREATED,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": CONTENT, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(),
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
        }
    )


def _pieces(text: str, n: int) -> list[str]:
    """``text`` cut at word boundaries into ``n`` non-empty pieces (its words repeated if it has fewer)."""
    words = text.split(" ")
    if n <= len(words):
        per, extra = divmod(len(words), n)
        out, i = [], 0
        for k in range(n):
            size = per + (1 if k < extra else 0)
            out.append(" ".join(words[i : i + size]) + ("" if k == n - 1 else " "))
            i += size
        return out
    return [words[k % len(words)] + " " for k in range(n)]


def stream_events(chunks: int, include_usage: bool) -> list[bytes]:
    """The SSE events of the fixed stream, each a complete ``data: ...\\n\\n``."""

    def chunk(choices: list[dict[str, object]], usage: dict[str, object] | None = None) -> bytes:
        payload: dict[str, object] = {
            "id": COMPLETION_ID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "service_tier": "default",
            "system_fingerprint": FINGERPRINT,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = usage
        return b"data: " + msgspec.json.encode(payload) + b"\n\n"

    events = []
    for k, piece in enumerate(_pieces(CONTENT, chunks)):
        delta: dict[str, object] = {"role": "assistant", "content": piece} if k == 0 else {"content": piece}
        events.append(chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]))
    events.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    if include_usage:
        events.append(chunk([], _usage()))
    events.append(b"data: [DONE]\n\n")
    return events


def _fixed_response(status: str, content_type: str, body: bytes) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _chunked_response(events: list[bytes]) -> bytes:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
        b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    body = b"".join(b"%x\r\n%b\r\n" % (len(e), e) for e in events)
    return head + body + b"0\r\n\r\n"


class Responses:
    """Every answer, prebuilt."""

    def __init__(self, chunks: int) -> None:
        json_type = "application/json"
        self.completion = _fixed_response("200 OK", json_type, completion_body())
        self.stream = _chunked_response(stream_events(chunks, include_usage=False))
        self.stream_usage = _chunked_response(stream_events(chunks, include_usage=True))
        self.models = _fixed_response(
            "200 OK",
            json_type,
            msgspec.json.encode(
                {"object": "list", "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}]}
            ),
        )
        self.health = _fixed_response("200 OK", json_type, b'{"status":"ok"}')
        self.bad_request = _fixed_response(
            "400 Bad Request",
            json_type,
            b'{"error":{"message":"invalid JSON body","type":"invalid_request_error","param":null,"code":null}}',
        )
        self.not_found = _fixed_response(
            "404 Not Found",
            json_type,
            b'{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":"not_found"}}',
        )

    def pick(self, method: bytes, path: bytes, body: bytes) -> bytes:
        if method == b"POST" and path == b"/v1/chat/completions":
            try:
                req = _decode_body(body)
            except (msgspec.DecodeError, msgspec.ValidationError):
                return self.bad_request
            if req.stream:
                opts = req.stream_options
                return self.stream_usage if opts and opts.get("include_usage") else self.stream
            return self.completion
        if method == b"GET" and path == b"/v1/models":
            return self.models
        if method == b"GET" and path == b"/health":
            return self.health
        return self.not_found


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection; requests are answered in order (pipelining works too)."""

    __slots__ = ("_body", "_delay", "_loop", "_parser", "_path", "_responses", "_transport")

    def __init__(self, responses: Responses, delay: float) -> None:
        self._responses = responses
        self._delay = delay
        self._loop = asyncio.get_running_loop()
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._path = b""
        self._body: list[bytes] = []

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are no subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            if self._transport is not None:
                self._transport.write(self._responses.bad_request)
                self._transport.close()

    # httptools callbacks
    def on_url(self, url: bytes) -> None:
        self._path += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        path = self._path.split(b"?", 1)[0]
        body = b"".join(self._body)
        self._path, self._body = b"", []
        response = self._responses.pick(self._parser.get_method(), path, body)
        close = not self._parser.should_keep_alive()
        if self._delay > 0:
            # Every answer waits the same delay, so the call_later queue keeps them in order.
            self._loop.call_later(self._delay, self._send, response, close)
        else:
            self._send(response, close)

    def _send(self, response: bytes, close: bool) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.write(response)
        if close:
            transport.close()


async def serve(host: str, port: int, latency_ms: float, chunks: int) -> None:
    responses = Responses(chunks)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: UpstreamProtocol(responses, latency_ms / 1000.0), host, port, backlog=1024, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A fast fake OpenAI-compatible upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed as 'READY <port>')")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="fixed delay before every answer")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks in a streamed answer")
    args = parser.parse_args(argv)
    if args.chunks < 1:
        parser.error("--chunks must be at least 1")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of manifold
        asyncio.run(serve(args.host, args.port, args.latency_ms, args.chunks))
    else:
        uvloop.run(serve(args.host, args.port, args.latency_ms, args.chunks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
