"""A real MLServer on 127.0.0.1 serving the Seldon-convention runtimes in ``mlserver_runtimes/``.

MLServer lives in its own virtualenv under ``.cache/`` (created on first use, reused after): its pins do not sit
well with ours — ``mlserver==1.7.1`` needs ``fastapi 0.115`` and so ``starlette<0.47`` (ours resolves 1.x), and
brings gevent, grpcio, OpenTelemetry and pandas — and the gateway's own tests must run on the gateway's own
dependencies. The pin is the ``kserve-test`` extra in ``pyproject.toml`` (read from there, one source of truth).
``scripts/test`` builds the virtualenv before pytest runs (``python -m tests.fakes.mlserver install``); a test
session that finds none builds it itself (about 2-3 minutes, once).

Settings: ``parallel_workers: 0`` (runtimes in-process, what streaming needs), ``gzip_enabled: false`` (Seldon's
streaming docs), metrics off, HTTP and gRPC on free loopback ports.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
RUNTIMES = Path(__file__).resolve().parent / "mlserver_runtimes"
CACHE = ROOT / ".cache"

# name -> model-settings.json (implementation classes in mlserver_runtimes/seldon_runtimes.py)
MODELS: dict[str, dict[str, Any]] = {
    "chat_llm": {"implementation": "seldon_runtimes.SeldonChatRuntime"},
    "embed": {"implementation": "seldon_runtimes.SeldonEmbeddingsRuntime", "parameters": {"extra": {"dim": 8}}},
    "images": {"implementation": "seldon_runtimes.SeldonImagesRuntime"},
}


def requirements() -> list[str]:
    with (ROOT / "pyproject.toml").open("rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    return list(extras["kserve-test"])


def venv_dir() -> Path:
    digest = hashlib.sha256("\n".join(requirements()).encode()).hexdigest()[:10]
    return CACHE / f"mlserver-venv-{digest}"


def ensure_venv() -> Path:
    """The MLServer virtualenv's `mlserver` executable, installing it once (under a file lock)."""
    target = venv_dir()
    executable = target / "bin" / "mlserver"
    stamp = target / ".installed"
    if stamp.exists():
        return executable
    CACHE.mkdir(exist_ok=True)
    with (CACHE / "mlserver-venv.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return executable
        if target.exists():
            shutil.rmtree(target)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(target)], check=True)
        pip = [str(target / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        result = subprocess.run([*pip, *requirements()], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"installing {requirements()} failed:\n{result.stdout}\n{result.stderr}")
        stamp.write_text(f"installed in {time.monotonic() - started:.0f} s\n")
    return executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class MLServerProcess:
    """`mlserver start` on a fresh model repository; `url` is its root, `startup_seconds` the time from spawn to
    every model ready."""

    def __init__(self, workdir: Path, models: dict[str, dict[str, Any]] | None = None) -> None:
        executable = ensure_venv()
        self.models = models if models is not None else MODELS
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.repo = workdir / "mlserver-models"
        self.repo.mkdir(parents=True, exist_ok=True)
        settings = {
            "debug": False,
            "host": "127.0.0.1",
            "http_port": self.port,
            "grpc_port": _free_port(),
            "metrics_endpoint": None,
            "parallel_workers": 0,
            "gzip_enabled": False,
            "load_models_at_startup": True,
        }
        (self.repo / "settings.json").write_text(json.dumps(settings))
        for name, model in self.models.items():
            folder = self.repo / name
            folder.mkdir(exist_ok=True)
            (folder / "model-settings.json").write_text(json.dumps({"name": name, **model}))
        self.log_path = workdir / f"mlserver-{self.port}.log"
        self._log = self.log_path.open("wb")
        env = {**os.environ, "PYTHONPATH": str(RUNTIMES)}
        env.pop("VIRTUAL_ENV", None)
        started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(executable), "start", str(self.repo)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
        )
        self._wait_ready()
        self.startup_seconds = time.monotonic() - started

    def _wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        urls = [self.url + "/v2/health/ready"] + [f"{self.url}/v2/models/{m}/ready" for m in self.models]
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlserver exited with {self.proc.returncode}:\n{self.log()}")
            if all(_status(u) == 200 for u in urls):
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"mlserver did not become ready in {timeout} s:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            self._log.close()


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m tests.fakes.mlserver install")
    print(f"MLServer virtualenv ready: {ensure_venv().parent.parent}")
