"""The Responses API on the embedded local model (SmolLM2-135M through llama.cpp), through the official SDK:
every body and event judged by OpenAI's schemas, token counts checked against what the model itself counted."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.responses_helpers import PAGE_RELAXED, TEXT_STREAM, check_response, collapsed, comparable, typed_events

pytestmark = pytest.mark.local_model

QUESTION = "What is the capital of France? Answer in one word."


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    workdir = Path(tmp_path_factory.mktemp("local-responses"))
    proc = ManifoldProcess(None, workdir, env={"MANIFOLD_RESPONSES__COMPACTION_KEY": "test-compaction-key"})
    yield proc
    proc.stop()


@pytest.fixture
def sdk(local: ManifoldProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=local.base_url, api_key="none", max_retries=0, _strict_response_validation=True) as c:
        yield c


@pytest.fixture
def http(local: ManifoldProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=local.url, timeout=120) as c:
        yield c


def create(sdk: openai.OpenAI, **kw: Any) -> Any:
    kw.setdefault("model", "smollm2")
    kw.setdefault("temperature", 0)
    kw.setdefault("max_output_tokens", 16)
    raw = sdk.responses.with_raw_response.create(**kw)
    check_response(json.loads(raw.text))
    return raw.parse()


def test_local_create_streamed_and_not(sdk: openai.OpenAI, http: httpx.Client) -> None:
    response = create(sdk, input=QUESTION)
    assert response.status in ("completed", "incomplete")
    assert "paris" in response.output_text.lower()
    assert response.usage is not None and 0 < response.usage.output_tokens <= 16
    resp = http.post(
        "/v1/responses",
        json={"model": "smollm2", "input": QUESTION, "temperature": 0, "max_output_tokens": 16, "stream": True},
    )
    events = typed_events(resp.text)
    assert collapsed([e["type"] for e in events])[:5] == TEXT_STREAM[:5]
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    with sdk.responses.stream(model="smollm2", input=QUESTION, temperature=0, max_output_tokens=16) as stream:
        for _ in stream:
            pass
        final = stream.get_final_response()
    assert comparable(final.model_dump(mode="json"))["output"] == comparable(response.model_dump(mode="json"))["output"]


def test_local_chain_retrieve_items_delete(sdk: openai.OpenAI, http: httpx.Client) -> None:
    first = create(sdk, input="My name is Ada. Say hello.", instructions="Be brief.")
    second = create(sdk, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id and second.instructions is None
    assert second.usage is not None and first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens  # the first turn came along
    assert sdk.responses.retrieve(second.id).output_text == second.output_text
    items = list(sdk.responses.input_items.list(second.id, limit=1))
    assert [i.content[0].text for i in items] == ["What is my name?"]  # type: ignore[union-attr]
    page = http.get(f"/v1/responses/{second.id}/input_items").json()
    assert_valid("ResponseItemList", page, relaxed=PAGE_RELAXED)
    sdk.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(second.id)


def test_local_input_tokens_are_exact(sdk: openai.OpenAI) -> None:
    """The count is the chat-templated prompt through the model's own tokenizer: what generation then uses."""
    kw: dict[str, Any] = {"input": "Tell me a joke.", "instructions": "You are funny."}
    counted = sdk.responses.input_tokens.count(model="smollm2", **kw)
    response = create(sdk, **kw)
    assert response.usage is not None
    assert counted.input_tokens == response.usage.input_tokens


WEATHER_TOOL: Any = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.mark.parametrize("stream", [False, True])
def test_local_function_tool_round_trip(sdk: openai.OpenAI, stream: bool) -> None:
    """llama.cpp's ChatML function-calling grammar makes the model call the tool with valid arguments; the
    tool's output goes back through previous_response_id and the model answers in text."""
    ask: dict[str, Any] = {
        "model": "smollm2",
        "input": "What is the weather in Paris?",
        "tools": [WEATHER_TOOL],
        "tool_choice": {"type": "function", "name": "get_weather"},
        "temperature": 0,
        "max_output_tokens": 40,
    }
    if stream:
        with sdk.responses.stream(**ask) as events:
            first = events.get_final_response()
    else:
        first = create(sdk, **ask)
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments).get("city"), str)
    output = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 24 C"}
    second = create(sdk, input=[output], previous_response_id=first.id, tools=[WEATHER_TOOL], tool_choice="none")
    assert second.status in ("completed", "incomplete")
    assert second.output_text


def test_local_function_call_output_as_input(http: httpx.Client) -> None:
    # A function call's result sent back as input reaches the model (as a turn naming the function).
    items = [
        {"role": "user", "content": "What is 6 times 7?"},
        {"type": "function_call", "call_id": "c1", "name": "multiply", "arguments": '{"a": 6, "b": 7}'},
        {"type": "function_call_output", "call_id": "c1", "output": "42"},
    ]
    resp = http.post(
        "/v1/responses", json={"model": "smollm2", "input": items, "temperature": 0, "max_output_tokens": 16}
    )
    assert resp.status_code == 200, resp.text
    check_response(resp.json())


def test_local_compact_then_continue(sdk: openai.OpenAI, http: httpx.Client) -> None:
    conversation = [
        {"role": "user", "content": "My favourite colour is green."},
        {"role": "assistant", "content": "Green is a nice colour."},
    ]
    raw = http.post("/v1/responses/compact", json={"model": "smollm2", "input": conversation})
    assert raw.status_code == 200, raw.text
    compacted = raw.json()
    assert_valid("CompactResource", compacted)
    assert compacted["output"][0]["content"][0]["text"] == "My favourite colour is green."
    assert compacted["output"][-1]["type"] == "compaction"
    follow = create(sdk, input=[*compacted["output"], {"role": "user", "content": "What is my favourite colour?"}])
    assert follow.status in ("completed", "incomplete") and follow.output_text


def wait_for(sdk: openai.OpenAI, response_id: str, statuses: set[str], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = sdk.responses.retrieve(response_id)
        if response.status in statuses or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_local_background_poll_cancel_and_resume(sdk: openai.OpenAI, http: httpx.Client) -> None:
    queued = create(sdk, input=QUESTION, background=True)
    assert queued.status == "queued"
    done = wait_for(sdk, queued.id, {"completed", "incomplete", "failed"})
    assert done.status in ("completed", "incomplete") and "paris" in done.output_text.lower()
    resumed = list(sdk.responses.retrieve(queued.id, stream=True, starting_after=1))
    assert resumed[0].sequence_number == 2 and resumed[-1].type in ("response.completed", "response.incomplete")
    long = create(sdk, input="Write a long story about a cat.", background=True, max_output_tokens=2000)
    wait_for(sdk, long.id, {"in_progress"})
    cancelled = sdk.responses.cancel(long.id)
    assert cancelled.status == "cancelled"
    # The model stopped: a new request is answered at once, not after 2000 tokens.
    after = create(sdk, input=QUESTION)
    assert after.status in ("completed", "incomplete")
    assert sdk.responses.retrieve(long.id).status == "cancelled"


def test_local_truncation(http: httpx.Client) -> None:
    huge = " ".join(f"word{i}" for i in range(3000))  # well over the 4096-token context window
    items = [
        {"role": "user", "content": huge},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": QUESTION},
    ]
    body = {"model": "smollm2", "input": items, "temperature": 0, "max_output_tokens": 16}
    refused = http.post("/v1/responses", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["code"] == "context_length_exceeded" and refused.json()["error"]["param"] == "input"
    fitted = http.post("/v1/responses", json={**body, "truncation": "auto"})
    assert fitted.status_code == 200, fitted.text
    response = check_response(fitted.json())
    assert response["truncation"] == "auto" and "paris" in response["output"][0]["content"][0]["text"].lower()
    assert response["usage"]["input_tokens"] < 100  # the oldest items were dropped
