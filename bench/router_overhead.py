"""The router's own CPU cost per request, in-process and without I/O: `router.chat` / `router.open_chat_stream`
over a provider that answers at once, against calling that provider directly.

    python bench/router_overhead.py [--requests 200000] [--chunks 20] [--deployments 1]

The difference of the two is what the routing layer adds to each request (resolving the name, the strategy,
the breaker and limit checks, the attempt bookkeeping, the two response headers, and for streams the relay of
every chunk). It prints figures and asserts nothing; bench/overhead.py measures the whole gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from manifold.config import DeploymentBase, OpenAIDeployment, RouterSettings
from manifold.providers.base import Call, Provider
from manifold.routing.router import Router

COMPLETION: dict[str, Any] = {"id": "x", "object": "chat.completion", "choices": []}


class Instant(Provider):
    def __init__(self, deployment: DeploymentBase, chunks: int) -> None:
        super().__init__(deployment)
        self.chunks = [{"n": i} for i in range(chunks)]

    async def chat(self, call: Call) -> dict[str, Any]:
        return COMPLETION

    async def open_chat_stream(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        return _iterate(self.chunks)


async def _iterate(chunks: list[dict[str, Any]]) -> AsyncIterator[dict[str, Any]]:
    for chunk in chunks:
        yield chunk


async def _drain(stream: AsyncIterator[Any]) -> None:
    async for _ in stream:
        pass
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


async def _measure(n: int, one: Callable[[], Awaitable[None]]) -> float:
    for _ in range(min(n // 10, 10_000)):
        await one()
    start = time.process_time()
    for _ in range(n):
        await one()
    return (time.process_time() - start) / n * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--deployments", type=int, default=1)
    args = parser.parse_args()
    deployments = [
        OpenAIDeployment(model_name="bench", api_base="http://127.0.0.1:1/v1") for _ in range(args.deployments)
    ]
    router = Router(deployments, lambda d: Instant(d, args.chunks), RouterSettings())
    provider = router.providers[0]
    headers: list[tuple[str, str]] = []

    def report(name: str, value: str) -> None:
        headers.append((name, value))

    def call(stream: bool) -> Call:
        return Call({"model": "bench", "messages": []}, "bench", "req_1", stream)

    async def direct() -> None:
        await provider.chat(call(False))

    async def routed() -> None:
        headers.clear()
        await router.chat(call(False), report)

    async def direct_stream() -> None:
        await _drain(await provider.open_chat_stream(call(True)))

    async def routed_stream() -> None:
        headers.clear()
        await _drain(await router.open_chat_stream(call(True), report))

    n = args.requests
    rows = [
        ("non-stream", await _measure(n, direct), await _measure(n, routed)),
        ("stream", await _measure(n // 4, direct_stream), await _measure(n // 4, routed_stream)),
    ]
    print(f"router overhead, {args.deployments} deployment(s), {args.chunks} chunks per stream, CPU µs per request")
    print("| mode | provider called directly | through the router | router adds |")
    print("|---|---:|---:|---:|")
    for mode, plain, routed_us in rows:
        print(f"| {mode} | {plain:.2f} | {routed_us:.2f} | {routed_us - plain:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
