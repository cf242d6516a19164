"""The fake Anthropic upstream, judged by the official `anthropic` SDK: its answers parse as the SDK's types and
its request checks reject what the real API rejects."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.fakes.anthropic_upstream import FakeAnthropic

KEY = "sk-ant-fake-key"
WEATHER: Any = {
    "name": "get_weather",
    "description": "Weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TIME: Any = {"name": "get_time", "input_schema": {"type": "object", "properties": {"timezone": {"type": "string"}}}}
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP438AAAAQBAYDFKhhdAAAAAElFTkSuQmCC")


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=KEY) as server:
        yield server


def client(fake: FakeAnthropic, behavior: str = "echo", **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.base(behavior), api_key=KEY, max_retries=0, **kw)


USER: Any = [{"role": "user", "content": "hello there world"}]


def test_echo_message(fake: FakeAnthropic) -> None:
    message = client(fake).messages.create(model="claude-x", max_tokens=100, messages=USER)
    assert message.content[0].type == "text" and message.content[0].text == "echo: hello there world"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == 3


def test_streamed_echo_accumulates_in_the_sdk(fake: FakeAnthropic) -> None:
    with client(fake).messages.stream(model="claude-x", max_tokens=100, messages=USER) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "echo: hello there world"
    assert final.stop_reason == "end_turn"


def test_tools_are_called_with_inputs_from_their_schema(fake: FakeAnthropic) -> None:
    message = client(fake).messages.create(
        model="claude-x", max_tokens=100, messages=USER, tools=[WEATHER], tool_choice={"type": "any"}
    )
    assert [b.type for b in message.content] == ["tool_use"]
    block = message.content[0]
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    assert message.stop_reason == "tool_use"


def test_parallel_tool_calls_stream(fake: FakeAnthropic) -> None:
    with client(fake).messages.stream(model="claude-x", max_tokens=100, messages=USER, tools=[WEATHER, TIME]) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert [b.input for b in final.content if b.type == "tool_use"] == [{"city": "Paris"}, {"timezone": "Europe/Paris"}]


def test_disable_parallel_tool_use_calls_one(fake: FakeAnthropic) -> None:
    message = client(fake).messages.create(
        model="claude-x",
        max_tokens=100,
        messages=USER,
        tools=[WEATHER, TIME],
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert [b.type for b in message.content] == ["text", "tool_use"]


def test_tool_results_are_acknowledged(fake: FakeAnthropic) -> None:
    messages: Any = [
        *USER,
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]},
    ]
    message = client(fake).messages.create(model="claude-x", max_tokens=100, messages=messages, tools=[WEATHER])
    assert message.content[0].type == "text" and message.content[0].text == "Tool results: toolu_1=sunny"


def test_images_are_described(fake: FakeAnthropic) -> None:
    content: Any = [
        {
            "type": "image",
            "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(PNG).decode()},
        },
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
        {"type": "text", "text": "What is this?"},
    ]
    message = client(fake).messages.create(
        model="claude-x", max_tokens=100, messages=[{"role": "user", "content": content}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == (
        f"echo: What is this? [image base64 image/png {len(PNG)} bytes] [image url https://example.com/a.jpg]"
    )


def test_stop_sequences_and_max_tokens(fake: FakeAnthropic) -> None:
    c = client(fake)
    message = c.messages.create(model="claude-x", max_tokens=100, messages=USER, stop_sequences=["world"])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "world"
    assert message.content[0].type == "text" and message.content[0].text == "echo: hello there "
    message = c.messages.create(model="claude-x", max_tokens=2, messages=USER)
    assert message.stop_reason == "max_tokens"


def test_cache_usage(fake: FakeAnthropic) -> None:
    message = client(fake, "cache").messages.create(model="claude-x", max_tokens=100, messages=USER)
    assert message.usage.cache_read_input_tokens == 100 and message.usage.cache_creation_input_tokens == 20


@pytest.mark.parametrize(
    ("status", "exc"),
    [
        (400, anthropic.BadRequestError),
        (401, anthropic.AuthenticationError),
        (403, anthropic.PermissionDeniedError),
        (404, anthropic.NotFoundError),
        (429, anthropic.RateLimitError),
        (500, anthropic.InternalServerError),
        (529, anthropic.OverloadedError),
    ],
)
def test_error_statuses_are_anthropic_errors(fake: FakeAnthropic, status: int, exc: type[Exception]) -> None:
    with pytest.raises(exc) as info:
        client(fake, f"status:{status}").messages.create(model="claude-x", max_tokens=10, messages=USER)
    assert isinstance(info.value, anthropic.APIStatusError)
    assert info.value.status_code == status
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"]


def test_mid_stream_overload_reaches_the_sdk_as_an_error(fake: FakeAnthropic) -> None:
    c = client(fake, "stream_error")
    with (
        pytest.raises(anthropic.APIStatusError) as info,
        c.messages.stream(model="claude-x", max_tokens=100, messages=USER) as stream,
    ):
        for _ in stream:
            pass
    assert "overloaded_error" in str(info.value) or "Overloaded" in str(info.value)


def test_a_wrong_key_is_401(fake: FakeAnthropic) -> None:
    bad = anthropic.Anthropic(base_url=fake.base(), api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="claude-x", max_tokens=10, messages=USER)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"temperature": 0.5}, "'temperature' was unexpected"),  # SDK 2.x sends API version 2026-10-21
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "x", "bogus": 1}]}]}, "'bogus'"),
        ({"tool_choice": {"type": "required"}}, "tool_choice"),
        ({"max_tokens": "many"}, "max_tokens"),
    ],
)
def test_invalid_requests_are_rejected_and_recorded(fake: FakeAnthropic, extra: dict[str, Any], problem: str) -> None:
    fake.clear()
    with pytest.raises(anthropic.BadRequestError) as info:
        client(fake).messages.create(model="claude-x", max_tokens=10, messages=USER, extra_body=extra)
    assert problem in str(info.value)
    assert len(fake.invalid) == 1 and problem in "; ".join(fake.invalid[0].problems)
    fake.clear()


def test_api_version_2023_takes_sampling_parameters(fake: FakeAnthropic) -> None:
    fake.clear()
    c = client(fake, default_headers={"anthropic-version": "2023-06-01"})
    c.messages.create(model="claude-x", max_tokens=10, messages=USER, extra_body={"temperature": 0.5, "top_k": 3})
    assert fake.invalid == []
    with pytest.raises(anthropic.BadRequestError, match="temperature"):
        c.messages.create(model="claude-x", max_tokens=10, messages=USER, extra_body={"temperature": 1.5})
    fake.clear()


def test_models_page(fake: FakeAnthropic) -> None:
    page = client(fake).models.list()
    assert [m.id for m in page.data] == ["claude-sonnet-4-5-20250929"]
