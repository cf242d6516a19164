"""The embedded default: `manifold serve` with no config serves SmolLM2-135M-Instruct through llama.cpp."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.test_chat import sse_events

pytestmark = pytest.mark.local_model

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    proc = ManifoldProcess(None, Path(tmp_path_factory.mktemp("local")))
    yield proc
    proc.stop()


@pytest.fixture
def sdk(local: ManifoldProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=local.base_url, api_key="none", _strict_response_validation=True) as c:
        yield c


def test_models_lists_the_embedded_model(sdk: openai.OpenAI) -> None:
    assert [m.id for m in sdk.models.list()] == ["smollm2"]


def test_local_completion(sdk: openai.OpenAI, local: ManifoldProcess) -> None:
    completion = sdk.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=16, temperature=0)
    text = completion.choices[0].message.content
    assert text and "paris" in text.lower()
    assert completion.model == "smollm2"
    assert completion.usage is not None and completion.usage.completion_tokens <= 16
    raw = httpx.post(
        local.base_url + "/chat/completions",
        json={"model": "smollm2", "messages": QUESTION, "max_tokens": 8},
        timeout=60,
    )
    assert_valid("CreateChatCompletionResponse", raw.json())


def test_local_stream(sdk: openai.OpenAI, local: ManifoldProcess) -> None:
    stream = sdk.chat.completions.create(
        model="smollm2",
        messages=QUESTION,
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "paris" in text.lower()
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and 0 < usage.completion_tokens <= 17
    body = {"model": "smollm2", "messages": QUESTION, "max_tokens": 8, "stream": True}
    events = sse_events(httpx.post(local.base_url + "/chat/completions", json=body, timeout=60).text)
    assert events[-1] == "[DONE]"
    for chunk in events[:-1]:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


def test_local_stream_helper_matches_non_streamed(sdk: openai.OpenAI) -> None:
    args = {"model": "smollm2", "messages": QUESTION, "max_tokens": 12, "temperature": 0, "seed": 1}
    plain = sdk.chat.completions.create(**args)  # type: ignore[call-overload]
    with sdk.chat.completions.stream(**args) as stream:  # type: ignore[arg-type]
        final = stream.get_final_completion()
    assert final.choices[0].message.content == plain.choices[0].message.content


def test_local_rejects_what_it_cannot_do(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model="smollm2",
            messages=QUESTION,
            tools=[{"type": "function", "function": {"name": "f"}}],
        )
    assert info.value.param == "tools"
