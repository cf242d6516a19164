"""Stateful routes beside stateless ones, in one run: what storing costs a request (docs/performance.md).

Starts `bench/fake_upstream.py` (answers at once) and `manifold serve` pointed at it, then drives a steady
mixed load: `--concurrency` clients (default 16), each with one keep-alive connection per route and one request
in flight, going round the routes in turn:

| route | request |
|---|---|
| `chat` | `POST /v1/chat/completions`, nothing stored |
| `chat_store` | the same with `"store": true` (one stored completion) |
| `responses` | `POST /v1/responses` (stored: `store` defaults to true) |
| `responses_stream` | the same with `"stream": true`, read to `response.completed` |

Every response is read to its end and checked (status 200; a JSON object; a Responses stream that reached
`response.completed`). It prints, per route, p50/p99 latency and requests per second, then the stored writes
per second (acknowledged `chat_store` + `responses*`) beside the plain requests per second, and the ratio of
each stateful route's p99 to plain chat's p99, with the machine's load average before and after each setup
(on a shared machine the figures move with it). It asserts nothing.

    .venv/bin/python bench/stateful.py                              # sqlite, postgres, sqlite --workers 2
    .venv/bin/python bench/stateful.py --setups sqlite --seconds 20

PostgreSQL is the local server at 127.0.0.1:5432 (trust auth, user postgres); each run gets a fresh database,
dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httptools
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import BadResponse, Connection, percentile

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "In one short paragraph, explain what an API gateway does."
ROUTES = ("chat", "chat_store", "responses", "responses_stream")
STORED = ("chat_store", "responses", "responses_stream")
# `--with-unstored`: the same Responses requests with `"store": false`, to tell the engine's cost from the store's.
UNSTORED = ("responses_nostore", "responses_stream_nostore")


def _bodies() -> dict[str, tuple[str, bytes, bool]]:
    messages = [{"role": "user", "content": PROMPT}]
    chat = {"model": "bench", "messages": messages, "max_tokens": 128}
    resp = {"model": "bench", "input": PROMPT, "max_output_tokens": 128}

    def enc(obj: dict[str, Any]) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    return {
        "chat": ("/v1/chat/completions", enc(chat), False),
        "chat_store": ("/v1/chat/completions", enc({**chat, "store": True}), False),
        "responses": ("/v1/responses", enc(resp), False),
        "responses_stream": ("/v1/responses", enc({**resp, "stream": True}), True),
        "responses_nostore": ("/v1/responses", enc({**resp, "store": False}), False),
        "responses_stream_nostore": ("/v1/responses", enc({**resp, "store": False, "stream": True}), True),
    }


class RouteConnection(Connection):
    """loadgen's connection, checking a Responses stream (no `[DONE]`: it ends with `response.completed`)."""

    def __init__(self, sse: bool) -> None:
        super().__init__(stream=False)
        self._sse = sse
        self._seen_completed = False
        self._window = b""

    def on_body(self, body: bytes) -> None:
        if self._sse:
            window = self._window + body
            if b"response.completed" in window:
                self._seen_completed = True
            self._window = window[-64:]
        else:
            super().on_body(body)

    async def request(self, data: bytes) -> None:
        if not self._sse:
            await super().request(data)
            return
        if self._transport is None or self.closed:
            raise ConnectionResetError("connection closed")
        self._seen_completed, self._window = False, b""
        self._waiter = asyncio.get_running_loop().create_future()
        self._transport.write(data)
        keep_alive = await self._waiter
        self._waiter = None
        if not keep_alive:
            self.close()
        status = self._parser.get_status_code()
        if status != 200 or not self._seen_completed:
            raise BadResponse(f"status {status}, response.completed seen: {self._seen_completed}")


async def drive(
    port: int, concurrency: int, seconds: float, warmup_s: float, routes: tuple[str, ...]
) -> dict[str, Any]:
    bodies = _bodies()
    requests = {
        route: (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer sk-bench\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for route, (path, body, _) in bodies.items()
    }
    loop = asyncio.get_running_loop()
    latencies: dict[str, list[float]] = {r: [] for r in routes}
    errors: dict[str, int] = dict.fromkeys(routes, 0)
    first_error: list[str] = []
    measuring = False
    stop_at = time.perf_counter() + warmup_s + seconds

    async def client(slot: int) -> None:
        conns: dict[str, RouteConnection] = {}
        i = slot
        while time.perf_counter() < stop_at:
            route = routes[i % len(routes)]
            i += 1
            t0 = time.perf_counter()
            try:
                conn = conns.get(route)
                if conn is None or conn.closed:
                    sse = bodies[route][2]
                    _, conn = await loop.create_connection(lambda sse=sse: RouteConnection(sse), "127.0.0.1", port)
                    conns[route] = conn
                await conn.request(requests[route])
            except (OSError, BadResponse, httptools.HttpParserError) as exc:
                if measuring:
                    errors[route] += 1
                    if not first_error:
                        first_error.append(f"{route}: {type(exc).__name__}: {exc}")
                await asyncio.sleep(0.01)
                continue
            if measuring:
                latencies[route].append(time.perf_counter() - t0)
        for conn in conns.values():
            conn.close()

    async def measure() -> float:
        nonlocal measuring
        await asyncio.sleep(warmup_s)
        measuring = True
        start = time.perf_counter()
        await asyncio.sleep(seconds)
        measuring = False
        return time.perf_counter() - start

    results = await asyncio.gather(measure(), *(client(s) for s in range(concurrency)))
    wall = float(results[0])
    figures = {}
    for route in routes:
        lat = sorted(latencies[route])
        figures[route] = {
            "ok": len(lat),
            "errors": errors[route],
            "rps": len(lat) / wall,
            "p50_ms": percentile(lat, 50) * 1000,
            "p99_ms": percentile(lat, 99) * 1000,
        }
    stored = sum(figures[r]["ok"] for r in STORED)
    return {
        "wall_s": wall,
        "routes": figures,
        "stored_writes_per_s": stored / wall,
        "plain_rps": figures["chat"]["rps"],
        "first_error": first_error[0] if first_error else None,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _process(argv: list[str], log: Path, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=kw.pop("stdout", out), stderr=out, **kw)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


async def _pg_admin(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host="127.0.0.1", port=5432, user="postgres", database="postgres", timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@contextlib.contextmanager
def _storage(backend: str, workdir: Path) -> Iterator[dict[str, Any]]:
    if backend == "sqlite":
        yield {"data_dir": str(workdir / "data")}
        return
    name = f"manifold_bench_{uuid.uuid4().hex[:10]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield {"url": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"}
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _wait_http(port: int, path: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"127.0.0.1:{port}{path} did not answer 200 within {timeout:g} s")


@contextlib.contextmanager
def manifold_on(backend: str, workdir: Path, workers: int = 1, chunks: int = 20) -> Iterator[tuple[int, Path]]:
    """`bench/fake_upstream.py` and `manifold serve` on a fresh store (`sqlite` in `workdir`, or a new PostgreSQL
    database, dropped afterwards), model `bench`: Manifold's port once `/health/ready` answers, and its log."""
    up_argv = [sys.executable, str(ROOT / "bench" / "fake_upstream.py"), "--port", "0", "--chunks", str(chunks)]
    with _process(up_argv, workdir / "upstream.log", stdout=subprocess.PIPE) as upstream:
        assert upstream.stdout is not None
        line = upstream.stdout.readline().decode().strip()
        if not line.startswith("READY "):
            raise RuntimeError(f"fake upstream did not start: {line!r}")
        up_port = int(line.split()[1])
        with _storage(backend, workdir) as storage:
            config = {
                "model_list": [
                    {
                        "model_name": "bench",
                        "provider": "openai",
                        "model": "gpt-4o-mini",
                        "api_base": f"http://127.0.0.1:{up_port}/v1",
                        "api_key": "sk-fake",
                    }
                ],
                "server": {"log_level": "warning"},
                "storage": storage,
            }
            (workdir / "config.json").write_text(json.dumps(config))
            port = _free_port()
            argv = [sys.executable, "-m", "manifold", "serve", "--config", str(workdir / "config.json")]
            argv += ["--port", str(port), "--workers", str(workers)]
            env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(ROOT / "src")}
            log = workdir / "manifold.log"
            with _process(argv, log, env=env, cwd=workdir):
                _wait_http(port, "/health", 60)
                _wait_http(port, "/health/ready", 60)
                yield port, log


def run_setup(setup: str, args: argparse.Namespace) -> dict[str, Any]:
    backend, _, workers_part = setup.partition("-w")
    workers = int(workers_part or "1")
    with tempfile.TemporaryDirectory(prefix="manifold-stateful-") as tmp:
        with manifold_on(backend, Path(tmp), workers) as (port, log_path):
            routes = ROUTES + UNSTORED if args.with_unstored else ROUTES
            load_before = os.getloadavg()[0]
            result = uvloop.run(drive(port, args.concurrency, args.seconds, args.warmup, routes))
            result["load_average"] = (load_before, os.getloadavg()[0])
        log = log_path.read_text(errors="replace")
    result["setup"] = setup
    result["workers"] = workers
    result["log_errors"] = [ln for ln in log.splitlines() if " ERROR " in ln][:5]
    return result


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"bench/stateful.py: {args.concurrency} clients, {args.seconds:g} s measured after {args.warmup:g} s "
        f"warm-up, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}",
        "",
        "| setup | route | p50 ms | p99 ms | req/s | errors | p99 / plain p99 |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        plain_p99 = r["routes"]["chat"]["p99_ms"]
        for route in r["routes"]:
            f = r["routes"][route]
            ratio = f["p99_ms"] / plain_p99 if plain_p99 else float("nan")
            lines.append(
                f"| {r['setup']} | {route} | {f['p50_ms']:.1f} | {f['p99_ms']:.1f} | {f['rps']:.0f} | "
                f"{f['errors']} | {'' if route == 'chat' else f'{ratio:.1f}x'} |"
            )
    lines += ["", "| setup | stored writes/s | plain chat req/s | load average (1 min) before / after |"]
    lines.append("|---|---:|---:|---:|")
    for r in results:
        before, after = r["load_average"]
        lines.append(
            f"| {r['setup']} | {r['stored_writes_per_s']:.0f} | {r['plain_rps']:.0f} | {before:.2f} / {after:.2f} |"
        )
    for r in results:
        if r["first_error"] or r["log_errors"]:
            lines.append(f"\n{r['setup']}: first error {r['first_error']}; server log: {r['log_errors']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stateful vs stateless routes under one mixed load.")
    parser.add_argument(
        "--setups",
        default="sqlite,postgres,sqlite-w2",
        help="comma-separated: sqlite, postgres, sqlite-w2 (two workers), postgres-w2",
    )
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured time per setup")
    parser.add_argument("--warmup", type=float, default=3.0, help="load before measuring (not counted)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument(
        "--with-unstored", action="store_true", help='add POST /responses with "store": false (the engine alone)'
    )
    args = parser.parse_args(argv)
    results = [run_setup(s.strip(), args) for s in args.setups.split(",") if s.strip()]
    print(report(results, args))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    failed = any(f["errors"] for r in results for f in r["routes"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
