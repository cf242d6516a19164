"""The embedded model under concurrent users: the serialized llama.cpp engine beside the batching engines (openvino,
llama_cpp_batched), through a real `manifold serve` (issue 15). Prints, per engine, aggregate output tokens/s and
time to first token (mean, p95) for 1, 8 and 16 concurrent streams, and the ratios to a lone request (the
medians of three lone streams); then 8 streams sharing a ~200-token system prompt with and without prefix
caching; then the latency of `GET /health` while each engine generates 8 streams (what the engine leaves of
the event loop to the gateway's other requests); then, per batching engine, greedy agreement of 8 batched streams
with their solo runs and the server's peak memory with 64 requests queued.

    .venv/bin/python bench/local.py [--threads 2] [--tokens 128] [--only llama_cpp,openvino,llama_cpp_batched]
        [--lone-rounds 6] [--sustained 4] [--skip-main] [--prefill-chunk 128]
        [--kv-cache-type q8_0]

With `--sustained R`, also a sustained load per engine: each of 1, 8 and 16 users sends R streams one after
another (a closed loop, as `genai-perf --concurrency` or vLLM's `--max-concurrency` keep N requests in flight),
and the time to first token of the streams after each user's first (which arrive while the others generate) is
reported beside that of the first round (all users at once, the burst the main table measures). `--skip-main`
leaves out everything but the lone rounds and the sustained load.

With `--lone-rounds N`, first N rounds of one lone stream per engine, the engines alternating, each with its
tokens/s, TTFT and the server's CPU time per generated token (utime + stime of the server process and its
children, which serve nothing else meanwhile): on a shared machine, alternating keeps the engines under the same
load, and CPU time swings less than wall time.

Each engine is its own deployment of one server (the others idle while one is measured). The answers are chat
streams with `max_tokens` (default 128) at temperature 0.7; a stream that ends early counts the tokens it had.
On a machine shared with other work the absolute figures swing; compare within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e.conftest import free_port

QUESTIONS = [
    "Tell me about the history of Paris.",
    "Explain how bees make honey.",
    "Describe a walk along the sea.",
    "Why is the sky blue?",
    "Write a short story about a cat.",
    "How do plants grow?",
    "What makes a good friend?",
    "Describe the planet Jupiter.",
]
SYSTEM = (
    "You are Manifold's helpful assistant for a small bakery in Lyon. The bakery opens at seven in the morning and "
    "closes at seven in the evening, every day but Monday. It sells croissants, pains au chocolat, baguettes, "
    "brioches, tarts with seasonal fruit, and a rye loaf baked on Thursdays only. Orders for cakes need two days' "
    "notice and a deposit of ten euros. The bakery does not deliver, but customers may collect orders from the "
    "side door until eight. Payment is by card or cash; there is no minimum. Gluten-free bread is baked on "
    "Saturdays. Answer briefly and politely, in the customer's language, and never invent products or prices "
    "that are not listed here. If you do not know, say so and suggest calling the shop."
)


BATCHING = ("openvino", "llama_cpp_batched")
_RUNS = itertools.count(1)
# What bounds each batching engine's memory in this benchmark's config.
BUDGET = {
    "openvino": "KV budget kv_cache_gb: 1",
    "llama_cpp_batched": "KV cache of 16 sequences x 2048 tokens, allocated at load",
}


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


async def stream(
    client: httpx.AsyncClient, model: str, messages: list[dict[str, str]], tokens: int
) -> tuple[float, int]:
    """(seconds to the first content token, completion tokens) of one chat stream."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": tokens,
        "temperature": 0.7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first: float | None = None
    used = 0
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - started
            if chunk.get("usage"):
                used = int(chunk["usage"]["completion_tokens"])
    return (first if first is not None else time.perf_counter() - started), used


async def concurrent(
    client: httpx.AsyncClient, model: str, users: int, tokens: int, system: str | None = None
) -> dict[str, float]:
    # Every stream's question is new to the engines (a tag numbers it), so no run finds its whole prompt in a prefix
    # cache from an earlier one; what they share is the chat template's system prompt (or `system`), as real traffic.
    run = next(_RUNS)

    def messages(i: int) -> list[dict[str, str]]:
        user = {"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{run}.{i})"}
        return [{"role": "system", "content": system}, user] if system else [user]

    started = time.perf_counter()
    results = await asyncio.gather(*(stream(client, model, messages(i), tokens) for i in range(users)))
    wall = time.perf_counter() - started
    ttfts = [r[0] for r in results]
    total = sum(r[1] for r in results)
    return {"tps": total / wall, "ttft_mean": statistics.mean(ttfts), "ttft_p95": p95(ttfts), "tokens": total}


async def sustained(client: httpx.AsyncClient, model: str, users: int, tokens: int, rounds: int) -> dict[str, float]:
    """Each of `users` sends `rounds` streams one after another. TTFT of the first round (all at once) and of the
    later ones (each arriving while the other users' streams generate), and aggregate tokens/s over the run."""
    run = next(_RUNS)
    first: list[float] = []
    later: list[float] = []
    total = 0

    async def user(i: int) -> None:
        nonlocal total
        for r in range(rounds):
            question = f"{QUESTIONS[(i + r) % len(QUESTIONS)]} (#{run}.{i}.{r})"
            ttft, used = await stream(client, model, [{"role": "user", "content": question}], tokens)
            (first if r == 0 else later).append(ttft)
            total += used

    started = time.perf_counter()
    await asyncio.gather(*(user(i) for i in range(users)))
    wall = time.perf_counter() - started
    return {
        "tps": total / wall,
        "first_p95": p95(first),
        "later_mean": statistics.mean(later),
        "later_p95": p95(later),
        "later_n": len(later),
    }


async def sustained_table(client: httpx.AsyncClient, models: list[str], tokens: int, rounds: int) -> None:
    print(f"\n## Sustained load: each user sends {rounds} {tokens}-token streams one after another\n")
    print(
        "| engine | users | tokens/s | x lone | TTFT p95, first round (s) | TTFT mean, later (s) "
        "| TTFT p95, later (s) | later streams | p95 later / lone later mean |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for model in models:
        lone: dict[str, float] = {}
        for users in (1, 8, 16):
            r = await sustained(client, model, users, tokens, rounds)
            if users == 1:
                lone = r
            print(
                f"| {model} | {users} | {r['tps']:.1f} | {r['tps'] / lone['tps']:.2f} | {r['first_p95']:.2f} "
                f"| {r['later_mean']:.2f} | {r['later_p95']:.2f} | {r['later_n']:.0f} "
                f"| {r['later_p95'] / lone['later_mean']:.1f} |",
                flush=True,
            )


async def greedy(client: httpx.AsyncClient, model: str, question: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 64, "temperature": 0}
    response = await client.post("/v1/chat/completions", json=body)
    response.raise_for_status()
    return str(response.json()["choices"][0]["message"]["content"])


def family(pid: int) -> list[int]:
    """The server and its child processes (the openvino engine's worker is one)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):  # a child is listed under the thread that started it
        try:
            children += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return [pid, *children]


def cpu_seconds(pid: int) -> float:
    """CPU time of the server and its children (live ones: a worker's own figures, not the reaped ones')."""
    total = 0
    for each in family(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def lone_rounds(client: httpx.AsyncClient, pid: int, models: list[str], tokens: int, rounds: int) -> None:
    print(f"\n## A lone {tokens}-token stream, engines alternating ({rounds} rounds)\n")
    print("| round | engine | tokens/s | TTFT (s) | server CPU ms / token | load (1 min) |")
    print("|---:|---|---:|---:|---:|---:|")
    got: dict[str, list[float]] = {m: [] for m in models}
    for i in range(rounds):
        for model in models:
            before = cpu_seconds(pid)
            r = await concurrent(client, model, 1, tokens)
            per_token = (cpu_seconds(pid) - before) / max(1.0, r["tokens"]) * 1e3
            got[model].append(r["tps"])
            print(
                f"| {i + 1} | {model} | {r['tps']:.1f} | {r['ttft_mean']:.2f} | {per_token:.1f} "
                f"| {os.getloadavg()[0]:.2f} |",
                flush=True,
            )
    print("\nmedian tokens/s: " + ", ".join(f"{m} {statistics.median(v):.1f}" for m, v in got.items()))


async def beside(client: httpx.AsyncClient, model: str, tokens: int) -> dict[str, float]:
    """Latency (ms) of `GET /health`, one after another, while 8 streams of `model` generate: how much of the
    gateway's event loop the engine leaves to everything else the gateway serves."""
    task = asyncio.ensure_future(concurrent(client, model, 8, tokens))
    await asyncio.sleep(0.2)  # past the prompts, into decoding
    took: list[float] = []
    while not task.done():
        started = time.perf_counter()
        (await client.get("/health")).raise_for_status()
        took.append((time.perf_counter() - started) * 1e3)
        await asyncio.sleep(0.01)
    await task
    return {"p50": statistics.median(took), "p95": p95(took), "max": max(took), "n": len(took)}


async def beside_table(client: httpx.AsyncClient, models: list[str], tokens: int) -> None:
    print("\n## GET /health while 8 streams generate: latency (ms)\n")
    idle: list[float] = []
    for _ in range(50):
        started = time.perf_counter()
        (await client.get("/health")).raise_for_status()
        idle.append((time.perf_counter() - started) * 1e3)
    print(f"idle server: p50 {statistics.median(idle):.1f}, p95 {p95(idle):.1f}, max {max(idle):.1f}\n")
    print("| engine | p50 | p95 | max | requests |")
    print("|---|---:|---:|---:|---:|")
    for model in models:
        r = await beside(client, model, tokens)
        print(f"| {model} | {r['p50']:.1f} | {r['p95']:.1f} | {r['max']:.1f} | {r['n']:.0f} |", flush=True)


def rss_kib(pid: int) -> int:
    """Resident memory of the server and its children."""
    total = 0
    for each in family(pid):
        try:
            lines = Path(f"/proc/{each}/status").read_text().splitlines()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in lines if line.startswith("VmRSS:")), 0)
    return total


async def measure(
    base: str, pid: int, models: list[str], tokens: int, rounds: int, sustain: int, skip_main: bool
) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=900) as client:
        for model in models:
            await stream(client, model, [{"role": "user", "content": "Hi"}], 8)  # warm up
        if rounds:
            await lone_rounds(client, pid, models, tokens, rounds)
        if sustain:
            await sustained_table(client, models, tokens, sustain)
        if skip_main:
            return
        print(f"\n## {tokens}-token streams, aggregate output tokens/s and TTFT (s)\n")
        print("| engine | users | tokens/s | x lone | TTFT mean | TTFT p95 | p95 / lone TTFT |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        got: dict[tuple[str, int], dict[str, float]] = {}
        for model in models:
            # A lone request's figures are the medians of three: the ratios below divide by them, and one lone
            # stream's first token swings by 2x on a shared machine.
            lones = [await concurrent(client, model, 1, tokens) for _ in range(3)]
            lone = {k: statistics.median(r[k] for r in lones) for k in lones[0]}
            for users in (1, 8, 16):
                r = lone if users == 1 else await concurrent(client, model, users, tokens)
                got[model, users] = r
                print(
                    f"| {model} | {users} | {r['tps']:.1f} | {r['tps'] / lone['tps']:.2f} | {r['ttft_mean']:.2f} "
                    f"| {r['ttft_p95']:.2f} | {r['ttft_p95'] / lone['ttft_mean']:.1f} |",
                    flush=True,
                )
        print("\n## 8 users sharing a system prompt: TTFT mean (s)\n")
        print("| engine | TTFT mean | TTFT p95 | tokens/s |")
        print("|---|---:|---:|---:|")
        batching = [m for m in models if m in BATCHING]
        for model in [*batching, *(f"{m}-no-prefix-cache" for m in batching)]:
            # Twice: the first round fills the prefix cache; the second is the figure.
            await stream(client, model, [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}], 4)
            await concurrent(client, model, 8, tokens, SYSTEM)
            r = await concurrent(client, model, 8, tokens, SYSTEM)
            got[model, -8] = r
            print(f"| {model} | {r['ttft_mean']:.2f} | {r['ttft_p95']:.2f} | {r['tps']:.1f} |", flush=True)
        await beside_table(client, models, tokens)
        for ov in batching if "llama_cpp" in models else []:
            lc = "llama_cpp"
            print(f"\n## Targets (issue 15), {ov}\n")
            print(f"- 8 users: {got[ov, 8]['tps'] / got[ov, 1]['tps']:.2f}x a lone request's tokens/s (target 3)")
            print(f"- 16 users: {got[ov, 16]['tps'] / got[ov, 1]['tps']:.2f}x (target 5)")
            print(
                f"- 8 users: p95 TTFT {got[ov, 8]['ttft_p95'] / got[ov, 1]['ttft_mean']:.1f}x a lone one's "
                "(target <= 3)"
            )
            cached, uncached = got[ov, -8]["ttft_mean"], got[f"{ov}-no-prefix-cache", -8]["ttft_mean"]
            print(f"- shared system prompt: mean TTFT {uncached / cached:.1f}x lower with prefix caching (target 3)")
            print(
                f"- a lone request: {got[ov, 1]['tps']:.1f} tokens/s, TTFT {got[ov, 1]['ttft_mean']:.2f} s; serialized "
                f"llama_cpp: {got[lc, 1]['tps']:.1f} tokens/s, TTFT {got[lc, 1]['ttft_mean']:.2f} s (target: no slower)"
            )
            print(f"- 8 users vs serialized llama_cpp at 8: {got[ov, 8]['tps'] / got[lc, 8]['tps']:.1f}x tokens/s")
        for engine in batching:
            solo = [await greedy(client, engine, q) for q in QUESTIONS]
            together = await asyncio.gather(*(greedy(client, engine, q) for q in QUESTIONS))
            same = sum(a == b for a, b in zip(solo, together, strict=True))
            print(f"\n## Greedy output of 8 batched streams equal to their solo runs ({engine}): {same}/8")
            print(f"\n## 64 requests at once on {engine} (16 run, 48 queue): server memory\n")
            before = rss_kib(pid)
            peak = before
            task = asyncio.ensure_future(concurrent(client, engine, 64, 32))
            while not task.done():
                peak = max(peak, rss_kib(pid))
                await asyncio.sleep(0.2)
            r = task.result()
            print(
                f"RSS before {before / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB ({BUDGET[engine]}); "
                f"{r['tokens']:.0f} tokens at {r['tps']:.1f}/s, TTFT p95 {r['ttft_p95']:.1f} s",
                flush=True,
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--only", default="llama_cpp,openvino,llama_cpp_batched")
    parser.add_argument("--lone-rounds", type=int, default=0, help="alternating lone streams first (0: none)")
    parser.add_argument("--sustained", type=int, default=0, help="streams per user in a sustained load (0: none)")
    parser.add_argument("--skip-main", action="store_true", help="only the lone rounds and the sustained load")
    parser.add_argument("--prefill-chunk", type=int, default=None, help="the batching engines' prefill_chunk")
    parser.add_argument("--kv-cache-type", choices=["f16", "q8_0"], default=None, help="the batching engines' KV type")
    args = parser.parse_args()
    if args.sustained == 1 or args.sustained < 0:
        parser.error("--sustained: 0 (none) or at least 2 (the later streams are the figure)")
    models = args.only.split(",")
    local = {"provider": "local", "threads": args.threads}
    # queue_timeout: 64 requests at once wait longer than the default 30 s for a place in the batch on a small machine
    batching = {"max_batch": 16, "queue_timeout": 600}
    if args.prefill_chunk:
        batching["prefill_chunk"] = args.prefill_chunk
    if args.kv_cache_type:
        batching["kv_cache_type"] = args.kv_cache_type
    ov = {**local, "engine": "openvino", **batching}
    lb = {**local, "engine": "llama_cpp_batched", "context_length": 2048, **batching}
    config = {
        "model_list": [
            {"model_name": "llama_cpp", **local},
            {"model_name": "openvino", **ov},
            {"model_name": "openvino-no-prefix-cache", **ov, "prefix_caching": False},
            {"model_name": "llama_cpp_batched", **lb},
            {"model_name": "llama_cpp_batched-no-prefix-cache", **lb, "prefix_caching": False},
        ],
        "router": {"num_retries": 0},
    }
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        server = subprocess.Popen(
            [sys.executable, "-m", "manifold", "serve", "--port", str(port), "--config", str(path)],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            for _ in range(600):
                try:
                    if httpx.get(base + "/health/ready", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            chunk = f", prefill_chunk {args.prefill_chunk}" if args.prefill_chunk else ""
            chunk += f", kv_cache_type {args.kv_cache_type}" if args.kv_cache_type else ""
            print(f"threads {args.threads}{chunk}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
            run = measure(base, server.pid, models, args.tokens, args.lone_rounds, args.sustained, args.skip_main)
            asyncio.run(run)
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
