"""How soon a client that leaves stops the upstream work, per route (docs/responses.md, "Cancellation").

    .venv/bin/python bench/cancellation.py [--repeats 100]

Starts `manifold serve` against the slow fake upstream of the tests (`tests/fakes/drip_upstream.py`: 5 s per
answer, a chunk every 0.25 s when streamed), then per route: sends the request, waits for the first SSE event
(streamed) or for the upstream to receive the request (not streamed), resets the connection, and measures the
time until the upstream sees its connection close. Prints min / median / p95 / max in milliseconds, and how many
times the upstream ran to its end instead (must be 0). Asserts nothing; everything runs on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The `manifold serve` it starts runs this checkout's code, whatever is installed in the environment.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))

from tests.e2e.conftest import ManifoldProcess  # noqa: E402
from tests.e2e.test_cancellation import CASES, drip_config, leave_mid_answer  # noqa: E402
from tests.fakes.drip_upstream import DripUpstream  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {args.repeats} tries per route")
    print("| route | min ms | median ms | p95 ms | max ms | ran to its end |")
    print("|---|---|---|---|---|---|")
    with DripUpstream(interval=0.25, duration=5.0) as drip, tempfile.TemporaryDirectory() as tmp:
        gateway = ManifoldProcess(drip_config(drip), Path(tmp))
        try:
            for case, (path, body) in CASES.items():
                delays: list[float] = []
                missed = 0
                for _ in range(args.repeats):
                    try:
                        delays.append(leave_mid_answer(gateway, drip, path, body) * 1000)
                    except AssertionError:
                        missed += 1
                delays.sort()
                if not delays:
                    print(f"| {case} | - | - | - | - | {missed} |")
                    continue
                p95 = delays[min(len(delays) - 1, int(len(delays) * 0.95))]
                print(
                    f"| {case} | {delays[0]:.1f} | {statistics.median(delays):.1f} | {p95:.1f} | {delays[-1]:.1f} "
                    f"| {missed} |"
                )
        finally:
            gateway.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
