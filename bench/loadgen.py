"""A lean HTTP/1.1 load generator for the overhead benchmark (run in its own process by overhead.py).

uvloop, a raw asyncio Protocol with the httptools response parser, ``--concurrency`` keep-alive
connections, each with one request in flight (closed loop). Every response is read to its end (a stream
to its last chunk) and checked: status 200 and a JSON object, or, streamed, a body ending in
``data: [DONE]``. A failed request counts as done, as an error, and is left out of the latencies.

It talks to its parent over stdin/stdout, one JSON line each way, so that the parent can sample the
servers' CPU right before and right after the measured phase:

    loadgen -> {"phase": "warm", ...}      after the warm-up (connections open, servers warm)
    parent  -> go                          (any line; EOF aborts)
    loadgen -> {"phase": "done", ...}      after the measured phase, with the figures

Run on its own (``--no-handshake``) it simply prints both lines.

    python bench/loadgen.py --port 8080 [--stream] [--concurrency 16] [--warmup 300] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from typing import cast

import httptools

DEFAULT_PROMPT = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "In one short paragraph, explain what an API gateway does."},
]


def request_body(model: str, stream: bool) -> bytes:
    body: dict[str, object] = {"model": model, "messages": DEFAULT_PROMPT, "temperature": 0.7, "max_tokens": 128}
    if stream:
        body["stream"] = True
    return json.dumps(body, separators=(",", ":")).encode()


def request_bytes(host: str, port: int, path: str, body: bytes, api_key: str, stream: bool) -> bytes:
    accept = "text/event-stream" if stream else "application/json"
    head = (
        f"POST {path} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\n"
        "Content-Type: application/json\r\n"
        f"Accept: {accept}\r\n"
        f"Authorization: Bearer {api_key}\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    )
    return head.encode() + body


class BadResponse(Exception):
    """A response that came back whole but was not the expected answer."""


class Connection(asyncio.Protocol):
    """One keep-alive client connection with at most one request in flight."""

    def __init__(self, stream: bool) -> None:
        self._stream = stream
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._head = b""
        self._tail = b""
        self.closed = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports are no subclasses

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc or ConnectionResetError("connection closed before the response ended"))

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            waiter = self._waiter
            if waiter is not None and not waiter.done():
                waiter.set_exception(exc)
            self.close()

    # httptools callbacks
    def on_body(self, body: bytes) -> None:
        if len(self._head) < 256:
            self._head += body[: 256 - len(self._head)]
        self._tail = (self._tail + body)[-32:]

    def on_message_complete(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(self._parser.should_keep_alive())

    # API
    async def request(self, data: bytes) -> None:
        """Send one request and wait for the whole response; raise on any failure."""
        if self._transport is None or self.closed:
            raise ConnectionResetError("connection closed")
        self._head = self._tail = b""
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        keep_alive = await self._waiter
        self._waiter = None
        status = self._parser.get_status_code()
        if not keep_alive:
            self.close()
        if status != 200:
            raise BadResponse(f"status {status}: {self._head[:200]!r}")
        if self._stream:
            if not self._tail.rstrip().endswith(b"data: [DONE]"):
                raise BadResponse(f"stream did not end with 'data: [DONE]': ...{self._tail!r}")
        elif not self._head.startswith(b"{"):
            raise BadResponse(f"not a JSON object: {self._head[:200]!r}")

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


class LoadGenerator:
    def __init__(self, host: str, port: int, request: bytes, stream: bool, concurrency: int) -> None:
        self.host, self.port = host, port
        self.request = request
        self.stream = stream
        self.concurrency = concurrency
        self.connections: list[Connection | None] = [None] * concurrency
        self.first_error: str | None = None

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: Connection(self.stream), self.host, self.port)
        return conn

    async def run(self, total: int) -> tuple[list[float], int, float]:
        """``total`` requests over ``concurrency`` connections: (latencies in s, errors, wall seconds)."""
        latencies: list[float] = []
        errors = 0
        remaining = total
        request = self.request
        perf = time.perf_counter

        async def worker(slot: int) -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                t0 = perf()
                try:
                    conn = self.connections[slot]
                    if conn is None or conn.closed:
                        conn = self.connections[slot] = await self._connect()
                    await conn.request(request)
                except (OSError, BadResponse, httptools.HttpParserError) as exc:
                    errors += 1
                    if self.first_error is None:
                        self.first_error = f"{type(exc).__name__}: {exc}"
                    if isinstance(exc, OSError | httptools.HttpParserError):
                        await asyncio.sleep(0.01)  # a refused or broken connection: do not spin
                    continue
                latencies.append(perf() - t0)

        start = perf()
        await asyncio.gather(*(worker(slot) for slot in range(self.concurrency)))
        return latencies, errors, perf() - start

    def close(self) -> None:
        for conn in self.connections:
            if conn is not None:
                conn.close()


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted list (0 < p <= 100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(latencies: list[float], errors: int, wall: float, cpu: float, requests: int) -> dict[str, object]:
    lat = sorted(latencies)
    ms = 1000.0
    ok = len(lat)
    return {
        "requests": requests,
        "ok": ok,
        "errors": errors,
        "wall_s": wall,
        "rps": ok / wall if wall > 0 else math.nan,
        "p50_ms": percentile(lat, 50) * ms,
        "p90_ms": percentile(lat, 90) * ms,
        "p99_ms": percentile(lat, 99) * ms,
        "max_ms": lat[-1] * ms if lat else math.nan,
        "mean_ms": sum(lat) / ok * ms if ok else math.nan,
        "loadgen_cpu_ms_per_req": cpu / requests * ms if requests else math.nan,
    }


def emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def main_async(args: argparse.Namespace) -> int:
    deadline = time.monotonic() + args.timeout
    body = request_body(args.model, args.stream)
    gen = LoadGenerator(
        args.host,
        args.port,
        request_bytes(args.host, args.port, args.path, body, args.api_key, args.stream),
        args.stream,
        args.concurrency,
    )
    loop = asyncio.get_running_loop()
    try:
        try:
            latencies, errors, wall = await asyncio.wait_for(gen.run(args.warmup), deadline - time.monotonic())
        except TimeoutError:
            emit({"phase": "error", "error": f"warm-up not finished within {args.timeout:g} s"})
            return 1
        warm = summary(latencies, errors, wall, 0.0, args.warmup)
        emit({"phase": "warm", **warm, "first_error": gen.first_error})
        if not args.no_handshake:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return 1
        gen.first_error = None
        cpu0 = time.process_time()
        try:
            latencies, errors, wall = await asyncio.wait_for(gen.run(args.requests), deadline - time.monotonic())
        except TimeoutError:
            emit({"phase": "error", "error": f"measured phase not finished within {args.timeout:g} s"})
            return 1
        cpu = time.process_time() - cpu0
        emit({"phase": "done", **summary(latencies, errors, wall, cpu, args.requests), "first_error": gen.first_error})
        return 0
    finally:
        gen.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Closed-loop HTTP/1.1 load generator for chat completions.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/v1/chat/completions")
    parser.add_argument("--model", default="bench")
    parser.add_argument("--api-key", default="sk-bench")
    parser.add_argument("--stream", action="store_true", help='send "stream": true and read the whole SSE stream')
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=120.0, help="for warm-up and measured phase together")
    parser.add_argument("--no-handshake", action="store_true", help="do not wait for 'go' on stdin")
    args = parser.parse_args(argv)
    if args.concurrency < 1 or args.requests < 1 or args.warmup < 0:
        parser.error("--concurrency and --requests must be >= 1, --warmup >= 0")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency of manifold
        return asyncio.run(main_async(args))
    return uvloop.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
