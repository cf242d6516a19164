"""`supports_completions: auto` (the default): legacy completions on an upstream that only chats are answered
through chat, and the deployment remembers it (docs/completions.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.e2e.conftest import ManifoldProcess
from tests.fakes.drip_upstream import DripUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[DripUpstream]:
    with DripUpstream() as fake:
        yield fake


def config(upstream: DripUpstream) -> dict[str, Any]:
    models: list[dict[str, Any]] = []
    for mode in ("chat-only", "chat-model"):
        for stream in ("", "-stream"):  # one deployment per test: each remembers on its own
            models.append({"model_name": f"auto-{mode}{stream}", "provider": "openai", "api_base": upstream.base(mode)})
    models.append(
        {
            "model_name": "forced-native",
            "provider": "openai",
            "api_base": upstream.base("chat-only"),
            "supports_completions": True,
        }
    )
    models.append(
        {
            "model_name": "forced-chat",
            "provider": "openai",
            "api_base": upstream.base("chat-model"),
            "supports_completions": False,
        }
    )
    return {"model_list": models, "router": {"num_retries": 0, "cooldown_time": 0}, "server": {"log_level": "info"}}


@pytest.fixture(scope="module")
def client(upstream: DripUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[openai.OpenAI]:
    proc = ManifoldProcess(config(upstream), tmp_path_factory.mktemp("auto"))
    yield openai.OpenAI(base_url=proc.base_url, api_key="x", max_retries=0)
    proc.stop()


def counts(upstream: DripUpstream, mode: str) -> tuple[int, int]:
    """(requests to /completions, requests to /chat/completions) for one mode of the fake."""
    prefix = f"/{mode}/v1/"
    with upstream._lock:
        paths = [ex.path for ex in upstream.exchanges if ex.path.startswith(prefix)]
    return sum(p.endswith("v1/completions") for p in paths), sum(p.endswith("/chat/completions") for p in paths)


def complete(client: openai.OpenAI, model: str, stream: bool) -> str:
    if stream:
        return "".join(
            c.choices[0].text for c in client.completions.create(model=model, prompt="hi", stream=True) if c.choices
        )
    return client.completions.create(model=model, prompt="hi").choices[0].text


@pytest.mark.parametrize("mode", ["chat-only", "chat-model"])
@pytest.mark.parametrize("stream", [False, True])
def test_auto_answers_through_chat_and_remembers(
    client: openai.OpenAI, upstream: DripUpstream, mode: str, stream: bool
) -> None:
    model = f"auto-{mode}{'-stream' if stream else ''}"
    upstream.exchanges.clear()
    assert complete(client, model, stream) == ("w0 " if stream else "chatted")
    assert counts(upstream, mode) == (1, 1)  # tried /completions, then chat
    assert complete(client, model, stream) == ("w0 " if stream else "chatted")
    assert counts(upstream, mode) == (1, 2)  # the second went straight to chat


def test_true_forces_native_and_false_forces_chat(client: openai.OpenAI, upstream: DripUpstream) -> None:
    upstream.exchanges.clear()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="forced-native", prompt="hi")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="forced-native", prompt="hi", stream=True)
    assert counts(upstream, "chat-only") == (2, 0)
    assert client.completions.create(model="forced-chat", prompt="hi").choices[0].text == "chatted"
    assert counts(upstream, "chat-model") == (0, 1)
