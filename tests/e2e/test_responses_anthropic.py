"""The Responses API on the Anthropic provider (translated through the chat hub): the official `openai` SDK
against `manifold serve` in front of the fake Anthropic upstream, which judges every Messages request by the
`anthropic` SDK's own types; every body and event judged by OpenAI's schemas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import ManifoldProcess
from tests.e2e.responses_helpers import TEXT_STREAM, check_response, collapsed, comparable, post_stream
from tests.e2e.test_anthropic import every_request_is_valid_anthropic, gateway, upstream  # noqa: F401 - fixtures

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def sdk(gateway: ManifoldProcess) -> Iterator[openai.OpenAI]:  # noqa: F811 - the imported fixture
    with openai.OpenAI(base_url=gateway.base_url, api_key="x", max_retries=0, _strict_response_validation=True) as c:
        yield c


@pytest.fixture
def http(gateway: ManifoldProcess) -> Iterator[httpx.Client]:  # noqa: F811 - the imported fixture
    with httpx.Client(base_url=gateway.url, timeout=20) as c:
        yield c


def create(sdk: openai.OpenAI, **kw: Any) -> Any:
    raw = sdk.responses.with_raw_response.create(model="claude", **kw)
    check_response(json.loads(raw.text))
    return raw.parse()


def test_anthropic_text_streamed_and_not(sdk: openai.OpenAI, http: httpx.Client) -> None:
    response = create(sdk, input="hello there", instructions="Be terse.", max_output_tokens=64)
    assert response.output_text == "echo: hello there"
    assert response.usage is not None and response.usage.output_tokens > 0
    events = post_stream(http, {"model": "claude", "input": "hello there", "instructions": "Be terse."})
    assert collapsed([e["type"] for e in events]) == TEXT_STREAM
    with sdk.responses.stream(model="claude", input="hello there", instructions="Be terse.", max_output_tokens=64) as s:
        final = s.get_final_response()
    assert comparable(final.model_dump(mode="json"))["output"] == comparable(response.model_dump(mode="json"))["output"]


def test_anthropic_function_tool_round_trip(sdk: openai.OpenAI, http: httpx.Client) -> None:
    first = create(sdk, input="Weather in Paris?", tools=[WEATHER])
    assert [item.type for item in first.output] == ["message", "function_call"]
    call = first.output[1]
    assert call.name == "get_weather" and json.loads(call.arguments)
    second = create(
        sdk,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}],
        tools=[WEATHER],
    )
    assert second.output_text == f"Tool results: {call.call_id}=sunny"
    events = post_stream(http, {"model": "claude", "input": "Weather?", "tools": [WEATHER]})
    types = collapsed([e["type"] for e in events])
    assert types.index("response.output_item.done") < types.index("response.function_call_arguments.delta")
    assert events[-1]["type"] == "response.completed"


def test_anthropic_cut_by_max_output_tokens(sdk: openai.OpenAI) -> None:
    response = create(sdk, input=" ".join(["word"] * 40), max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
