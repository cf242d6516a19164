"""Where a lone request's time goes on the openvino engine (issue 15): one 128-token sequence stepped through
OpenVINO GenAI's ContinuousBatchingPipeline in this process, with chosen pipeline and CPU-plugin settings, beside
llama.cpp generating the same stream; each reports the process's CPU time and the wall time per generated token
(after the first, so the prompt is left out). Then the engine's own detokenization per token: the old way (two
`tokenizer.decode` calls a token) and the byte table (batching.Detokenizer).

    .venv/bin/python bench/openvino_step.py [--threads 1] [--rounds 3] base llama_cpp latency base kv_f16 ...

Settings are named below (SETTINGS); give `base` between the others: on a shared machine CPU time per token moves
with the load too, so compare a setting with the `base` runs next to it.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from typing import Any

from manifold.providers.local.batching import Detokenizer
from manifold.providers.local.openvino import _pieces
from manifold.providers.local.provider import embedded_model_path

MESSAGES = [{"role": "user", "content": "Tell me about the history of Paris."}]
TOKENS = 128
# name: (CPU plugin properties, SchedulerConfig fields)
SETTINGS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "base": ({}, {}),  # what the engine uses: cache_size 1, max_num_seqs 16, prefix caching
    "latency": ({"PERFORMANCE_HINT": "LATENCY"}, {}),
    "throughput": ({"PERFORMANCE_HINT": "THROUGHPUT"}, {}),
    "kv_u8": ({"KV_CACHE_PRECISION": "u8"}, {}),
    "kv_f16": ({"KV_CACHE_PRECISION": "f16"}, {}),
    "kv_f32": ({"KV_CACHE_PRECISION": "f32"}, {}),
    "f32": ({"INFERENCE_PRECISION_HINT": "f32"}, {}),
    "bf16": ({"INFERENCE_PRECISION_HINT": "bf16"}, {}),
    "dq0": ({"DYNAMIC_QUANTIZATION_GROUP_SIZE": 0}, {}),
    "dq128": ({"DYNAMIC_QUANTIZATION_GROUP_SIZE": 128}, {}),
    "no_pinning": ({"ENABLE_CPU_PINNING": False}, {}),
    "no_hyper_threading": ({"ENABLE_HYPER_THREADING": False}, {}),
    "no_prefix_caching": ({}, {"enable_prefix_caching": False}),
    "no_split_fuse": ({}, {"dynamic_split_fuse": False}),
    "batched_tokens_64": ({}, {"max_num_batched_tokens": 64}),
    "max_num_seqs_1": ({}, {"max_num_seqs": 1}),
    "kv_blocks_256": ({}, {"num_kv_blocks": 256, "cache_size": 0}),
}


def sampling(config: Any, seed: int) -> None:
    """bench/local.py's requests: temperature 0.7 with the engines' defaults; every token generated."""
    config.max_new_tokens = TOKENS
    config.ignore_eos = True
    config.do_sample = True
    config.temperature = 0.7
    config.top_p = 0.95
    config.top_k = 40
    config.min_p = 0.05
    config.repetition_penalty = 1.1
    config.rng_seed = seed


def openvino(name: str, threads: int, rounds: int) -> tuple[list[float], list[float]]:
    import openvino_genai as genai

    properties, fields = SETTINGS[name]
    scheduler = genai.SchedulerConfig()
    scheduler.cache_size = 1
    scheduler.max_num_seqs = 16
    scheduler.enable_prefix_caching = True
    for key, value in fields.items():
        setattr(scheduler, key, value)
    pipeline = genai.ContinuousBatchingPipeline(
        str(embedded_model_path()), scheduler, "CPU", {"INFERENCE_NUM_THREADS": threads, **properties}
    )
    tokenizer = pipeline.get_tokenizer()
    ids = tokenizer.encode(
        tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True), add_special_tokens=False
    ).input_ids
    cpu, wall = [], []
    for i in range(rounds + 1):  # the first round warms up
        config = genai.GenerationConfig()
        sampling(config, i)
        handle = pipeline.add_request(i, ids, config)
        pipeline.step()  # the prompt and the first token
        cpu0, wall0 = time.process_time(), time.perf_counter()
        while pipeline.has_non_finished_requests():
            pipeline.step()
            while handle.can_read():
                handle.read()
        if i:
            cpu.append((time.process_time() - cpu0) / (TOKENS - 1) * 1e3)
            wall.append((time.perf_counter() - wall0) / (TOKENS - 1) * 1e3)
    del pipeline, handle
    gc.collect()
    return cpu, wall


def llama_cpp(threads: int, rounds: int) -> tuple[list[float], list[float]]:
    """The llama_cpp engine's own path: llama-cpp-python's chat stream (what LocalModelProvider iterates)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(embedded_model_path()), n_ctx=4096, n_threads=threads, verbose=False)
    cpu, wall = [], []
    for i in range(rounds + 1):
        chunks = llm.create_chat_completion(
            MESSAGES, max_tokens=TOKENS, temperature=0.7, top_p=0.95, top_k=40, min_p=0.05, repeat_penalty=1.1,
            stream=True, seed=i,
        )  # fmt: skip
        next(chunks)  # the role
        next(chunks)  # the first token, after the prompt
        cpu0, wall0, n = time.process_time(), time.perf_counter(), 0
        for _ in chunks:
            n += 1
        if i:
            cpu.append((time.process_time() - cpu0) / n * 1e3)
            wall.append((time.perf_counter() - wall0) / n * 1e3)
    del llm
    gc.collect()
    return cpu, wall


def detokenization(threads: int) -> None:
    """Thread CPU per token of the engine's detokenization, on 128 generated tokens."""
    import openvino_genai as genai

    scheduler = genai.SchedulerConfig()
    scheduler.cache_size = 1
    pipeline = genai.ContinuousBatchingPipeline(
        str(embedded_model_path()), scheduler, "CPU", {"INFERENCE_NUM_THREADS": threads}
    )
    tokenizer = pipeline.get_tokenizer()
    ids = tokenizer.encode(
        tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True), add_special_tokens=False
    ).input_ids
    config = genai.GenerationConfig()
    sampling(config, 0)
    handle = pipeline.add_request(0, ids, config)
    generated: list[int] = []
    while pipeline.has_non_finished_requests():
        pipeline.step()
        while handle.can_read():
            for output in handle.read().values():
                generated += [int(t) for t in output.generated_ids]
    pieces = _pieces(tokenizer, {int(i): bytes(b) for b, i in tokenizer.get_vocab().items()})
    expected = tokenizer.decode(generated)
    for _ in range(3):
        started = time.thread_time()
        assert "".join(_windowed(tokenizer.decode, generated)) == expected
        old = (time.thread_time() - started) / len(generated) * 1e6
        started = time.thread_time()
        detok = Detokenizer(pieces)
        assert "".join(detok.feed(t) for t in generated) + detok.flush() == expected
        new = (time.thread_time() - started) / len(generated) * 1e6
        print(f"detokenization, CPU µs per token: two decode calls {old:.1f}, byte table {new:.1f}", flush=True)


def _windowed(decode: Any, ids: list[int]) -> list[str]:
    """The engine's detokenizer before the byte table: the last tokens decoded with a few before them."""
    out, prefix, read = [], 0, 0
    for n in range(1, len(ids) + 1):
        before, after = decode(ids[prefix:read]), decode(ids[prefix:n])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            out.append(after[len(before) :])
            prefix, read = read, n
    out.append(decode(ids[prefix:])[len(decode(ids[prefix:read])) :])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("runs", nargs="*", default=["base", "llama_cpp", "base"], help="settings, or llama_cpp")
    args = parser.parse_args()
    print(f"threads {args.threads}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("| run | CPU ms / token | median | wall ms / token | load (1 min) |")
    print("|---|---|---:|---|---:|")
    for name in args.runs:
        if name != "llama_cpp" and name not in SETTINGS:
            parser.error(f"unknown setting {name!r} (known: {', '.join(SETTINGS)}, llama_cpp)")
        cpu, wall = (
            llama_cpp(args.threads, args.rounds) if name == "llama_cpp" else openvino(name, args.threads, args.rounds)
        )
        print(
            f"| {name} | {' '.join(f'{x:.1f}' for x in cpu)} | {statistics.median(cpu):.1f} "
            f"| {' '.join(f'{x:.1f}' for x in wall)} | {os.getloadavg()[0]:.2f} |",
            flush=True,
        )
    print()
    detokenization(args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
