"""A burst's first tokens on the openvino engine, without the server (issue 15): N chat prompts added to OpenVINO
GenAI's ContinuousBatchingPipeline at once, stepped until each has its first token, beside one prompt alone. It
prints, per prefill budget (`max_num_batched_tokens`), the time until the last of the N has its first token (the
burst's p95 at 8 users is its last) and the mean, and their ratio to the lone prompt's; the first steps' times; and
the same for N prompts sharing `bench/local.py`'s ~200-token system prompt, with prefix caching (the prefix cached
by a round before) and without. Then the price of a small budget: a long prompt joining sequences that are decoding,
its time to first token and the gaps between the others' tokens meanwhile.

    .venv/bin/python bench/openvino_burst.py [--threads 2] [--users 8] [--rounds 3] [--budgets 128,256,512]

What it answers: how much of `bench/local.py`'s burst time to first token is the pipeline's compute, which no
scheduling in the gateway removes. Eight prompts' prefill are one step of eight prompts' tokens; when that step
costs more than 3x a lone prompt's, the burst target (p95 at 8 users <= 3x a lone request's) cannot be met by the
engine on that machine, however requests are admitted.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.local import QUESTIONS, SYSTEM

from manifold.providers.local.provider import embedded_model_path


def pipeline(ov: Any, budget: int, threads: int, prefix_caching: bool) -> Any:
    scheduler = ov.SchedulerConfig()
    scheduler.max_num_batched_tokens = budget
    scheduler.enable_prefix_caching = prefix_caching
    scheduler.cache_size = 1
    scheduler.max_num_seqs = 16
    return ov.ContinuousBatchingPipeline(
        str(embedded_model_path()), scheduler, "CPU", {"INFERENCE_NUM_THREADS": threads}
    )


def burst(
    ov: Any, pipe: Any, tokenizer: Any, users: int, system: str | None, tag: int
) -> tuple[list[float], list[float]]:
    """(each prompt's seconds to its first token, the steps' seconds until the last had it)."""

    def prompt(i: int) -> Any:
        user = {"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} (#{tag}.{i})"}  # new to the cache
        messages = [{"role": "system", "content": system}, user] if system else [user]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return tokenizer.encode(text, add_special_tokens=False).input_ids

    config = pipe.get_config()
    config.max_new_tokens = 8
    config.do_sample = False
    prompts = [prompt(i) for i in range(users)]  # tokenized before the clock starts, as the gateway does
    started = time.perf_counter()
    handles = [pipe.add_request(1000 * tag + i, p, config) for i, p in enumerate(prompts)]
    first: list[float | None] = [None] * users
    steps = []
    while any(f is None for f in first):
        t = time.perf_counter()
        pipe.step()
        steps.append(time.perf_counter() - t)
        for i, handle in enumerate(handles):
            if handle.can_read():
                handle.read()
                if first[i] is None:
                    first[i] = time.perf_counter() - started
    for handle in handles:
        handle.cancel()
    while pipe.has_non_finished_requests():
        pipe.step()
    return [f for f in first if f is not None], steps


def measure(ov: Any, budget: int, args: argparse.Namespace, system: str | None, caching: bool) -> dict[str, Any]:
    pipe = pipeline(ov, budget, args.threads, caching)
    tokenizer = ov.Tokenizer(str(embedded_model_path()))
    lone, last, mean, steps = [], [], [], []
    burst(ov, pipe, tokenizer, 1, system, 0)  # warm-up (and, with a system prompt, the prefix into the cache)
    for r in range(1, args.rounds + 1):
        lone.append(burst(ov, pipe, tokenizer, 1, system, 2 * r)[0][0])
        firsts, took = burst(ov, pipe, tokenizer, args.users, system, 2 * r + 1)
        last.append(max(firsts))
        mean.append(statistics.mean(firsts))
        steps.append(took)
    del pipe
    return {
        "lone": statistics.median(lone),
        "last": statistics.median(last),
        "mean": statistics.median(mean),
        "steps": steps[len(steps) // 2],
    }


def joining(ov: Any, budget: int, args: argparse.Namespace) -> tuple[float, float, float]:
    """A long prompt (the system prompt eight times over, about 1,500 tokens) joining `users - 1` sequences that are
    decoding: (its seconds to its first token, the longest and the median gap between two tokens of the others
    meanwhile)."""
    pipe = pipeline(ov, budget, args.threads, False)
    tokenizer = ov.Tokenizer(str(embedded_model_path()))
    config = pipe.get_config()
    config.max_new_tokens = 4096
    config.do_sample = False
    config.ignore_eos = True

    def ids(text: str) -> Any:
        chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        return tokenizer.encode(chat, add_special_tokens=False).input_ids

    others = [pipe.add_request(i, ids(QUESTIONS[i % len(QUESTIONS)]), config) for i in range(args.users - 1)]
    for _ in range(8):  # past their prefill: decoding
        pipe.step()
        for h in others:
            if h.can_read():
                h.read()
    long_config = pipe.get_config()
    long_config.max_new_tokens = 4
    started = time.perf_counter()
    long = pipe.add_request(99, ids(" ".join([SYSTEM] * 8)), long_config)
    last_token = [started] * len(others)
    gaps: list[float] = []
    ttft = 0.0
    while not ttft:
        pipe.step()
        now = time.perf_counter()
        for i, h in enumerate(others):
            if h.can_read():
                h.read()
                gaps.append(now - last_token[i])
                last_token[i] = now
        if long.can_read():
            ttft = now - started
    for h in [*others, long]:
        h.cancel()
    while pipe.has_non_finished_requests():
        pipe.step()
    del pipe
    return ttft, max(gaps), statistics.median(gaps)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budgets", default="128,256,512")
    args = parser.parse_args()
    import openvino_genai as ov

    print(f"threads {args.threads}, {args.users} prompts at once, medians of {args.rounds} rounds")
    print("| budget | prompts | lone (ms) | last first token (ms) | last / lone | mean (ms) | first steps (ms) |")
    print("|---:|---|---:|---:|---:|---:|---|")
    cases = [
        ("short questions", None, True),
        ("shared system, cached", SYSTEM, True),
        ("shared system, no cache", SYSTEM, False),
    ]
    for budget in (int(b) for b in args.budgets.split(",")):
        for name, system, caching in cases:
            r = measure(ov, budget, args, system, caching)
            steps = ", ".join(f"{s * 1e3:.0f}" for s in r["steps"][:4])
            print(
                f"| {budget} | {name} | {r['lone'] * 1e3:.0f} | {r['last'] * 1e3:.0f} | {r['last'] / r['lone']:.1f} "
                f"| {r['mean'] * 1e3:.0f} | {steps} |",
                flush=True,
            )
    print()
    print(f"A prompt of about 1,500 tokens joining {args.users - 1} decoding sequences (no prefix caching)")
    print("| budget | its first token (ms) | the others' longest gap (ms) | their median gap (ms) |")
    print("|---:|---:|---:|---:|")
    for budget in (int(b) for b in args.budgets.split(",")):
        ttft, longest, median = joining(ov, budget, args)
        print(f"| {budget} | {ttft * 1e3:.0f} | {longest * 1e3:.0f} | {median * 1e3:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
