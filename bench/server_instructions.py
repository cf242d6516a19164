"""Instructions per request of the real server: `manifold serve` itself (uvicorn, uvloop, every layer, the real
sockets) under valgrind's callgrind, per observability setting of `bench/overhead.py` (`off`, `on`, `access`,
`all`…), so that what a setting adds can be told to within a fraction of a microsecond on a shared machine, where
CPU time through sockets scatters by 0.1 ms between rounds.

    python bench/server_instructions.py [--settings off,on,access,all] [--requests 400] [--modes non-stream,stream]

For each setting: start the fake upstream and `valgrind --tool=callgrind --instr-atstart=no python -m manifold
serve` (the same config `bench/overhead.py --observe SETTING` writes), warm it up with `--warmup` requests, switch
instrumentation on (`callgrind_control -i on`), send `--requests` requests (one connection at a time, so no
request waits on another and the count is the server's work alone), switch it off, and read the instructions
counted in the server process (all its threads: the user-space work of the kernel's system calls is not counted,
their count is the same between settings). Prints instructions per request and the difference from the first
setting. valgrind runs Python ~50 times slower: about a minute per setting and mode. Asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import overhead as oh  # noqa: E402 (a sibling script, after the path is set)


def _wait(url: str, seconds: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with status {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=5) as resp:
            if resp.status == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {seconds:g} s")


def _load(port: int, requests: int, stream: bool, key: str) -> None:
    argv = [sys.executable, str(HERE / "loadgen.py"), "--port", str(port), "--concurrency", "1"]
    argv += ["--warmup", "0", "--requests", str(requests), "--no-handshake", "--api-key", key, "--timeout", "3600"]
    if stream:
        argv.append("--stream")
    out = subprocess.run(argv, capture_output=True, check=True, timeout=3600).stdout.decode()
    if '"errors": 0' not in out:
        raise RuntimeError(f"requests failed: {out[-500:]}")


def _instructions(dump_dir: Path) -> int:
    total = 0
    for path in glob.glob(str(dump_dir / "callgrind.out*")):
        text = Path(path).read_text(errors="replace")
        found = re.search(r"^totals:\s+(\d+)", text, re.M)
        if found:
            total += int(found.group(1))
    return total


def measure(setting: str, modes: list[str], args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="manifold-srv-instr-") as tmp:
        work = Path(tmp)
        up = subprocess.Popen(
            [sys.executable, str(HERE / "fake_upstream.py"), "--port", "0", "--chunks", str(args.chunks)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert up.stdout is not None
            up_port = int(up.stdout.readline().decode().split()[1])
            config = oh.write_config(work, up_port, setting)
            port = oh.free_port()
            dumps = work / "dumps"
            dumps.mkdir()
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-atstart=yes"]
            argv += [f"--callgrind-out-file={dumps}/callgrind.out.%p", sys.executable, "-m", "manifold", "serve"]
            argv += ["--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
            env = {**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH") or str(HERE.parent / "src")}
            with (work / "server.log").open("wb") as log:
                server = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                _wait(f"http://127.0.0.1:{port}/health", 600, server)
                key = oh.ACCESS_KEY if setting in ("access", "all") else "sk-bench"
                out: dict[str, float] = {}
                for mode in modes:
                    stream = mode == "stream"
                    _load(port, args.warmup, stream, key)
                    subprocess.run(["callgrind_control", "-z", str(server.pid)], check=True, capture_output=True)
                    subprocess.run(["callgrind_control", "-i", "on", str(server.pid)], check=True, capture_output=True)
                    _load(port, args.requests, stream, key)
                    subprocess.run(["callgrind_control", "-i", "off", str(server.pid)], check=True, capture_output=True)
                    for old in dumps.glob("callgrind.out*"):
                        old.unlink()
                    done = subprocess.Popen(["callgrind_control", "-d", str(server.pid)], stdout=subprocess.PIPE)
                    # The dump is taken when the server's thread next runs: an idle one waits in epoll, so wake
                    # it (instrumentation is off: these requests are not counted).
                    counted = 0
                    for _ in range(240):
                        with contextlib.suppress(OSError):
                            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5).close()
                        time.sleep(0.5)
                        if counted := _instructions(dumps):
                            break
                    done.kill()
                    done.wait()
                    if not counted:
                        raise RuntimeError(
                            f"no dump counted: {sorted(p.name for p in dumps.iterdir())}"
                            f"{sorted(p.name for p in dumps.iterdir())}\n{(work / 'server.log').read_text()[-2000:]}"
                        )
                    out[mode] = counted / args.requests
                    if args.keep_dumps:
                        kept = Path(args.keep_dumps) / f"{setting}-{mode}"
                        kept.mkdir(parents=True, exist_ok=True)
                        for dump in dumps.glob("callgrind.out*"):
                            shutil.copy(dump, kept / dump.name)
                return out
            finally:
                server.terminate()
                try:
                    server.wait(120)
                except subprocess.TimeoutExpired:
                    server.kill()
        finally:
            up.terminate()
            up.wait()
            if setting in ("access", "all"):
                with contextlib.suppress(Exception):
                    oh.forget_redis_keys()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", default="off,on,access,all")
    parser.add_argument("--modes", default="non-stream,stream")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument(
        "--keep-dumps", metavar="DIR", help="copy the callgrind dumps to DIR/SETTING-MODE (for callgrind_annotate)"
    )
    args = parser.parse_args()
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("needs valgrind (callgrind and callgrind_control)", file=sys.stderr)
        return 2
    settings = [s for s in args.settings.split(",") if s]
    modes = [m for m in args.modes.split(",") if m]
    results = {s: measure(s, modes, args) for s in settings}
    print(
        f"bench/server_instructions.py: {args.requests} requests per setting and mode, one at a time, "
        f"{args.chunks} chunks a stream; instructions of the manifold serve process per request"
    )
    print()
    print("| setting | " + " | ".join(modes) + " |")
    print("|---|" + "---:|" * len(modes))
    base = results[settings[0]]
    for s in settings:
        cells = []
        for m in modes:
            value = results[s][m]
            extra = "" if s == settings[0] else f" ({value - base[m]:+,.0f})"
            cells.append(f"{value:,.0f}{extra}")
        print(f"| {s} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
