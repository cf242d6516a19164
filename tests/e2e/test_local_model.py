"""The embedded default: `manifold serve` with no config serves SmolLM2-135M-Instruct through llama.cpp (chat,
legacy completions) and all-MiniLM-L6-v2 through onnxruntime (embeddings), offline."""

from __future__ import annotations

import array
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    assert [(m.id, m.owned_by) for m in sdk.models.list()] == [("smollm2", "manifold"), ("minilm", "manifold")]


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


WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
WEATHER_QUESTION: Any = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_local_tool_call_round_trip(sdk: openai.OpenAI, local: ManifoldProcess) -> None:
    forced: Any = {"type": "function", "function": {"name": "get_weather"}}
    first = sdk.chat.completions.create(
        model="smollm2", messages=WEATHER_QUESTION, tools=[WEATHER], tool_choice=forced, temperature=0, max_tokens=40
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert isinstance(json.loads(call.function.arguments)["city"], str)  # type: ignore[union-attr]
    raw = httpx.post(
        local.base_url + "/chat/completions",
        json={
            "model": "smollm2",
            "messages": WEATHER_QUESTION,
            "tools": [WEATHER],
            "tool_choice": forced,
            "max_tokens": 40,
        },
        timeout=60,
    )
    assert_valid("CreateChatCompletionResponse", raw.json())
    history: Any = [
        *WEATHER_QUESTION,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 24 C"},
    ]
    answer = sdk.chat.completions.create(
        model="smollm2", messages=history, tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=30
    )
    assert answer.choices[0].message.content


def test_local_tool_call_streamed_through_the_helper(sdk: openai.OpenAI) -> None:
    forced: Any = {"type": "function", "function": {"name": "get_weather"}}
    with sdk.chat.completions.stream(
        model="smollm2", messages=WEATHER_QUESTION, tools=[WEATHER], tool_choice=forced, temperature=0, max_tokens=40
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1 and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)


def test_local_rejects_what_it_cannot_do(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(model="smollm2", messages=QUESTION, n=2)
    assert info.value.param == "n"
    with pytest.raises(openai.BadRequestError) as info:
        sdk.chat.completions.create(
            model="smollm2",
            messages=QUESTION,
            tools=[{"type": "custom", "custom": {"name": "grep"}}],
        )
    assert info.value.param == "tools"


# -- legacy completions on llama.cpp ---------------------------------------------------------------------------

FRANCE = "The capital of France is"


@pytest.fixture
def lenient(local: ManifoldProcess) -> Iterator[openai.OpenAI]:
    """Streamed completions and base64 embeddings carry what the SDK's strict types reject (finish_reason null
    in chunks; base64 strings before decoding), as OpenAI's own do: see tests/e2e/test_completions.py."""
    with openai.OpenAI(base_url=local.base_url, api_key="none") as c:
        yield c


def test_local_legacy_completion(sdk: openai.OpenAI, local: ManifoldProcess) -> None:
    completion = sdk.completions.create(model="smollm2", prompt=FRANCE, max_tokens=8, temperature=0)
    assert completion.object == "text_completion" and completion.model == "smollm2"
    assert "paris" in completion.choices[0].text.lower()
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 8
    raw = httpx.post(
        local.base_url + "/completions", json={"model": "smollm2", "prompt": FRANCE, "max_tokens": 4}, timeout=60
    )
    assert_valid("CreateCompletionResponse", raw.json())


def test_local_completion_prompt_forms_echo_suffix_and_n(sdk: openai.OpenAI) -> None:
    tokens = [504, 3575, 282]  # "The capital of" in SmolLM2's vocabulary
    completion = sdk.completions.create(
        model="smollm2", prompt=[FRANCE, "One, two,"], n=2, echo=True, max_tokens=3, temperature=0
    )
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert all(c.text.startswith(p) for c, p in zip(completion.choices, [FRANCE] * 2 + ["One, two,"] * 2, strict=True))
    by_tokens = sdk.completions.create(model="smollm2", prompt=[tokens, tokens], max_tokens=3, temperature=0, echo=True)
    assert len(by_tokens.choices) == 2 and all(c.text.startswith("The capital of") for c in by_tokens.choices)
    single = sdk.completions.create(model="smollm2", prompt=tokens, max_tokens=3, temperature=0)
    assert single.choices[0].text
    with_suffix = sdk.completions.create(model="smollm2", prompt="def add(a, b):", suffix="\n", max_tokens=4)
    assert with_suffix.choices[0].finish_reason in ("stop", "length")


def test_local_completion_stream_matches_non_streamed(lenient: openai.OpenAI, local: ManifoldProcess) -> None:
    args: dict[str, Any] = {"model": "smollm2", "prompt": FRANCE, "max_tokens": 8, "temperature": 0, "seed": 1}
    plain = lenient.completions.create(**args)
    chunks = list(lenient.completions.create(stream=True, stream_options={"include_usage": True}, **args))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == plain.choices[0].text
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and 0 < usage.completion_tokens <= 9
    events = sse_events(httpx.post(local.base_url + "/completions", json={**args, "stream": True}, timeout=60).text)
    assert events[-1] == "[DONE]"
    for chunk in events[:-1]:
        assert_valid("CreateCompletionResponse", chunk, relaxed={"text_completion_nulls"})


def test_local_completion_refuses_what_llama_cpp_cannot_do(sdk: openai.OpenAI) -> None:
    for extra, param in (({"logprobs": 1}, "logprobs"), ({"best_of": 2}, "best_of"), ({"max_tokens": 0}, "max_tokens")):
        with pytest.raises(openai.BadRequestError) as info:
            sdk.completions.create(model="smollm2", prompt="x", **extra)  # type: ignore[call-overload]
        assert info.value.param == param
    with pytest.raises(openai.BadRequestError) as info:
        sdk.completions.create(model="smollm2", prompt=[10**7])
    assert info.value.param == "prompt"


# -- embeddings on onnxruntime ---------------------------------------------------------------------------------

SENTENCES = ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today."]


def test_local_embeddings_sdk_default(lenient: openai.OpenAI, local: ManifoldProcess) -> None:
    result = lenient.embeddings.create(model="minilm", input=SENTENCES)  # the SDK asks base64 and decodes it
    vectors = [d.embedding for d in result.data]
    assert [len(v) for v in vectors] == [384] * 3
    assert all(abs(sum(x * x for x in v) - 1) < 1e-3 for v in vectors)  # L2-normalized

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vectors[0], vectors[1]) > 0.6 > 0.2 > cos(vectors[0], vectors[2])
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3 * 2
    raw = httpx.post(
        local.base_url + "/embeddings",
        json={"model": "minilm", "input": SENTENCES[0], "encoding_format": "base64"},
        timeout=60,
    ).json()
    assert_valid("CreateEmbeddingResponse", raw, relaxed={"embedding_base64"})


def test_local_embeddings_float_base64_and_tokens_agree(sdk: openai.OpenAI, lenient: openai.OpenAI) -> None:
    floats = sdk.embeddings.create(model="minilm", input="hello world", encoding_format="float")
    encoded: Any = lenient.embeddings.create(model="minilm", input="hello world", encoding_format="base64")
    decoded = array.array("f", base64.b64decode(encoded.data[0].embedding)).tolist()
    assert decoded == pytest.approx(floats.data[0].embedding, abs=1e-7)
    by_tokens = sdk.embeddings.create(model="minilm", input=[[7592, 2088]], encoding_format="float")  # hello world
    assert by_tokens.data[0].embedding == pytest.approx(floats.data[0].embedding, abs=1e-5)
    same = sdk.embeddings.create(model="minilm", input="hello world", encoding_format="float", dimensions=384)
    assert len(same.data[0].embedding) == 384
    with pytest.raises(openai.BadRequestError) as info:
        sdk.embeddings.create(model="minilm", input="hello world", dimensions=256)
    assert info.value.param == "dimensions"


def test_asking_a_model_what_it_cannot_do_is_a_400_naming_it(sdk: openai.OpenAI) -> None:
    calls = [
        lambda: sdk.embeddings.create(model="smollm2", input="x", encoding_format="float"),
        lambda: sdk.completions.create(model="minilm", prompt="x"),
        lambda: sdk.chat.completions.create(model="minilm", messages=QUESTION),
        lambda: sdk.images.generate(model="smollm2", prompt="x"),
    ]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert info.value.param == "model" and info.value.code == "unsupported_model"
        assert "'smollm2'" in info.value.message or "'minilm'" in info.value.message
