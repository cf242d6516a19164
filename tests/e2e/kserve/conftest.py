"""A real MLServer 1.7.1 (Seldon-convention runtimes), a fake generate server, and one `manifold serve` in front
of both. MLServer starts once per session (about 5 s here, measured: see the terminal summary line)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess, free_port
from tests.fakes.generate_upstream import FakeGenerateServer
from tests.fakes.mlserver import MLServerProcess

_started: list[float] = []

CHATML_JINJA = (
    "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</{{ m['role'] }}>{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for seconds in _started:
        terminalreporter.write_line(f"MLServer 1.7.1 was ready {seconds:.1f} s after it was started")


@pytest.fixture(scope="session")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    server = MLServerProcess(tmp_path_factory.mktemp("mlserver"))
    _started.append(server.startup_seconds)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def generate_server() -> Iterator[FakeGenerateServer]:
    # "triton" takes options at the top level, where Triton maps them to input tensors.
    server = FakeGenerateServer(top_level_models=("triton",)).start()
    yield server
    server.stop()


def kserve_config(mlserver_url: str, generate_url: str) -> dict[str, Any]:
    def tensors(name: str, **extra: Any) -> dict[str, Any]:
        return {"model_name": name, "provider": "kserve_v2", "api_base": mlserver_url, **extra}

    def generate(name: str, upstream: str, **extra: Any) -> dict[str, Any]:
        return {
            "model_name": name,
            "provider": "kserve_v2",
            "mode": "generate",
            "api_base": generate_url,
            "model": upstream,
            **extra,
        }

    return {
        "model_list": [
            tensors("chat_llm", timeouts={"connect": 2, "first_byte": 20}),
            tensors("assistant_v1", model="chat_llm"),
            tensors("embed"),
            tensors("images"),
            tensors("mlserver-missing", model="nope"),
            tensors("kserve-refused", api_base=f"http://127.0.0.1:{free_port()}"),
            # MLServer's /generate is an alias of /infer (an InferenceRequest), not the generate extension.
            {**generate("mlserver-generate", "chat_llm"), "api_base": mlserver_url},
            generate("gen-chatml", "echo", chat_template="chatml"),
            generate("gen-bare", "echo"),
            generate("gen-jinja", "echo", chat_template=CHATML_JINJA),
            generate("gen_triton", "triton", chat_template="chatml", generate_parameters_in="body"),
            generate("gen-versioned", "echo", model_version="7"),
            generate("gen-usage", "usage"),
            generate("gen-json-stream", "json_stream"),
            generate("gen-stream-error", "stream_error"),
            generate("gen-cut", "cut"),
            generate("gen-422", "status_422"),
            generate("gen-424", "status_424"),
            generate("gen-429", "status_429"),
        ],
        # One upstream exchange per request: these tests check how each maps (retries: tests/e2e/test_router.py).
        "router": {"num_retries": 0, "cooldown_time": 0},
        "server": {"prefixes": ["/v1"], "keepalive_interval": 0.3, "log_level": "info"},
    }


@pytest.fixture(scope="session")
def kserve_gateway(
    mlserver: MLServerProcess, generate_server: FakeGenerateServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ManifoldProcess]:
    proc = ManifoldProcess(kserve_config(mlserver.url, generate_server.url), tmp_path_factory.mktemp("kgw"))
    yield proc
    proc.stop()


@pytest.fixture
def oai(kserve_gateway: ManifoldProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=kserve_gateway.base_url, api_key="sk-client", max_retries=0, _strict_response_validation=True
    ) as client:
        yield client


@pytest.fixture
def per_model(kserve_gateway: ManifoldProcess) -> Iterator[Callable[..., openai.OpenAI]]:
    """`per_model("chat_llm")`: an SDK client whose base_url is the model's KServe-style URL."""
    clients: list[openai.OpenAI] = []

    def make(model: str, *, strict: bool = True, stream: bool = False) -> openai.OpenAI:
        infer = "infer_stream" if stream else "infer"
        client = openai.OpenAI(
            base_url=f"{kserve_gateway.url}/v2/models/{model}/{infer}",
            api_key="sk-client",
            max_retries=0,
            _strict_response_validation=strict,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def http(kserve_gateway: ManifoldProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kserve_gateway.url, timeout=30) as client:
        yield client


def sse_json(response: httpx.Response) -> list[Any]:
    """The data payloads of an SSE body (JSON decoded; `[DONE]` kept as the string)."""
    out: list[Any] = []
    for block in response.text.split("\n\n"):
        lines = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if lines:
            payload = "\n".join(lines)
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def valid_stream(response: httpx.Response) -> list[dict[str, Any]]:
    """Every chunk of a successful stream validated against OpenAI's schema; `[DONE]` last."""
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_json(response)
    assert events[-1] == "[DONE]"
    for chunk in events[:-1]:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    return list(events[:-1])


def text_of(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
