"""Chat completions through a real `manifold serve`, driven by the official `openai` SDK against a fake
OpenAI-compatible upstream; every body and chunk judged by OpenAI's own schemas."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import UPSTREAM_KEY, ManifoldProcess
from tests.fakes.openai_upstream import FakeUpstream

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "hello there world"},
]
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def sse_events(text: str) -> list[Any]:
    """Parse an SSE body into decoded JSON payloads (and the literal '[DONE]')."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            payload = "\n".join(data)
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


# -- the happy path ---------------------------------------------------------------------------------------------


def test_non_streaming_completion_is_exact(client: openai.OpenAI, fake: FakeUpstream) -> None:
    completion = client.chat.completions.create(model="fake-echo", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.model == "fake-echo"  # the public name, not the upstream's
    assert completion.choices[0].message.content == "echo: hello there world"
    assert completion.choices[0].message.role == "assistant"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    raw = completion.model_dump(exclude_unset=True)
    assert raw["choices"][0]["message"]["refusal"] is None  # added: the fake omits it, like vLLM


def test_raw_completion_and_headers_validate(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={"model": "fake-sloppy", "messages": MESSAGES})
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-request-id"]
    body = resp.json()
    assert_valid("CreateChatCompletionResponse", body)
    assert "system_fingerprint" not in body  # null upstream value dropped (the schema says string)
    assert "prompt_tokens_details" not in body["usage"]


def test_everything_the_client_sends_reaches_the_upstream(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.clear()
    sent: dict[str, Any] = {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_completion_tokens": 50,
        "stop": ["x", "y"],
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "n": 2,
        "user": "user-1",
        "metadata": {"k": "v"},
        "store": False,
        "response_format": {"type": "json_object"},
        "service_tier": "auto",
        "reasoning_effort": "low",
    }
    extras = {"top_k": 40, "repetition_penalty": 1.1, "chat_template_kwargs": {"enable_thinking": False}}
    completion = client.chat.completions.with_raw_response.create(
        model="fake-echo", messages=MESSAGES, extra_body=extras, **sent
    )
    request_id = completion.headers["x-request-id"]
    assert len(fake.requests) == 1
    got = fake.requests[0]
    assert got.body["model"] == "upstream-model"
    expected = {"messages": MESSAGES, **sent, **extras}
    for key, value in expected.items():
        assert got.body[key] == value, key
    assert set(got.body) == {"model", *expected}
    assert got.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert got.headers["x-custom-header"] == "custom-value"
    assert got.headers["x-request-id"] == request_id
    assert len(completion.parse().choices) == 2


def test_client_request_id_is_echoed(http: httpx.Client) -> None:
    resp = http.post(
        "/v1/chat/completions",
        json={"model": "fake-echo", "messages": MESSAGES},
        headers={"x-request-id": "my-trace-123"},
    )
    assert resp.headers["x-request-id"] == "my-trace-123"


def test_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="fake-echo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: hello there world"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.model for c in chunks} == {"fake-echo"}
    assert len({c.id for c in chunks}) == 1


def test_raw_stream_frames_validate(http: httpx.Client) -> None:
    body = {
        "model": "fake-sloppy",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    resp = http.post("/v1/chat/completions", json=body, headers={"accept": "application/json"})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    assert resp.text.endswith("data: [DONE]\n\n")
    chunks = events[:-1]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    roles = [c["choices"][0]["delta"].get("role") for c in chunks if c["choices"]]
    assert roles[0] == "assistant" and roles[1:] == [None] * (len(roles) - 1)  # the fake repeats it
    assert [c for c in chunks if c.get("usage")] == [chunks[-1]]


def test_stream_without_include_usage_has_no_usage(http: httpx.Client) -> None:
    body = {"model": "fake-sloppy", "messages": MESSAGES, "stream": True}
    events = sse_events(http.post("/v1/chat/completions", json=body).text)
    assert events[-1] == "[DONE]"
    assert all("usage" not in e and e["choices"] for e in events[:-1])


def test_stream_helper_assembles_final_completion(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="fake-echo", messages=MESSAGES) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "echo: hello there world"
    assert final.choices[0].message.role == "assistant"


async def test_async_client_streaming_and_not(gateway: ManifoldProcess) -> None:
    async with openai.AsyncOpenAI(
        base_url=gateway.base_url, api_key="k", max_retries=0, _strict_response_validation=True
    ) as aclient:
        completion = await aclient.chat.completions.create(model="fake-echo", messages=MESSAGES)
        assert completion.choices[0].message.content == "echo: hello there world"
        stream = await aclient.chat.completions.create(model="fake-echo", messages=MESSAGES, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "echo: hello there world"


def test_tool_calls_non_streaming(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="fake-tools", messages=MESSAGES, tools=[WEATHER_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]  # type: ignore[index]
    assert call.id == "call_fake_1"
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


def test_tool_calls_streamed_through_the_stream_helper(client: openai.OpenAI) -> None:
    second = {**WEATHER_TOOL, "function": {**WEATHER_TOOL["function"], "name": "get_time"}}
    with client.chat.completions.stream(model="fake-tools", messages=MESSAGES, tools=[WEATHER_TOOL, second]) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["get_weather", "get_time"]
    # The fake repeats id and name in every delta; the SDK would concatenate them if they reached it.
    assert calls[0].id == "call_fake_1"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert final.choices[0].finish_reason == "tool_calls"


def test_tool_call_chunks_carry_id_and_name_once(http: httpx.Client) -> None:
    body = {"model": "fake-tools", "messages": MESSAGES, "tools": [WEATHER_TOOL], "stream": True}
    chunks = sse_events(http.post("/v1/chat/completions", json=body).text)[:-1]
    deltas = [tc for c in chunks for ch in c["choices"] for tc in ch["delta"].get("tool_calls", [])]
    assert len(deltas) >= 3
    assert "id" in deltas[0] and deltas[0]["function"]["name"] == "get_weather"
    for later in deltas[1:]:
        assert set(later) <= {"index", "function"} and set(later["function"]) == {"arguments"}
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


def test_upstream_answering_json_to_a_stream_request_is_streamed(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="fake-json_for_stream", messages=MESSAGES, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there world"


def test_large_stream_is_relayed_intact(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(model="fake-big", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == " ".join(f"w{i}" for i in range(10000))


def test_other_prefix_and_azure_variant(gateway: ManifoldProcess, fake: FakeUpstream) -> None:
    fake.clear()
    c = openai.OpenAI(base_url=gateway.url + "/openai/v1", api_key="k", max_retries=0)
    completion = c.chat.completions.create(model="azure-gpt", messages=MESSAGES)
    assert completion.model == "azure-gpt"
    got = fake.requests[-1]
    assert got.path.endswith("/openai/deployments/my-deployment/chat/completions")
    assert got.query["api-version"] == "2024-10-21"
    assert got.headers["api-key"] == "azure-secret-key"
    assert "authorization" not in got.headers


# -- models and health -----------------------------------------------------------------------------------------


def test_models_list_and_retrieve(client: openai.OpenAI, http: httpx.Client) -> None:
    ids = [m.id for m in client.models.list()]
    assert "fake-echo" in ids and "org/model:v1" in ids
    model = client.models.retrieve("org/model:v1")  # sent as org%2Fmodel:v1
    assert model.id == "org/model:v1" and model.owned_by == "acme"
    body = http.get("/v1/models").json()
    assert_valid("ListModelsResponse", body)
    assert_valid("Model", http.get("/openai/v1/models/fake-echo").json())
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.code == "model_not_found"


def test_health(http: httpx.Client) -> None:
    assert http.get("/health").json() == {"status": "ok"}
    ready = http.get("/health/ready")
    # One deployment points at a closed port: readiness says which.
    assert ready.status_code == 503
    states = {d["model"]: d["ready"] for d in ready.json()["deployments"]}
    assert states["fake-refused"] is False and states["fake-echo"] is True
