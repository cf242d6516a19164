"""The Anthropic Messages provider end to end: the official `openai` SDK, unchanged, against a real
`manifold serve` whose deployments point at the fake Anthropic upstream. Every answer is judged by OpenAI's
schemas; every request the upstream received is judged by Anthropic's own types (the `anthropic` SDK's
MessageCreateParams) and must carry x-api-key and anthropic-version."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pydantic
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.fakes.anthropic_upstream import FakeAnthropic, Received

KEY = "sk-ant-upstream-0123456789"
PNG_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP438AAAAQBAYDFKhhdAAAAAElFTkSuQmCC"
PNG_BYTES = len(base64.b64decode(PNG_B64))
MESSAGES: Any = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "hello there world"},
]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME: Any = {
    "type": "function",
    "function": {
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]},
    },
}
BEHAVIORS = [
    "echo",
    "cache",
    "status:400",
    "status:401",
    "status:429",
    "status:500",
    "status:529",
    "stream_error",
    "cut",
]


def name_of(behavior: str) -> str:
    return "claude" if behavior == "echo" else "claude-" + behavior.replace(":", "-")


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(upstream: FakeAnthropic, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    deployments: list[dict[str, Any]] = [
        {
            "model_name": name_of(behavior),
            "provider": "anthropic",
            "model": "claude-sonnet-4-5",
            "api_base": upstream.base(behavior),
            "api_key": KEY,
            "headers": {"x-custom-header": "custom-value"},
            "timeouts": {"connect": 2, "first_byte": 10},
        }
        for behavior in BEHAVIORS
    ]
    deployments += [
        {
            "model_name": "claude-2026",
            "provider": "anthropic",
            "model": "claude-sonnet-4-5",
            "api_base": upstream.base() + "/v1",  # an api_base that already names /v1 works too
            "api_key": KEY,
            "api_version": "2026-10-21",
            "default_max_tokens": 64,
        },
    ]
    # One upstream exchange per request: these tests check how each maps (retries: tests/e2e/test_router.py).
    router = {"num_retries": 0, "cooldown_time": 0}
    config = {"model_list": deployments, "router": router, "server": {"keepalive_interval": 0.3}}
    proc = ManifoldProcess(config, tmp_path_factory.mktemp("anthropic-gateway"))
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def every_request_is_valid_anthropic(upstream: FakeAnthropic) -> Iterator[None]:
    upstream.clear()
    yield
    bad = [(r.path, r.problems) for r in upstream.invalid]
    assert bad == [], f"the upstream received invalid Messages requests: {bad}"
    for r in upstream.messages_requests():
        assert r.headers.get("x-api-key") == KEY
        assert r.headers.get("anthropic-version") in ("2023-06-01", "2026-10-21")
        assert r.headers.get("content-type") == "application/json"
        assert r.headers.get("x-custom-header", "custom-value") == "custom-value"


@pytest.fixture
def client(gateway: ManifoldProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=gateway.base_url, api_key="sk-client", max_retries=0, _strict_response_validation=True
    ) as c:
        yield c


@pytest.fixture
def http(gateway: ManifoldProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=20) as c:
        yield c


def sse_events(text: str) -> list[Any]:
    out: list[Any] = []
    for block in text.split("\n\n"):
        data = [line[6:] for line in block.split("\n") if line.startswith("data: ")]
        if data:
            payload = "\n".join(data)
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def last_sent(upstream: FakeAnthropic) -> Received:
    sent = upstream.messages_requests()
    assert sent, "nothing reached the upstream"
    return sent[-1]


# -- chat, not streamed -----------------------------------------------------------------------------------------


def test_chat_completion(client: openai.OpenAI, http: httpx.Client, upstream: FakeAnthropic) -> None:
    completion = client.chat.completions.create(model="claude", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.model == "claude"
    assert completion.choices[0].message.content == "echo: hello there world"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.prompt_tokens == 6
    body = last_sent(upstream).body
    assert body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 4096,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "hello there world"}],
    }
    raw = http.post("/v1/chat/completions", json={"model": "claude", "messages": MESSAGES})
    assert raw.status_code == 200
    assert_valid("CreateChatCompletionResponse", raw.json())
    assert raw.json()["id"].startswith("msg_fake")


def test_parameters_reach_anthropic_translated(client: openai.OpenAI, upstream: FakeAnthropic) -> None:
    completion = client.chat.completions.create(
        model="claude",
        messages=MESSAGES,
        max_completion_tokens=50,
        temperature=0.3,
        top_p=0.9,
        stop=["never"],
        user="user-1",
        seed=7,
        extra_body={"top_k": 20},
    )
    assert completion.choices[0].message.content == "echo: hello there world"
    body = last_sent(upstream).body
    assert {k: body[k] for k in ("max_tokens", "temperature", "top_p", "top_k", "stop_sequences", "metadata")} == {
        "max_tokens": 50,
        "temperature": 0.3,
        "top_p": 0.9,
        "top_k": 20,
        "stop_sequences": ["never"],
        "metadata": {"user_id": "user-1"},
    }
    assert "seed" not in body


def test_stop_sequence_and_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model="claude", messages=MESSAGES, stop="world")
    assert completion.choices[0].message.content == "echo: hello there "
    assert completion.choices[0].finish_reason == "stop"
    completion = client.chat.completions.create(model="claude", messages=MESSAGES, max_tokens=2)
    assert completion.choices[0].finish_reason == "length"


def test_cache_tokens_in_usage(http: httpx.Client) -> None:
    body = http.post("/v1/chat/completions", json={"model": "claude-cache", "messages": MESSAGES}).json()
    assert_valid("CreateChatCompletionResponse", body)
    usage = body["usage"]
    assert usage["prompt_tokens"] == 6 + 100 + 20
    assert usage["prompt_tokens_details"] == {"cached_tokens": 100, "cache_write_tokens": 20}
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


# -- streaming --------------------------------------------------------------------------------------------------


def test_streaming_with_usage(client: openai.OpenAI, http: httpx.Client, upstream: FakeAnthropic) -> None:
    chunks = list(
        client.chat.completions.create(
            model="claude", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: hello there world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 6
    assert last_sent(upstream).body["stream"] is True

    raw = http.post(
        "/v1/chat/completions",
        json={"model": "claude", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = sse_events(raw.text)
    assert events[-1] == "[DONE]"
    for chunk in events[:-1]:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert len({c["id"] for c in events[:-1]}) == 1


def test_stream_helper_assembles_the_completion(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="claude-cache", messages=MESSAGES) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == "echo: hello there world"


# -- tools ------------------------------------------------------------------------------------------------------


def test_tool_call_and_full_round_trip(client: openai.OpenAI, upstream: FakeAnthropic) -> None:
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
    completion = client.chat.completions.create(
        model="claude", messages=messages, tools=[WEATHER], tool_choice="required"
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.tool_calls is not None and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert last_sent(upstream).body["tool_choice"] == {"type": "any"}

    # The client runs the tool and sends its assistant message and the result back, as the SDK docs show.
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18°C and sunny"})
    completion = client.chat.completions.create(model="claude", messages=messages, tools=[WEATHER])
    assert completion.choices[0].message.content == f"Tool results: {call.id}=18°C and sunny"
    assert completion.choices[0].finish_reason == "stop"
    sent = last_sent(upstream).body["messages"]
    assert sent[1] == {
        "role": "assistant",
        "content": [{"type": "tool_use", "id": call.id, "name": "get_weather", "input": {"city": "Paris"}}],
    }
    assert sent[2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18°C and sunny"}],
    }


def test_parallel_tool_calls_streamed(client: openai.OpenAI, http: httpx.Client) -> None:
    with client.chat.completions.stream(
        model="claude", messages=[{"role": "user", "content": "weather and time"}], tools=[WEATHER, TIME]
    ) as stream:
        final = stream.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Let me call the tools."
    assert message.tool_calls is not None
    assert [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_time", {"timezone": "Europe/Paris"}),
    ]
    assert final.choices[0].finish_reason == "tool_calls"

    body = {"model": "claude", "messages": [{"role": "user", "content": "x"}], "tools": [WEATHER, TIME], "stream": True}
    chunks = sse_events(http.post("/v1/chat/completions", json=body).text)[:-1]
    deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    firsts = [d for d in deltas if "id" in d]
    assert [d["index"] for d in firsts] == [0, 1]
    for d in deltas:
        if "id" not in d:
            assert set(d) == {"index", "function"} and set(d["function"]) == {"arguments"}
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


def test_parallel_tool_calls_false_is_one_call(client: openai.OpenAI, upstream: FakeAnthropic) -> None:
    completion = client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": "x"}], tools=[WEATHER, TIME], parallel_tool_calls=False
    )
    assert completion.choices[0].message.tool_calls is not None
    assert len(completion.choices[0].message.tool_calls) == 1
    assert last_sent(upstream).body["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


# -- images and structured output -------------------------------------------------------------------------------


def test_images(client: openai.OpenAI, upstream: FakeAnthropic) -> None:
    content: Any = [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/ant.jpg", "detail": "low"}},
    ]
    completion = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": content}])
    assert completion.choices[0].message.content == (
        f"echo: What is in these? [image base64 image/png {PNG_BYTES} bytes] [image url https://example.com/ant.jpg]"
    )
    blocks = last_sent(upstream).body["messages"][0]["content"]
    assert blocks[1] == {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64}}
    assert blocks[2] == {"type": "image", "source": {"type": "url", "url": "https://example.com/ant.jpg"}}


def test_streamed_image_request(client: openai.OpenAI) -> None:
    content: Any = [{"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}]
    stream = client.chat.completions.create(
        model="claude", messages=[{"role": "user", "content": content}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == f"echo: [image base64 image/png {PNG_BYTES} bytes]"


class Weather(pydantic.BaseModel):
    city: str
    celsius: float
    sunny: bool


def test_response_format_json_schema_with_the_parse_helper(client: openai.OpenAI, upstream: FakeAnthropic) -> None:
    completion = client.chat.completions.parse(model="claude", messages=MESSAGES, response_format=Weather)
    parsed = completion.choices[0].message.parsed
    assert parsed == Weather(city="Paris", celsius=1.5, sunny=True)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls in (None, [])
    body = last_sent(upstream).body
    assert body["tool_choice"] == {"type": "tool", "name": "Weather"}
    assert body["tools"][0]["name"] == "Weather" and body["tools"][0]["strict"] is True


def test_response_format_streamed(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model="claude", messages=MESSAGES, response_format=Weather) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == Weather(city="Paris", celsius=1.5, sunny=True)


def test_json_object(http: httpx.Client) -> None:
    body = {"model": "claude", "messages": MESSAGES, "response_format": {"type": "json_object"}}
    resp = http.post("/v1/chat/completions", json=body).json()
    assert_valid("CreateChatCompletionResponse", resp)
    assert json.loads(resp["choices"][0]["message"]["content"]) == {}


# -- errors -----------------------------------------------------------------------------------------------------


def check_envelope(resp: httpx.Response, status: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert_valid("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    return error


@pytest.mark.parametrize(
    ("model", "exc", "status", "code"),
    [
        ("claude-status-400", openai.BadRequestError, 400, "invalid_request_error"),
        ("claude-status-401", openai.AuthenticationError, 401, "authentication_error"),
        ("claude-status-429", openai.RateLimitError, 429, "rate_limit_error"),
        ("claude-status-500", openai.InternalServerError, 502, "upstream_error"),
        ("claude-status-529", openai.InternalServerError, 503, "upstream_overloaded"),
    ],
)
def test_upstream_errors(
    client: openai.OpenAI, http: httpx.Client, model: str, exc: type[openai.APIStatusError], status: int, code: str
) -> None:
    with pytest.raises(exc) as info:
        client.chat.completions.create(model=model, messages=MESSAGES)
    assert info.value.status_code == status
    assert info.value.code == code
    resp = http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "stream": True})
    error = check_envelope(resp, status)  # before the first chunk: a real status, not a stream event
    assert error["code"] == code
    if status in (429, 503):
        assert resp.headers["retry-after"] == "1"


def test_mid_stream_overload_is_an_error_event(client: openai.OpenAI, http: httpx.Client) -> None:
    stream = client.chat.completions.create(model="claude-stream_error", messages=MESSAGES, stream=True)
    with pytest.raises(openai.APIError, match="overloaded"):
        for _ in stream:
            pass
    events = sse_events(
        http.post(
            "/v1/chat/completions", json={"model": "claude-stream_error", "messages": MESSAGES, "stream": True}
        ).text
    )
    # What arrived before the error reaches the client before the error event (even when written in a batch).
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == "echo:"
    assert_valid("ErrorResponse", events[-1])
    assert events[-1]["error"]["code"] == "upstream_overloaded"


def test_cut_stream_is_an_error_event(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={"model": "claude-cut", "messages": MESSAGES, "stream": True})
    events = sse_events(resp.text)
    assert_valid("ErrorResponse", events[-1])
    assert events[-1]["error"]["type"] == "upstream_error"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"modalities": ["text", "audio"], "audio": {"voice": "alloy", "format": "wav"}}, "modalities"),
        ({"temperature": 1.5}, "temperature"),
    ],
)
def test_what_anthropic_cannot_do_is_a_clear_400(
    client: openai.OpenAI, http: httpx.Client, upstream: FakeAnthropic, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude", messages=MESSAGES, extra_body=extra)
    assert info.value.param == param
    resp = http.post("/v1/chat/completions", json={"model": "claude", "messages": MESSAGES, "stream": True, **extra})
    assert check_envelope(resp, 400)["param"] == param  # streamed too: a status, before any chunk
    assert upstream.messages_requests() == []


# -- API version 2026-10-21 and readiness -----------------------------------------------------------------------


def test_api_version_2026(client: openai.OpenAI, upstream: FakeAnthropic) -> None:
    completion = client.chat.completions.create(model="claude-2026", messages=MESSAGES)
    assert completion.choices[0].message.content == "echo: hello there world"
    sent = last_sent(upstream)
    assert sent.api_version == "2026-10-21"
    assert sent.path.endswith("/b/echo/v1/messages")
    assert sent.body["max_tokens"] == 64
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="claude-2026", messages=MESSAGES, temperature=0.2)
    assert info.value.param == "temperature"


def test_ready(http: httpx.Client, upstream: FakeAnthropic) -> None:
    ready = http.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert any(r.path.endswith("/v1/models") and r.headers.get("x-api-key") == KEY for r in upstream.requests)


def test_docs_example_config_is_valid(tmp_path: Path) -> None:
    """The config shown in docs/backends-anthropic.md passes `manifold check`."""
    import subprocess
    import sys

    doc = (Path(__file__).resolve().parents[2] / "docs" / "backends-anthropic.md").read_text(encoding="utf-8")
    yaml_block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = tmp_path / "manifold.yaml"
    config.write_text(yaml_block)
    result = subprocess.run(
        [sys.executable, "-m", "manifold", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        env={"ANTHROPIC_API_KEY": "sk-ant-x", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
