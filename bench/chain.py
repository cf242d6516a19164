"""What a long Responses chain costs each turn (docs/performance.md).

Starts `bench/fake_upstream.py` and `manifold serve` on a fresh SQLite file or PostgreSQL database, then runs
one conversation of `--turns` turns, each `POST /v1/responses` with `previous_response_id` the turn before
(so turn n reads back n-1 stored responses and their input items), one request at a time, and prints the
median latency of the turns in each tenth of the chain. Meant to show whether a turn's cost grows with the
chain. It asserts nothing.

    .venv/bin/python bench/chain.py                      # sqlite and postgres, 200 turns
    .venv/bin/python bench/chain.py --setups sqlite --turns 500
    PYTHONPATH=/path/to/other/checkout/src .venv/bin/python bench/chain.py   # another version of Manifold
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stateful import manifold_on


def run_setup(backend: str, turns: int) -> list[float]:
    with (
        tempfile.TemporaryDirectory(prefix="manifold-chain-") as tmp,
        manifold_on(backend, Path(tmp), chunks=5) as (
            port,
            _,
        ),
    ):
        return _converse(port, turns)


def _converse(port: int, turns: int) -> list[float]:
    latencies: list[float] = []
    previous: str | None = None
    with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=60) as http:
        for turn in range(turns):
            body: dict[str, Any] = {"model": "bench", "input": f"turn {turn}: go on."}
            if previous is not None:
                body["previous_response_id"] = previous
            started = time.perf_counter()
            resp = http.post("/responses", json=body)
            latencies.append(time.perf_counter() - started)
            if resp.status_code != 200 or resp.json().get("status") != "completed":
                raise RuntimeError(f"turn {turn}: {resp.status_code} {resp.text[:300]}")
            previous = str(resp.json()["id"])
    return latencies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Latency of each turn of one long Responses chain.")
    parser.add_argument("--setups", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--turns", type=int, default=200)
    args = parser.parse_args(argv)
    tenth = max(1, args.turns // 10)
    print(f"bench/chain.py: {args.turns} turns, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print("median ms of the turns in each tenth of the chain (turn n reads n-1 stored responses back)\n")
    print("| setup | " + " | ".join(f"{i * tenth + 1}-{(i + 1) * tenth}" for i in range(10)) + " |")
    print("|---|" + "---:|" * 10)
    for setup in args.setups.split(","):
        latencies = run_setup(setup, args.turns)
        medians = [statistics.median(latencies[i * tenth : (i + 1) * tenth]) * 1000 for i in range(10)]
        print(f"| {setup} | " + " | ".join(f"{m:.1f}" for m in medians) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
