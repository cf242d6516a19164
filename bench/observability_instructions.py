"""Instructions per request that metrics, the JSON access log and tracing add: `bench/observability_cost.py`'s
in-process requests, counted by valgrind (callgrind) instead of timed. Instruction counts do not depend on what
else the machine runs, so a few µs show even on a loaded machine where CPU-time rounds scatter.

    python bench/observability_instructions.py [--requests 300] [--chunks 20] [--settings off,on,trace]

Re-runs itself under `valgrind --tool=callgrind --dump-before=getppid`: the child builds one app per setting
(as observability_cost.py does), warms each up, then serves `--requests` non-streamed and `--requests` streamed
requests per setting, calling `os.getppid()` (nothing else in the process does) at each phase's start and end, so
that each phase's instructions land in a dump of their own (the cyclic garbage collector off, a collection run
between phases). Only the event loop's thread is counted (`--separate-threads=yes`: a dump holds the thread that
called `getppid`): other threads work by the clock, not per request (the log's flush thread every 0.2 s, the
store's start-up thread importing SQLAlchemy), and under valgrind's slowness their work would land in whichever
phase it overlapped (tens of thousands of instructions per request, a different phase each run); for the same
reason the event loop's periodic tasks are cancelled once the apps have started (the metrics' once-a-second flush
is done at each phase's end instead). Prints
instructions per request of each setting and the
difference from `off`; the development machine runs 5-8 instructions a nanosecond here (bench/README.md), so
120 000 instructions are about 0.02 ms of CPU. Needs valgrind; slow (valgrind runs Python ~50x slower: minutes).
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import glob
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import observability_cost as oc
from manifold import _json
from manifold.observability import tracing
from manifold.observability.logging import configure
from manifold.observability.metrics import flush_all

CHILD_ENV = "MANIFOLD_BENCH_CALLGRIND_CHILD"


async def phases(args: argparse.Namespace) -> list[str]:
    settings = [s for s in args.settings.split(",") if s]
    apps = {}
    for setting in settings:
        if setting == "trace":
            oc._install_memory_tracing()
        else:
            tracing._TRACING = None
            tracing.PROPAGATE = False
        apps[setting] = oc.build(setting)
        await apps[setting].startup()
        # The store opens in the background (SQLAlchemy imported in a thread): done before any phase counts.
        await apps[setting].store.ready(timeout_s=120, opening_s=120)
    # What runs by the clock stops here: the once-a-second move of buffered metrics into prometheus-client (left
    # to `settle`, at each phase's end), the key watcher's and the Responses engine's periodic store queries.
    # Under valgrind a second is ~50 times fewer requests than at full speed, and these would land in whichever
    # phase they fell in (tens of thousands of instructions per request, a different phase each run).
    await asyncio.sleep(0.1)  # the watchers' first turn (the key watcher's first look) done
    for task in asyncio.all_tasks():
        if task is not asyncio.current_task():
            task.cancel()
    oc.MemoryBackend.chunks = args.chunks
    names = []
    for stream in (False, True):
        body = _json.encode({"model": "bench", "messages": [{"role": "user", "content": "hi"}], "stream": stream})
        for s in settings:
            await oc.serve(apps[s], body, 50)  # warm up: caches, children, first-time imports
        for s in settings:
            gc.collect()  # between phases, in a dump of its own: a full collection walks every live object
            os.getppid()  # a dump: what came before is not this phase's
            await oc.serve(apps[s], body, args.requests)
            settle()  # the phase's own deferred work (log writes, metric flushes) counted with it
            os.getppid()  # a dump: this phase
            names.append(f"{'stream' if stream else 'non-stream'} {s}")
    for app in apps.values():
        await app.shutdown()
    return names


def settle() -> None:
    """Do now the work a phase leaves for later: buffered log lines written, buffered metrics moved into
    prometheus-client. (The cyclic collector is off: a collection would land in whichever phase happens to
    cross its threshold, and cost what the whole heap costs to walk, not what the phase made.)"""
    for handler in logging.getLogger().handlers:
        handler.flush()
    flush_all()


def child(args: argparse.Namespace) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stderr.fileno())
    configure("info", "json", [])
    logging.getLogger("manifold.storage").setLevel(logging.WARNING)
    gc.disable()
    names = asyncio.run(phases(args))
    print("\n".join(names), flush=True)


def totals(path: str) -> int:
    with open(path) as f:
        for line in f:
            if line.startswith(("totals:", "summary:")):
                return int(line.split()[1])
    raise ValueError(f"no totals in {path}")


def parent(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="manifold-callgrind-") as directory:
        out = os.path.join(directory, "cg.out")
        command = [
            "valgrind",
            "--tool=callgrind",
            "--dump-before=getppid",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            sys.executable,
            os.path.abspath(__file__),
            *sys.argv[1:],
        ]
        env = {**os.environ, CHILD_ENV: "1", "PYTHONHASHSEED": "0"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            sys.exit(f"valgrind failed ({done.returncode}):\n{done.stderr[-3000:]}")
        names = done.stdout.split("\n")[: -1 or None]
        names = [n for n in names if n]
        # The main thread's dumps: cg.out.<n>-01 (the thread that calls getppid; other threads' counts go to the
        # final cg.out-<thread>, read by nothing).
        dumps = sorted(glob.glob(out + ".*-01"), key=lambda p: int(p.rsplit(".", 1)[1].split("-")[0]))
        # Dumps alternate: what comes before a phase (start-up, a garbage collection), then the phase.
        per_phase = [totals(p) for p in dumps[1 : 2 * len(names) : 2]]
    by_name = dict(zip(names, per_phase, strict=True))
    for mode in ("non-stream", "stream"):
        base = by_name.get(f"{mode} off")
        for name, count in by_name.items():
            if not name.startswith(mode + " "):
                continue
            per = count / args.requests
            extra = f"  ({(count - base) / args.requests:+,.0f} vs off)" if base is not None and count != base else ""
            print(f"{name:18} {per:12,.0f} instructions/request{extra}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="requests per setting and mode")
    parser.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer")
    parser.add_argument("--settings", default="off,on,trace")
    arguments = parser.parse_args()
    if os.environ.get(CHILD_ENV):
        child(arguments)
    else:
        parent(arguments)
