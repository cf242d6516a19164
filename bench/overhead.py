"""Manifold's own cost per request: a fake upstream, Manifold in front of it, and a load generator.

    python bench/overhead.py [--requests 3000] [--warmup 300] [--concurrency 16] [--latency-ms 0]
                             [--chunks 20] [--modes non-stream,stream] [--targets direct,manifold]
                             [--manifold-cmd "python -m manifold serve"] [--json PATH] [--timeout 300]
                             [--observe off,on,trace,ledger] [--rounds 5]

Three processes besides this one, all on 127.0.0.1: the fake upstream (bench/fake_upstream.py), Manifold
(``manifold serve``, one worker) and, for each run, the load generator (bench/loadgen.py). For every mode
(non-streaming, streaming) and target (straight to the upstream, through Manifold) it warms up, samples
the servers' CPU time (/proc/PID/stat utime+stime) and RSS (/proc/PID/status VmRSS), runs the measured
requests, samples again, and prints a markdown table. It prints figures and asserts nothing.

`--observe` runs one Manifold per observability setting, side by side: `off` (no metrics, no access log),
`on` (Prometheus metrics and the JSON access log at INFO, written to a file; `metrics` and `log` are its two
halves alone) and `trace` (`on` plus
OpenTelemetry tracing with a sampler of 1.0, exporting over OTLP/HTTP to a sink in this process), `access`
(`off` plus access control, docs/access.md: a static key with rpm, tpm, in-flight and budget limits counted in
Redis (`BENCH_REDIS_URL`, default redis://127.0.0.1:6379/0; its keys are deleted afterwards) and a priced
deployment; the Redis scripts each request ran, from INFO commandstats, are printed), `ledger` (`off` plus the
usage ledger: a row per request, written in batches to a SQLite file in the work directory) and `all` (`on`
plus `access` plus `ledger`: everything a production gateway runs). All are started first and loaded in turn,
`--rounds` times; the summary compares medians. `--base-src DIR` runs every setting a second time on the
Manifold package under DIR (another checkout's `src/`), side by side, and prints the change per paired round:
a change measured against its base in one run.

The comparable figure is Manifold's CPU milliseconds per request: req/s and latency depend on the machine
and on the three processes sharing its cores. See bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import IO, Any

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
MODES = ("non-stream", "stream")
TARGETS = ("direct", "manifold")
CLK_TCK = os.sysconf("SC_CLK_TCK")
LITELLM_MS_PER_REQ = "~14-16"
TARGET_MS_PER_REQ = 0.25
BASE_SUFFIX = " [base]"  # a target run from `--base-src`
OBSERVE = ("off", "on", "metrics", "log", "trace", "access", "ledger", "all")
# `--observe access`: `off` plus a static key with rpm, tpm, in-flight and budget limits counted in Redis (issue 12).
ACCESS_KEY = "sk-bench-access-0123456789"
ACCESS_LIMIT_MS = 0.15
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
REDIS_PREFIX = f"manifold-bench-{os.getpid()}:"
OBSERVE_ON_LIMIT_MS = 0.02  # metrics + JSON access log (issue 13)


class BenchError(Exception):
    """A step of the benchmark failed (the message says which and why)."""


class BenchTimeout(BaseException):
    """The global --timeout ran out (a BaseException so that no step swallows it)."""


# --------------------------------------------------------------------------------------------- /proc


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (field 3, the state, is index 0)."""
    data = Path(f"/proc/{pid}/stat").read_text()
    return data[data.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(_stat_fields(int(entry))[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, ()))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its live descendants (all threads)."""
    ticks = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = _stat_fields(p)
            ticks += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return ticks / CLK_TCK


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and its live descendants, in MiB."""
    kib = 0
    for p in process_tree(pid):
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kib += int(line.split()[1])
                    break
    return kib / 1024.0


# --------------------------------------------------------------------------------------- children


def _die_with_parent() -> None:
    """In a child before exec: get SIGTERM if this benchmark dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# `--pin`: Manifold on a CPU of its own, the fake upstream and the load generator on the others (Linux only), so
# that Manifold's CPU time is not inflated by sharing a core's caches and time slices with them.
PIN = False


def _pin(pid: int, name: str) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return
    mine = {cpus[-1]} if name.startswith("manifold") else set(cpus[:-1])
    with contextlib.suppress(OSError):  # the child may have exited already
        os.sched_setaffinity(pid, mine)


class Children:
    """Every child process started, each in its own session (a Ctrl-C reaches only this process)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(
        self, name: str, argv: list[str], *, stdin: bool = False, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start ``argv``: stdout piped, stderr to ``workdir/name.log``."""
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it, closed below
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env=None if env is None else {**os.environ, **env},
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            )
        except OSError as exc:
            raise BenchError(f"cannot start {name} ({shlex.join(argv)}): {exc}") from None
        finally:
            log.close()
        self.procs.append(proc)
        if PIN:
            _pin(proc.pid, name)
        return proc

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.workdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        """SIGTERM its process group, SIGKILL what is left after ``grace`` seconds, reap it."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)
        # The group may outlive its leader (a worker, a wrapper's child).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def stop_all(self) -> None:
        while self.procs:
            self.stop(self.procs.pop())


def read_line(stream: IO[bytes] | None, what: str) -> str:
    """One line from a child's stdout (the global alarm bounds the wait)."""
    assert stream is not None
    line = stream.readline()
    if not line:
        raise BenchError(f"{what} exited before answering")
    return line.decode(errors="replace").strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------- servers


def start_upstream(children: Children, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    argv = [
        sys.executable,
        str(HERE / "fake_upstream.py"),
        "--host",
        HOST,
        "--port",
        "0",
        "--latency-ms",
        str(args.latency_ms),
        "--chunks",
        str(args.chunks),
    ]
    proc = children.start("upstream", argv)
    try:
        line = read_line(proc.stdout, "the fake upstream")
    except BenchError as exc:
        raise BenchError(f"{exc}:\n{children.log_tail('upstream')}") from None
    if not line.startswith("READY "):
        raise BenchError(f"the fake upstream said {line!r}")
    return proc, int(line.split()[1])


BENCH_MASTER_KEY = "sk-bench-master-0123456789abcdef"


def create_virtual_key(port: int) -> str:
    """`--auth virtual`: a virtual key made through the admin API (the master key's own request)."""
    request = urllib.request.Request(
        f"http://{HOST}:{port}/admin/keys",
        data=b'{"alias": "bench"}',
        headers={"authorization": f"Bearer {BENCH_MASTER_KEY}", "content-type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return str(json.loads(resp.read())["key"])


def access_config() -> str:
    """`--observe access` / `all`: a static key with limits and a budget, counted in Redis."""
    return (
        "auth:\n  keys:\n"
        f"    - {{key: {ACCESS_KEY}, alias: bench, rpm: 100000000, tpm: 1000000000000, "
        "max_parallel_requests: 100000, max_budget: 1000000, budget_duration: daily}\n"
        f"redis:\n  url: {REDIS_URL}\n  key_prefix: '{REDIS_PREFIX}'\n  timeout_s: 5\n"
    )


def ledger_config(workdir: Path) -> str:
    """`--observe ledger` / `all`: the usage ledger on, into a SQLite file of the run's own."""
    return f"ledger:\n  enabled: true\nstorage:\n  data_dir: {workdir / 'ledger-data'}\n"


def write_config(workdir: Path, upstream_port: int, observe: str | None = None, auth: str = "none") -> Path:
    """`observe` None: the defaults (metrics on, access log below the `warning` level); `off`: metrics and
    access log off; `on` / `trace`: metrics on and the JSON access log written at `info`; `ledger`: `off` and the
    usage ledger on (SQLite in the work directory)."""
    path = workdir / f"manifold-{observe or 'default'}.yaml"
    text = (
        "model_list:\n"
        "  - model_name: bench\n"
        "    provider: openai\n"
        f"    api_base: http://{HOST}:{upstream_port}/v1\n"
        "    api_key: sk-bench\n"
    )
    if observe in ("access", "all"):  # priced, so that each request's end adds its cost to the budget
        text += "    input_cost_per_million: 0.15\n    output_cost_per_million: 0.6\n"
    text += "server:\n"
    if observe is None:
        text += "  log_level: warning\n"
    elif observe in ("off", "access", "ledger"):
        text += "  log_level: info\n  access_log: false\nmetrics:\n  enabled: false\n"
        if observe == "access":
            text += access_config()
        if observe == "ledger":
            text += ledger_config(workdir)
    elif observe == "metrics":  # `on`'s two halves, each alone
        text += "  log_level: info\n  access_log: false\nmetrics:\n  enabled: true\n"
    elif observe == "log":
        text += "  log_level: info\n  log_format: json\n  access_log: true\nmetrics:\n  enabled: false\n"
    else:
        text += "  log_level: info\n  log_format: json\n  access_log: true\nmetrics:\n  enabled: true\n"
        if observe == "trace":
            text += "tracing:\n  enabled: true\n"
        if observe == "all":
            text += access_config() + ledger_config(workdir)
    if auth != "none":  # docs/access.md: every request authenticated (by the master key or a virtual key)
        text += f"auth:\n  master_key: {BENCH_MASTER_KEY}\nstorage:\n  data_dir: {workdir / 'data'}\n"
    path.write_text(text)
    return path


class OtlpSink:
    """A do-nothing OTLP/HTTP receiver for `--observe trace`: answers every export with 200."""

    def __init__(self) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def start_manifold(
    children: Children,
    args: argparse.Namespace,
    config: Path,
    env: dict[str, str] | None = None,
    variant: str | None = None,
) -> tuple[subprocess.Popen[bytes], int, float]:
    """Start Manifold and wait for GET /health: (process, port, start-up seconds)."""
    port = free_port()
    argv = [*shlex.split(args.manifold_cmd), "--config", str(config), "--host", HOST, "--port", str(port)]
    started = time.monotonic()
    name = "manifold" if variant is None else f"manifold-{variant}"
    proc = children.start(name, argv, env=env)
    url = f"http://{HOST}:{port}/health"
    deadline = started + args.startup_timeout
    while True:
        if proc.poll() is not None:
            raise BenchError(
                f"Manifold exited with status {proc.returncode} during start-up ({shlex.join(argv)}):\n"
                f"{children.log_tail(name)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return proc, port, time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise BenchError(
                f"Manifold did not answer GET /health within {args.startup_timeout:g} s:\n{children.log_tail(name)}"
            )
        time.sleep(0.1)


# ---------------------------------------------------------------------------------------------- runs


@dataclass
class Run:
    mode: str
    target: str
    requests: int = 0
    ok: int = 0
    errors: int = 0
    rps: float = math.nan
    p50_ms: float = math.nan
    p90_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    wall_s: float = math.nan
    manifold_cpu_ms_per_req: float | None = None
    upstream_cpu_ms_per_req: float = math.nan
    loadgen_cpu_ms_per_req: float = math.nan
    manifold_rss_mb_before: float | None = None
    manifold_rss_mb_after: float | None = None
    first_error: str | None = None
    manifold_cpu_cores: float | None = None  # Manifold's CPU seconds per wall second in the measured phase
    redis_calls_per_req: float | None = None  # Redis scripts per request, `--observe access`
    failed: str | None = None


def redis_calls() -> int:
    """Scripts the Redis server has run so far (INFO commandstats: EVAL, EVALSHA, SCRIPT): Manifold's round
    trips (the commands a script runs inside are counted apart, and INFO's own call is not among these)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    return sum(int(v["calls"]) for k, v in stats.items() if k.startswith(("cmdstat_eval", "cmdstat_script")))


def forget_redis_keys() -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        for key in client.scan_iter(match=REDIS_PREFIX + "*"):
            client.delete(key)
    finally:
        client.close()


def run_load(
    children: Children,
    args: argparse.Namespace,
    run: Run,
    port: int,
    upstream_pid: int,
    manifold_pid: int | None,
    deadline: float,
) -> None:
    """One warm-up + measured phase against ``port``; fills ``run`` in."""
    budget = max(1.0, deadline - time.monotonic() - 5.0)
    argv = [
        sys.executable,
        str(HERE / "loadgen.py"),
        "--host",
        HOST,
        "--port",
        str(port),
        "--concurrency",
        str(args.concurrency),
        "--warmup",
        str(args.warmup),
        "--requests",
        str(args.requests),
        "--timeout",
        f"{budget:.1f}",
        "--api-key",
        args.client_keys.get(port, "sk-bench"),
    ]
    if run.mode == "stream":
        argv.append("--stream")
    access = run.target.removesuffix(BASE_SUFFIX) in ("manifold (access)", "manifold (all)")
    if access:
        argv += ["--api-key", ACCESS_KEY]
    name = f"loadgen-{run.mode}-{run.target}"
    proc = children.start(name, argv, stdin=True)
    try:
        warm = json.loads(read_line(proc.stdout, "the load generator"))
        if warm.get("phase") != "warm":
            raise BenchError(warm.get("error") or f"unexpected message {warm!r}")
        if warm["ok"] == 0 and warm["requests"] > 0:
            raise BenchError(f"every warm-up request failed: {warm.get('first_error')}")

        up_cpu0 = cpu_seconds(upstream_pid)
        if manifold_pid is not None:
            run.manifold_rss_mb_before = rss_mb(manifold_pid)
            mf_cpu0 = cpu_seconds(manifold_pid)
        calls0 = redis_calls() if access else 0
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()

        done = json.loads(read_line(proc.stdout, "the load generator"))
        if access:
            run.redis_calls_per_req = (redis_calls() - calls0) / args.requests
        up_cpu1 = cpu_seconds(upstream_pid)
        if manifold_pid is not None:
            mf_cpu1 = cpu_seconds(manifold_pid)
            run.manifold_rss_mb_after = rss_mb(manifold_pid)
            run.manifold_cpu_ms_per_req = (mf_cpu1 - mf_cpu0) * 1000.0 / args.requests
        if done.get("phase") != "done":
            raise BenchError(done.get("error") or f"unexpected message {done!r}")
    except (BenchError, ValueError, OSError) as exc:
        tail = children.log_tail(name)
        raise BenchError(f"{exc}{':' + chr(10) + tail if tail else ''}") from None
    finally:
        Children.stop(proc, grace=2.0)
        children.procs.remove(proc)

    run.upstream_cpu_ms_per_req = (up_cpu1 - up_cpu0) * 1000.0 / args.requests
    for key in ("requests", "ok", "errors", "rps", "p50_ms", "p90_ms", "p99_ms", "max_ms", "wall_s"):
        setattr(run, key, done[key])
    run.loadgen_cpu_ms_per_req = done["loadgen_cpu_ms_per_req"]
    if run.manifold_cpu_ms_per_req is not None and run.wall_s > 0:
        run.manifold_cpu_cores = run.manifold_cpu_ms_per_req * args.requests / 1000.0 / run.wall_s
    run.first_error = done.get("first_error")


# ------------------------------------------------------------------------------------------- output


def _f(value: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def table(runs: list[Run]) -> str:
    head = [
        "mode",
        "target",
        "req/s",
        "p50 ms",
        "p99 ms",
        "Manifold CPU ms/req",
        "upstream CPU ms/req",
        "Manifold RSS MB (before → after)",
        "errors",
    ]
    rows = []
    for r in runs:
        if r.failed:
            rows.append([r.mode, r.target, "FAILED", "—", "—", "—", "—", "—", "—"])
            continue
        rss = "—"
        if r.manifold_rss_mb_before is not None:
            rss = f"{r.manifold_rss_mb_before:.1f} → {_f(r.manifold_rss_mb_after, 1)}"
        rows.append(
            [
                r.mode,
                r.target,
                _f(r.rps, 0),
                _f(r.p50_ms, 2),
                _f(r.p99_ms, 2),
                _f(r.manifold_cpu_ms_per_req, 3),
                _f(r.upstream_cpu_ms_per_req, 3),
                rss,
                str(r.errors),
            ]
        )
    widths = [max(len(cell) for cell in column) for column in zip(head, *rows, strict=True)]
    right = {2, 3, 4, 5, 6, 8}  # the numeric columns

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "| " + " | ".join(padded) + " |"

    sep = "|" + "|".join("-" * (w + 1) + ":" if i in right else "-" * (w + 2) for i, w in enumerate(widths)) + "|"
    return "\n".join([line(head), sep, *(line(row) for row in rows)])


def report(meta: dict[str, Any], runs: list[Run]) -> str:
    out = [
        "## Manifold overhead benchmark",
        "",
        f"- command: `{meta['command']}`",
        f"- Python {meta['python']} ({meta['implementation']}), {meta['platform']}",
        f"- CPUs: {meta['cpu_count']} (usable by this process: {meta['cpus_usable']}); "
        + (
            "Manifold pinned to the last, the fake upstream and the load generator to the others (--pin)"
            if meta.get("pin")
            else "the fake upstream, Manifold and the load generator share them"
        ),
        f"- load: {meta['concurrency']} keep-alive connections, {meta['warmup']} warm-up + {meta['requests']} "
        f"measured requests per run; upstream latency {meta['latency_ms']:g} ms, "
        f"{meta['chunks']} content chunks per stream",
        f"- Manifold: `{meta['manifold_cmd']}` (one worker)"
        + (f"; observability settings side by side: {', '.join(meta['observe'])}" if meta.get("observe") else ""),
    ]
    if meta.get("manifold_startup_s") is not None:
        out.append(
            f"  started in {meta['manifold_startup_s']:.2f} s, RSS at idle {meta['manifold_rss_mb_idle']:.1f} MB"
        )
    out += ["", table(runs), ""]
    for r in runs:
        if r.failed:
            out.append(f"- {r.mode} / {r.target} FAILED: {r.failed}")
        elif r.errors:
            out.append(f"- {r.mode} / {r.target}: {r.errors} failed request(s), first: {r.first_error}")
    for mode in MODES:
        samples: dict[str, list[float]] = {}
        for r in runs:
            if r.mode == mode and r.target.startswith("manifold") and not r.failed and r.manifold_cpu_ms_per_req:
                samples.setdefault(r.target, []).append(r.manifold_cpu_ms_per_req)
        cpu = {target: statistics.median(values) for target, values in samples.items()}
        for target, value in cpu.items():
            several = f" (median of {len(samples[target])} runs)" if len(samples[target]) > 1 else ""
            out.append(
                f"- **{mode}: {target} used {value:.3f} ms of CPU per request**{several} "
                f"(target {TARGET_MS_PER_REQ} ms; LiteLLM for reference {LITELLM_MS_PER_REQ} ms)"
            )
        off = cpu.get("manifold (off)")
        trips = [r.redis_calls_per_req for r in runs if r.mode == mode and r.redis_calls_per_req is not None]
        if trips:
            out.append(
                f"- {mode}: access (static key, Redis-backed limits and budget) made "
                f"{statistics.median(trips):.2f} Redis scripts per request (the admission, waited on; the release, "
                f"written at the request's end and not waited for); CPU target {ACCESS_LIMIT_MS} ms"
            )
        variants = (
            ("on", OBSERVE_ON_LIMIT_MS),
            ("metrics", None),
            ("log", None),
            ("trace", None),
            ("access", None),
            ("ledger", None),
            ("all", None),
        )
        for variant, limit in variants:
            on = cpu.get(f"manifold ({variant})")
            if off is not None and on is not None:
                bound = f" (budget {limit} ms)" if limit is not None else ""
                what = {
                    "ledger": "the usage ledger",
                    "metrics": "metrics alone",
                    "log": "the JSON access log alone",
                    "access": "access control",
                    "all": "everything on (observability, access control, ledger)",
                }.get(variant, f"observability `{variant}`")
                # Each round loads every setting in turn: the difference within a round is free of the drift
                # between rounds (another process waking, the CPU's clock), so its median is the steadier figure.
                pairs = [
                    v - o for o, v in zip(samples["manifold (off)"], samples[f"manifold ({variant})"], strict=False)
                ]
                paired = (
                    f"; per round: median {statistics.median(pairs):+.3f}, from {min(pairs):+.3f} to {max(pairs):+.3f}"
                    if len(pairs) > 1
                    else ""
                )
                out.append(f"- {mode}: {what} costs {on - off:+.3f} ms of CPU per request{bound}{paired}")
        for target in [t for t in samples if not t.endswith(BASE_SUFFIX)]:
            base = samples.get(target + BASE_SUFFIX)
            if base is None:
                continue
            # Paired as above: each round loads the two trees' servers one after the other.
            change = [n - b for b, n in zip(base, samples[target], strict=False)]
            out.append(
                f"- {mode}: {target} against the base tree (--base-src): {statistics.median(change):+.3f} ms of CPU "
                f"per request, median of {len(change)} paired round(s), from {min(change):+.3f} to {max(change):+.3f}"
            )
    out += [
        "",
        "Notes: CPU per request is the comparable figure: it is the CPU time (user + system, all threads) "
        "the Manifold process spent during the measured phase divided by the number of requests, so it "
        "does not depend on how fast the machine or the load generator is. req/s and latencies are "
        f"measured with {meta['cpu_count']} core(s) shared by three busy processes, so they show contention "
        "as much as Manifold; compare them only between runs on the same machine. 'upstream CPU' on the "
        "direct rows is the cost of the fake upstream alone, a floor for what any HTTP server in Python "
        f"needs per request. CPU times are counted in ticks of 1/{CLK_TCK} s: with {meta['requests']} measured "
        f"requests one tick is {1000.0 / CLK_TCK / meta['requests']:.4f} ms/request, so use more requests for "
        "finer figures.",
    ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- main


def run_all(
    children: Children, args: argparse.Namespace, meta: dict[str, Any], runs: list[Run], deadline: float
) -> int:
    """Start the servers and do every run (appended to ``runs`` as they start); 0 when all went well. With
    ``--observe``, one Manifold per setting, all started up front (idle ones cost nothing) and loaded in turn,
    ``--rounds`` times, so that the machine's drift hits every setting alike."""
    status = 0
    upstream, upstream_port = start_upstream(children, args)
    if "direct" in args.targets:
        for mode in args.modes:
            status |= _measure(children, args, runs, Run(mode, "direct"), upstream_port, upstream.pid, None, deadline)
    if "manifold" not in args.targets:
        return status
    started: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    sinks: list[OtlpSink] = []
    try:
        trees: list[Path | None] = [None] if args.base_src is None else [None, args.base_src]
        for variant in args.observe or [None]:
            for tree in trees:
                status |= _start_target(children, args, meta, runs, started, sinks, upstream_port, variant, tree)
        for _ in range(args.rounds):
            for mode in args.modes:
                for target, (manifold, port) in started.items():
                    run = Run(mode, target)
                    status |= _measure(children, args, runs, run, port, upstream.pid, manifold.pid, deadline)
    finally:
        for manifold, _ in started.values():
            children.stop(manifold)
            children.procs.remove(manifold)
        for sink in sinks:
            sink.close()
        if {"access", "all"} & set(args.observe or []):
            forget_redis_keys()
    return status


def _start_target(
    children: Children,
    args: argparse.Namespace,
    meta: dict[str, Any],
    runs: list[Run],
    started: dict[str, tuple[subprocess.Popen[bytes], int]],
    sinks: list[OtlpSink],
    upstream_port: int,
    variant: str | None,
    tree: Path | None,
) -> int:
    """Start one Manifold for an observability setting (`tree`: of the source tree given by `--base-src`, with
    a work directory of its own); 0 when it started."""
    target = "manifold" if variant is None else f"manifold ({variant})"
    env: dict[str, str] = {}
    workdir = children.workdir
    if tree is not None:
        target += BASE_SUFFIX
        env["PYTHONPATH"] = str(tree)
        workdir = children.workdir / "base"
        workdir.mkdir(exist_ok=True)
    if variant == "trace":
        sink = OtlpSink()
        sinks.append(sink)
        env |= {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{HOST}:{sink.port}", "OTEL_TRACES_SAMPLER": "always_on"}
    name = variant if tree is None else f"{variant or 'default'}-base"
    try:
        config = write_config(workdir, upstream_port, variant, args.auth)
        manifold, port, startup = start_manifold(children, args, config, env or None, name)
        if args.auth == "master":
            args.client_keys[port] = BENCH_MASTER_KEY
        elif args.auth == "virtual":
            args.client_keys[port] = create_virtual_key(port)
    except BenchError as exc:
        print(f"!! {target}: {exc}", file=sys.stderr)
        for mode in args.modes:
            runs.append(Run(mode, target, failed="Manifold did not start (see above)"))
        return 1
    started[target] = (manifold, port)
    if meta["manifold_startup_s"] is None:
        meta["manifold_startup_s"] = startup
        meta["manifold_rss_mb_idle"] = rss_mb(manifold.pid)
    return 0


def _measure(
    children: Children,
    args: argparse.Namespace,
    runs: list[Run],
    run: Run,
    port: int,
    upstream_pid: int,
    manifold_pid: int | None,
    deadline: float,
) -> int:
    runs.append(run)
    print(f".. {run.mode} / {run.target}", file=sys.stderr, flush=True)
    try:
        run_load(children, args, run, port, upstream_pid, manifold_pid, deadline)
    except BenchError as exc:
        run.failed = str(exc)
        print(f"!! {run.mode} / {run.target}: {exc}", file=sys.stderr)
    return 1 if run.failed or run.errors else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=3000, help="measured requests per run (default 3000)")
    p.add_argument("--warmup", type=int, default=300, help="warm-up requests per run (default 300)")
    p.add_argument("--concurrency", type=int, default=16, help="keep-alive connections (default 16)")
    p.add_argument("--latency-ms", type=float, default=0.0, help="fixed upstream latency (default 0)")
    p.add_argument("--chunks", type=int, default=20, help="content chunks per streamed answer (default 20)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated, of: " + ", ".join(MODES))
    p.add_argument("--targets", default=",".join(TARGETS), help="comma-separated, of: " + ", ".join(TARGETS))
    p.add_argument(
        "--manifold-cmd",
        default=shlex.join([sys.executable, "-m", "manifold", "serve"]),
        help="how to start Manifold; '--config FILE --host 127.0.0.1 --port N' are appended "
        "(default: this Python's '-m manifold serve')",
    )
    p.add_argument(
        "--auth",
        choices=["none", "master", "virtual"],
        default="none",
        help="authenticate every request to Manifold: none (default), with the master key, or with a virtual "
        "key made through the admin API (docs/access.md)",
    )
    p.add_argument(
        "--observe",
        default="",
        help="comma-separated, of: off, on, trace: run Manifold once per observability setting, side by side "
        "(default: one run with the config's defaults)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="with --observe: load each setting in turn this many times (default 1); the summary shows the median",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="Linux: Manifold on the last CPU alone, the upstream and the load generator on the others",
    )
    p.add_argument(
        "--base-src",
        type=Path,
        metavar="DIR",
        help="also run each setting on the Manifold whose package is under DIR (a checkout's src/: e.g. `git "
        "archive HEAD src | tar -x -C /tmp/base`, then /tmp/base/src), side by side, and print the change per "
        "paired round",
    )
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON to PATH")
    p.add_argument("--timeout", type=float, default=300.0, help="global time limit in seconds (default 300)")
    p.add_argument("--startup-timeout", type=float, default=60.0, help="for Manifold's /health (default 60)")
    args = p.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.client_keys = {}
    args.observe = [o.strip() for o in args.observe.split(",") if o.strip()]
    if any(o not in OBSERVE for o in args.observe):
        p.error(f"--observe: choose from {', '.join(OBSERVE)}")
    if args.rounds < 1:
        p.error("--rounds must be >= 1")
    if not args.modes or any(m not in MODES for m in args.modes):
        p.error(f"--modes: choose from {', '.join(MODES)}")
    if not args.targets or any(t not in TARGETS for t in args.targets):
        p.error(f"--targets: choose from {', '.join(TARGETS)}")
    if args.requests < 1 or args.warmup < 0 or args.concurrency < 1 or args.chunks < 1 or args.timeout <= 0:
        p.error("--requests, --concurrency, --chunks must be >= 1, --warmup >= 0, --timeout > 0")
    return args


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Raise BenchTimeout in the main thread after ``seconds``; SIGTERM becomes SystemExit."""

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise BenchTimeout(f"the global --timeout of {seconds:g} s ran out")

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    old_alarm = signal.signal(signal.SIGALRM, on_alarm)
    old_term = signal.signal(signal.SIGTERM, on_term)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global PIN
    PIN = args.pin and hasattr(os, "sched_setaffinity")
    deadline = time.monotonic() + args.timeout
    cpus_usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    meta: dict[str, Any] = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus_usable,
        "pin": args.pin,
        "clk_tck": CLK_TCK,
        "concurrency": args.concurrency,
        "warmup": args.warmup,
        "requests": args.requests,
        "latency_ms": args.latency_ms,
        "chunks": args.chunks,
        "manifold_cmd": args.manifold_cmd,
        "observe": args.observe,
        "auth": args.auth,
        "manifold_startup_s": None,
        "manifold_rss_mb_idle": None,
    }
    runs: list[Run] = []
    status = 0
    with tempfile.TemporaryDirectory(prefix="manifold-bench-") as tmp:
        children = Children(Path(tmp))
        try:
            with time_limit(args.timeout):
                status = run_all(children, args, meta, runs, deadline)
        except BenchTimeout as exc:
            print(f"!! {exc}; the figures below are partial", file=sys.stderr)
            _cut_short(runs, "cut short by the global --timeout")
            status = 2
        except BenchError as exc:
            print(f"!! {exc}", file=sys.stderr)
            status = 1
        except KeyboardInterrupt:
            print("!! interrupted; the figures below are partial", file=sys.stderr)
            _cut_short(runs, "interrupted")
            status = 130
        finally:
            # A second Ctrl-C must not cut the clean-up short (each stop is bounded in time).
            previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
            try:
                children.stop_all()
            finally:
                signal.signal(signal.SIGINT, previous)

    print(report(meta, runs))
    if args.json:
        payload = {"meta": meta, "runs": [asdict(r) for r in runs]}
        Path(args.json).write_text(json.dumps(_no_nan(payload), indent=2, allow_nan=False) + "\n")
    return status


def _cut_short(runs: list[Run], why: str) -> None:
    """Mark the run that was under way when the benchmark stopped."""
    for run in runs:
        if not run.failed and run.ok == 0 and run.errors == 0:
            run.failed = why


def _no_nan(value: Any) -> Any:
    """NaN (a figure that could not be measured) as null, so that the JSON is strict."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_nan(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
