"""End-to-end fixtures: a real `manifold serve` process, a fake upstream on 127.0.0.1, OpenAI's schemas."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.databases import BACKENDS, storage_settings
from tests.fakes.openai_upstream import FakeUpstream

UPSTREAM_KEY = "sk-upstream-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ManifoldProcess:
    """`manifold serve` in a subprocess; its output goes to a log file the tests can read."""

    def __init__(
        self,
        config: dict[str, Any] | None,
        workdir: Path,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"manifold-{self.port}.log"
        args = [sys.executable, "-m", "manifold", "serve", "--port", str(self.port), *extra_args]
        if config is not None:
            config_path = workdir / f"config-{self.port}.yaml"
            config_path.write_text(yaml.safe_dump(config))
            args += ["--config", str(config_path)]
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=workdir
        )
        self._wait_healthy()

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def _wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"manifold exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/health", timeout=1.0).status_code == 200:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"manifold did not become healthy:\n{self.log()}")

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="session")
def fake() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream().start()
    yield upstream
    upstream.stop()


BEHAVIORS = [
    "echo",
    "sloppy",
    "tools",
    "status:400",
    "status:401",
    "status:429",
    "status:500",
    "status:503",
    "text_error:400",
    "hang",
    "cut",
    "malformed",
    "stream_error",
    "json_for_stream",
    "big",
    "slow_first_token:1.5",
    "slow_tokens:0.2",
    "length",
    "tool_loop",
]


def gateway_config(fake: FakeUpstream) -> dict[str, Any]:
    deployments: list[dict[str, Any]] = [
        {
            "model_name": f"fake-{behavior}",
            "provider": "openai",
            "model": "upstream-model",
            "api_base": fake.base(behavior),
            "api_key": UPSTREAM_KEY,
            "headers": {"x-custom-header": "custom-value"},
            "timeouts": {"connect": 2, "first_byte": 10},
        }
        for behavior in BEHAVIORS
    ]
    deployments += [
        {
            "model_name": "fake-slow-timeout",
            "provider": "openai",
            "api_base": fake.base("slow_headers:5"),
            "timeouts": {"first_byte": 0.5},
        },
        {
            "model_name": "fake-refused",
            "provider": "openai",
            "api_base": f"http://127.0.0.1:{free_port()}/v1",
        },
        {
            "model_name": "org/model:v1",
            "provider": "openai",
            "api_base": fake.base("echo"),
            "owned_by": "acme",
        },
        {
            "model_name": "azure-gpt",
            "provider": "azure",
            "model": "my-deployment",
            "api_version": "2024-10-21",
            "api_base": fake.base("echo"),
            "api_key": "azure-secret-key",
        },
    ]
    deployments += surface_deployments(fake)
    return {
        "model_list": deployments,
        # These tests check how one upstream exchange maps to the client's answer; test_router.py covers retries,
        # fallbacks and cooldowns.
        "router": {"num_retries": 0, "cooldown_time": 0},
        "server": {
            "prefixes": ["/v1", "/openai/v1"],
            "keepalive_interval": 0.3,
            "max_body_size": 65536,
            "log_level": "info",
        },
    }


def surface_deployments(fake: FakeUpstream) -> list[dict[str, Any]]:
    """Deployments for legacy completions, embeddings and images (tests/fakes/openai_surface.py)."""
    out: list[dict[str, Any]] = [
        {
            "model_name": "fake-chat-only",
            "provider": "openai",
            "model": "upstream-model",
            "api_base": fake.base("echo"),
            "supports_completions": False,
        },
        {"model_name": "fake-floats_only", "provider": "openai", "api_base": fake.base("floats_only")},
        {
            "model_name": "fake-native",
            "provider": "openai",
            "model": "upstream-model",
            "api_base": fake.base("echo"),
            "responses": "native",
        },
        {"model_name": "my-images", "provider": "openai", "model": "dall-e-3", "api_base": fake.base("echo")},
    ]
    out += [
        {"model_name": name, "provider": "openai", "api_base": fake.base("echo"), "owned_by": "openai"}
        for name in ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-2")
    ]
    return out


@pytest.fixture(scope="session")
def gateway(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    proc = ManifoldProcess(gateway_config(fake), tmp_path_factory.mktemp("gateway"))
    yield proc
    proc.stop()


@pytest.fixture
def client(gateway: ManifoldProcess) -> Iterator[Any]:
    import openai

    with openai.OpenAI(
        base_url=gateway.base_url, api_key="sk-client", max_retries=0, _strict_response_validation=True
    ) as c:
        yield c


@pytest.fixture
def http(gateway: ManifoldProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=20) as c:
        yield c


# -- stored objects: the same gateway on each storage backend ----------------------------------------------------


@pytest.fixture(scope="session", params=BACKENDS)
def storage_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def stored_gateway(
    fake: FakeUpstream, storage_backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManifoldProcess]:
    """The test gateway with its storage on `storage_backend` (SQLite in a data_dir, or a fresh PostgreSQL
    database)."""
    workdir = tmp_path_factory.mktemp(f"stored-{storage_backend}")
    with storage_settings(storage_backend, workdir / "data") as storage:
        proc = ManifoldProcess({**gateway_config(fake), "storage": storage}, workdir)
        try:
            yield proc
        finally:
            proc.stop()


@pytest.fixture
def stored_client(stored_gateway: ManifoldProcess) -> Iterator[Any]:
    import openai

    with openai.OpenAI(
        base_url=stored_gateway.base_url, api_key="sk-client", max_retries=0, _strict_response_validation=True
    ) as c:
        yield c


@pytest.fixture
def stored_http(stored_gateway: ManifoldProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stored_gateway.url, timeout=20) as c:
        yield c
