"""The app's own CPU per request in-process, without sockets or an upstream: the request layers and the dispatch
of `GET /v1/models`, with observability off. It prints figures and asserts nothing.

    python bench/dispatch_cost.py [--requests 20000] [--rounds 5]

Useful to compare two versions of the layers (run it once per version, alternating, with PYTHONPATH pointing
at each `src/`): the end-to-end overhead bench (bench/overhead.py) counts CPU in ticks of 1/100 s, too coarse
to see a fraction of a microsecond. On a shared machine compare the minimum of several runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import manifold


async def measure(requests: int, rounds: int) -> list[float]:
    config = manifold.parse_config(
        {
            "model_list": [{"model_name": "m", "provider": "openai", "api_base": "http://127.0.0.1:9/v1"}],
            "metrics": {"enabled": False},
            "server": {"access_log": False},
        }
    )
    app = manifold.build_app(config)
    app._started = True  # the dispatch alone: no store, no router start
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/models",
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"x-request-id", b"bench-1")],
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        pass

    for _ in range(requests // 10):
        await app(dict(scope), receive, send)
    out = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(requests):
            await app(dict(scope), receive, send)
        out.append((time.process_time() - start) / requests * 1e6)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.requests, args.rounds))
    print(
        f"GET /v1/models in-process, {args.requests} requests x {args.rounds} rounds: CPU µs/request "
        f"min {min(figures):.2f}, median {statistics.median(figures):.2f}"
    )


if __name__ == "__main__":
    main()
