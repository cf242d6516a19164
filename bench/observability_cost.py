"""What metrics, the JSON access log and tracing add per request, measured in one process without sockets.

    python bench/observability_cost.py [--requests 2000] [--rounds 15] [--chunks 20] [--settings off,on,trace]

`bench/overhead.py --observe off,on,trace` measures the same through real sockets, but there a 20 µs
difference drowns in the noise of three processes sharing the CPUs. Here the same Manifold app (every layer,
the router, the endpoint) runs against an in-memory backend, driven by ASGI calls: each setting (`off`,
`on` = metrics + JSON access log, `trace` = `on` + OpenTelemetry with a sampler of 1.0 exporting to a
do-nothing exporter; `ledger` = `off` + the usage ledger, its rows written to a SQLite file in a temporary
directory within the measured time; `limits` = `off` + a static key with rpm, tpm, in-flight and budget limits
(counted in process memory) and a priced deployment; `limits-redis` = the same counted in the local Redis,
`BENCH_REDIS_URL`) serves `--requests` requests per round, the settings take turns for
`--rounds` rounds, and the fastest round of each is printed (CPU time of this process, in µs per request: on a
busy machine the least disturbed round is the best estimate of the work itself). Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from manifold import _json
from manifold.config import Config
from manifold.observability import tracing
from manifold.observability.logging import configure
from manifold.providers.base import Call, Capability, Provider
from manifold.routing.router import Router
from manifold.server.app import ManifoldApp
from manifold.validation import parse_config

ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 0,
    "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello there"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
}


class MemoryBackend(Provider):
    capabilities = frozenset({Capability.CHAT, Capability.STREAM})
    chunks = 20

    async def chat(self, call: Call) -> dict[str, Any]:
        return ANSWER

    async def open_chat_stream(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        options = call.body.get("stream_options")
        return self._stream(isinstance(options, dict) and options.get("include_usage") is True)

    async def _stream(self, include_usage: bool) -> AsyncIterator[dict[str, Any]]:
        # Like OpenAI: asked for usage, every chunk has `usage` (null until the last one).
        base: dict[str, Any] = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "bench",
        }
        if include_usage:
            base["usage"] = None
        yield {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
        for i in range(self.chunks):
            yield {**base, "choices": [{"index": 0, "delta": {"content": f"w{i} "}}]}
        yield {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield {**base, "choices": [], "usage": ANSWER["usage"]}


KEY = "sk-bench-limits-0123456789"
LIMITED_KEY = {
    "key": KEY,
    "alias": "bench",
    "rpm": 100_000_000,
    "tpm": 1_000_000_000_000,
    "max_parallel_requests": 100_000,
    "max_budget": 1_000_000,
    "budget_duration": "daily",
}
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")


def config(setting: str) -> Config:
    raw: dict[str, Any] = {
        "model_list": [{"model_name": "bench", "provider": "openai", "api_base": "http://127.0.0.1:9/v1"}],
        "server": {"log_level": "info", "log_format": "json"},
    }
    if setting == "off":
        raw["server"]["access_log"] = False
        raw["metrics"] = {"enabled": False}
    if setting == "metrics":  # metrics alone
        raw["server"]["access_log"] = False
    if setting == "access":  # the access log alone
        raw["metrics"] = {"enabled": False}
    if setting == "trace":
        raw["tracing"] = {"enabled": True}
    if setting in ("limits", "limits-redis"):  # `off` + a static key with limits and a budget, a priced deployment
        raw["server"]["access_log"] = False
        raw["metrics"] = {"enabled": False}
        raw["model_list"][0].update(input_cost_per_million=0.15, output_cost_per_million=0.6)
        raw["auth"] = {"keys": [LIMITED_KEY]}
        if setting == "limits-redis":  # the counters in the local Redis, under a prefix of the run's own
            raw["redis"] = {"url": REDIS_URL, "key_prefix": f"manifold-bench-{os.getpid()}:", "timeout_s": 5}
    if setting == "ledger":  # `off` + the usage ledger
        raw["server"]["access_log"] = False
        raw["metrics"] = {"enabled": False}
        raw["ledger"] = {"enabled": True}
        raw["storage"] = {"data_dir": tempfile.mkdtemp(prefix="manifold-bench-ledger-")}
    return parse_config(raw)


def build(setting: str) -> ManifoldApp:
    cfg = config(setting)
    router = Router(cfg.model_list, factory=MemoryBackend, settings=cfg.router)
    return ManifoldApp(cfg, router=router)


def scope_for(body: bytes) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "query_string": b"",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", b"Bearer " + KEY.encode()),
        ],
        "client": ("127.0.0.1", 50000),
    }


async def serve(app: ManifoldApp, body: bytes, n: int) -> None:
    async def send(message: Any) -> None:
        pass

    for _ in range(n):
        given = False

        async def receive() -> dict[str, Any]:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.Event().wait()  # never: the client stays
            raise AssertionError

        await app(scope_for(body), receive, send)


async def written(app: ManifoldApp) -> None:
    """With the ledger: until the round's rows are committed (their writes are part of the cost; the writer
    thread's CPU counts in this process's time)."""
    ledger = app.ledger
    if ledger is None:
        return
    await app.store.open()
    if not await ledger.flush():
        raise RuntimeError("the ledger could not write its rows")


def _install_memory_tracing() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class Discard(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()  # sampler: always on (parent-based)
    provider.add_span_processor(SimpleSpanProcessor(Discard()))
    tracing._TRACING = tracing.Tracing(False, provider)


async def main(args: argparse.Namespace) -> None:
    settings = [s for s in args.settings.split(",") if s]
    apps = {}
    for setting in settings:
        if setting == "trace":
            _install_memory_tracing()
        else:
            tracing._TRACING = None
            tracing.PROPAGATE = False
        apps[setting] = build(setting)
        await apps[setting].startup()
    MemoryBackend.chunks = args.chunks
    for stream in (False, True):
        body = _json.encode({"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        rounds: dict[str, list[float]] = {s: [] for s in settings}
        for s in settings:
            await serve(apps[s], body, args.requests // 4)  # warm up
        for _ in range(args.rounds):
            for s in settings:
                started = time.process_time()
                await serve(apps[s], body, args.requests)
                await written(apps[s])
                rounds[s].append((time.process_time() - started) / args.requests * 1e6)
        mode = "stream" if stream else "non-stream"
        base = min(rounds["off"]) if "off" in rounds else None
        for s in settings:
            best = min(rounds[s])
            extra = f"  ({best - base:+.1f} µs vs off)" if base is not None and s != "off" else ""
            spread = f"median {statistics.median(rounds[s]):.1f}"
            print(f"{mode:10} {s:6} {best:7.1f} µs/request (fastest of {args.rounds} rounds; {spread}){extra}")
    for app in apps.values():
        await app.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per setting per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer")
    parser.add_argument("--settings", default="off,on,trace")
    arguments = parser.parse_args()
    # The log goes where `manifold serve` sends it in production, a file or a pipe (here /dev/null): written in
    # blocks by Manifold's handler.
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stderr.fileno())
    configure("info", "json", [])
    logging.getLogger("manifold.storage").setLevel(logging.WARNING)
    asyncio.run(main(arguments))
