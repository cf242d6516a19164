"""Time from `manifold serve` to its first answered `GET /health`, with a config that loads no local model.

    python bench/startup.py [--runs 5]

Prints each run and the median. Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """model_list:
  - model_name: gpt-4o
    provider: openai
    api_base: http://127.0.0.1:9/v1
server:
  log_level: warning
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(config: Path) -> float:
    port = free_port()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "manifold", "serve", "--config", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = started + 30
        while time.perf_counter() < deadline:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return time.perf_counter() - started
            except OSError:
                time.sleep(0.005)
        raise RuntimeError("manifold did not answer /health within 30 s")
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "manifold.yaml"
        config.write_text(CONFIG)
        times = []
        for i in range(args.runs):
            t = one_run(config)
            times.append(t)
            print(f"run {i + 1}: {t * 1000:.0f} ms to the first /health answer")
    print(f"median: {statistics.median(times) * 1000:.0f} ms over {args.runs} runs (python {sys.version.split()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
