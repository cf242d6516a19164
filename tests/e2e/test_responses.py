"""The Responses API end to end: the official `openai` SDK against `manifold serve`, translated to a fake upstream
that speaks only chat completions, on SQLite and on PostgreSQL (`stored_gateway` is parametrized by backend);
every body and every event judged by OpenAI's schemas."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.responses_helpers import (
    PAGE_RELAXED,
    TEXT_STREAM,
    check_response,
    collapsed,
    comparable,
    post_stream,
    typed_events,
)
from tests.fakes.openai_upstream import TOOL_ARGUMENTS, FakeUpstream

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


def create_raw(client: openai.OpenAI, **kw: Any) -> Any:
    raw = client.responses.with_raw_response.create(**kw)
    check_response(json.loads(raw.text))
    return raw.parse()


def last_request(fake: FakeUpstream, behavior: str) -> dict[str, Any]:
    body = [r for r in fake.requests if r.behavior == behavior][-1].body
    assert isinstance(body, dict)
    return body


# -- creating -----------------------------------------------------------------------------------------------------


def test_create_translates_to_chat(stored_client: openai.OpenAI, fake: FakeUpstream) -> None:
    response = create_raw(
        stored_client,
        model="fake-echo",
        input="hello there",
        instructions="Be brief.",
        temperature=0.5,
        max_output_tokens=64,
        metadata={"k": "v"},
        user="user-1",
        reasoning={"effort": "low"},
        text={"format": {"type": "json_object"}},
    )
    assert response.status == "completed"
    assert response.output_text == "echo: hello there"
    assert response.model == "fake-echo"
    assert response.instructions == "Be brief."
    assert response.metadata == {"k": "v"}
    message = response.output[0]
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].logprobs == []
    assert response.usage is not None
    assert response.usage.input_tokens == 2 + 2 and response.usage.output_tokens == 3
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    sent = last_request(fake, "echo")
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"},
    ]
    assert sent["model"] == "upstream-model"
    assert sent["max_completion_tokens"] == 64
    assert sent["temperature"] == 0.5 and sent["user"] == "user-1"
    assert sent["reasoning_effort"] == "low"
    assert sent["response_format"] == {"type": "json_object"}
    assert "metadata" not in sent and "stream" not in sent


def test_input_items_and_parts_translate(stored_client: openai.OpenAI, fake: FakeUpstream) -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    response = create_raw(
        stored_client,
        model="fake-echo",
        input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [{"type": "input_text", "text": "Earlier"}]},
            {"role": "assistant", "content": "Noted."},
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is"},
                    {"type": "input_image", "image_url": image, "detail": "low"},
                    {"type": "input_file", "filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
                ],
            },
            {"type": "reasoning", "id": "rs_1", "summary": []},
        ],
    )
    assert response.output_text == "echo: What is"
    assert last_request(fake, "echo")["messages"] == [
        {"role": "developer", "content": "Answer in French."},
        {"role": "user", "content": "Earlier"},
        {"role": "assistant", "content": "Noted."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is"},
                {"type": "image_url", "image_url": {"url": image, "detail": "low"}},
                {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
            ],
        },
    ]


def test_stream_is_the_canonical_event_sequence(stored_http: httpx.Client) -> None:
    events = post_stream(stored_http, {"model": "fake-echo", "input": "one two three"})
    assert collapsed([e["type"] for e in events]) == TEXT_STREAM
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "echo: one two three" and len(deltas) == 4
    created, in_progress, final = events[0]["response"], events[1]["response"], events[-1]["response"]
    assert created["status"] == in_progress["status"] == "in_progress"
    assert created["id"] == final["id"] and final["status"] == "completed"
    assert final["output"][0]["content"][0]["text"] == "echo: one two three"
    assert final["usage"]["output_tokens"] == 4
    item_ids = {e["item_id"] for e in events if "item_id" in e}
    assert item_ids == {final["output"][0]["id"]}


def test_stream_helper_final_response_equals_non_streamed(stored_client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {"model": "fake-echo", "input": "same input", "instructions": "x", "temperature": 0}
    with stored_client.responses.stream(**kw) as stream:
        texts = [e.delta for e in stream if e.type == "response.output_text.delta"]
        streamed = stream.get_final_response()
    assert "".join(texts) == "echo: same input"
    plain = stored_client.responses.create(**kw)
    assert comparable(streamed.model_dump(mode="json")) == comparable(plain.model_dump(mode="json"))
    # ...and each is stored as it was sent.
    stored = stored_client.responses.retrieve(streamed.id).model_dump(mode="json")
    assert comparable(stored) == comparable(streamed.model_dump(mode="json")) and stored["id"] == streamed.id


def test_incomplete_when_cut_by_max_output_tokens(stored_client: openai.OpenAI, stored_http: httpx.Client) -> None:
    words = " ".join(f"w{i}" for i in range(40))
    response = create_raw(stored_client, model="fake-length", input=words, max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete"
    assert len(response.output_text.split()) == 16
    events = post_stream(stored_http, {"model": "fake-length", "input": words, "max_output_tokens": 16})
    assert events[-1]["type"] == "response.incomplete"
    assert events[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


# -- function tools -----------------------------------------------------------------------------------------------


def test_function_tool_round_trip(stored_client: openai.OpenAI, fake: FakeUpstream) -> None:
    first = create_raw(stored_client, model="fake-tool_loop", input="Weather in Paris?", tools=[WEATHER])
    call = first.output[0]
    assert call.type == "function_call" and call.name == "get_weather" and call.status == "completed"
    assert call.arguments == TOOL_ARGUMENTS and call.call_id == "call_fake_1"
    assert first.tools[0].name == "get_weather"  # type: ignore[union-attr]
    sent = last_request(fake, "tool_loop")
    assert sent["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "The weather in a city",
                "parameters": WEATHER["parameters"],
            },
        }
    ]
    second = create_raw(
        stored_client,
        model="fake-tool_loop",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=[WEATHER],
    )
    assert second.output_text == "result: sunny, 21 C"
    assert second.previous_response_id == first.id
    assert last_request(fake, "tool_loop")["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_fake_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": TOOL_ARGUMENTS},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_fake_1", "content": "sunny, 21 C"},
    ]


def test_function_calls_stream(stored_http: httpx.Client, stored_client: openai.OpenAI) -> None:
    body = {"model": "fake-tools", "input": "two calls", "tools": [WEATHER, {**WEATHER, "name": "get_time"}]}
    events = post_stream(stored_http, body)
    assert collapsed([e["type"] for e in events]) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    final = events[-1]["response"]
    assert [(i["name"], i["arguments"]) for i in final["output"]] == [
        ("get_weather", TOOL_ARGUMENTS),
        ("get_time", TOOL_ARGUMENTS),
    ]
    with stored_client.responses.stream(**body) as stream:
        done = [e for e in stream if e.type == "response.function_call_arguments.done"]
        streamed = stream.get_final_response()
    assert [e.arguments for e in done] == [TOOL_ARGUMENTS, TOOL_ARGUMENTS]
    assert [(i.type, i.name, i.arguments, i.call_id, i.status) for i in streamed.output] == [  # type: ignore[union-attr]
        (i["type"], i["name"], i["arguments"], i["call_id"], i["status"]) for i in final["output"]
    ]


# -- state --------------------------------------------------------------------------------------------------------


def test_chained_turns_rebuild_the_conversation(stored_client: openai.OpenAI, fake: FakeUpstream) -> None:
    first = create_raw(stored_client, model="fake-echo", input="first", instructions="Old instructions")
    second = create_raw(stored_client, model="fake-echo", input="second", previous_response_id=first.id)
    third = create_raw(
        stored_client, model="fake-echo", input="third", previous_response_id=second.id, instructions="New"
    )
    assert third.output_text == "echo: third"
    assert third.previous_response_id == second.id and third.instructions == "New"
    assert last_request(fake, "echo")["messages"] == [
        {"role": "system", "content": "New"},  # instructions are not carried over
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "echo: first"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": "echo: second"},
        {"role": "user", "content": "third"},
    ]


def test_previous_response_id_with_conversation_is_400(stored_http: httpx.Client) -> None:
    resp = stored_http.post(
        "/v1/responses",
        json={"model": "fake-echo", "input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"},
    )
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert error["param"] == "conversation" and error["type"] == "invalid_request_error"
    assert_valid("ErrorResponse", resp.json())


def test_store_false_cannot_be_fetched_or_chained(stored_client: openai.OpenAI) -> None:
    response = create_raw(stored_client, model="fake-echo", input="ephemeral", store=False)
    assert response.output_text == "echo: ephemeral"
    with pytest.raises(openai.NotFoundError):
        stored_client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError) as err:
        stored_client.responses.create(model="fake-echo", input="next", previous_response_id=response.id)
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_retrieve_and_delete(stored_client: openai.OpenAI, stored_http: httpx.Client) -> None:
    response = create_raw(stored_client, model="fake-echo", input="keep me")
    raw = stored_http.get(f"/v1/responses/{response.id}")
    assert raw.status_code == 200
    assert raw.json() == json.loads(response.model_dump_json(exclude_unset=True))
    assert stored_client.responses.retrieve(response.id) == response
    assert stored_http.get(f"/openai/v1/responses/{response.id}").json()["id"] == response.id
    deleted = stored_http.delete(f"/v1/responses/{response.id}")
    assert deleted.status_code == 200
    assert deleted.json() == {"id": response.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        stored_client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        stored_client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError):
        stored_client.responses.input_items.list(response.id)


def test_input_items_pages(stored_client: openai.OpenAI, stored_http: httpx.Client) -> None:
    texts = [f"message {i}" for i in range(5)]
    response = create_raw(stored_client, model="fake-echo", input=[{"role": "user", "content": t} for t in texts])
    items = list(stored_client.responses.input_items.list(response.id, limit=2))
    assert [i.content[0].text for i in items] == list(reversed(texts))  # type: ignore[union-attr]
    ascending = list(stored_client.responses.input_items.list(response.id, limit=3, order="asc"))
    assert [i.id for i in ascending] == [i.id for i in reversed(items)]
    # Page by hand, validating every page.
    seen: list[str] = []
    query: dict[str, Any] = {"limit": 2, "include[]": "message.input_image.image_url"}
    while True:
        page = stored_http.get(f"/v1/responses/{response.id}/input_items", params=query).json()
        assert_valid("ResponseItemList", page, relaxed=PAGE_RELAXED)
        seen += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            break
        query["after"] = page["last_id"]
    assert seen == [i.id for i in items]
    for bad, param in (({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"order": "up"}, "order")):
        resp = stored_http.get(f"/v1/responses/{response.id}/input_items", params=bad)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param
    resp = stored_http.get(f"/v1/responses/{response.id}/input_items", params={"include[]": "nope"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "include"


def test_input_items_list_assistant_and_tool_items(stored_client: openai.OpenAI, stored_http: httpx.Client) -> None:
    response = create_raw(
        stored_client,
        model="fake-echo",
        input=[
            {"role": "user", "content": "q"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "again"},
        ],
    )
    page = stored_http.get(f"/v1/responses/{response.id}/input_items", params={"order": "asc"}).json()
    assert_valid("ResponseItemList", page, relaxed=PAGE_RELAXED)
    assert [i["type"] for i in page["data"]] == [
        "message",
        "function_call",
        "function_call_output",
        "message",
        "message",
    ]
    assert page["data"][3]["content"] == [{"type": "output_text", "text": "a", "annotations": [], "logprobs": []}]


# -- token counts and compaction ----------------------------------------------------------------------------------


def test_input_tokens_count(stored_client: openai.OpenAI, stored_http: httpx.Client) -> None:
    counted = stored_client.responses.input_tokens.count(model="fake-echo", input="Tell me a joke.")
    assert counted.object == "response.input_tokens" and counted.input_tokens > 0
    longer = stored_client.responses.input_tokens.count(
        model="fake-echo", input="Tell me a joke about a very long day at the office.", instructions="Be funny."
    )
    assert longer.input_tokens > counted.input_tokens
    raw = stored_http.post("/v1/responses/input_tokens", json={"input": "Tell me a joke."})
    assert raw.status_code == 200
    assert_valid("TokenCountsResource", raw.json())
    assert raw.json()["input_tokens"] == counted.input_tokens  # the same estimate without a model


def test_compact_then_continue(stored_client: openai.OpenAI, stored_http: httpx.Client, fake: FakeUpstream) -> None:
    conversation = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": "Hello Ada."},
        {"role": "user", "content": "I like tea."},
    ]
    raw = stored_http.post("/v1/responses/compact", json={"model": "fake-echo", "input": conversation})
    assert raw.status_code == 200, raw.text
    compacted = raw.json()
    assert_valid("CompactResource", compacted)
    assert compacted["object"] == "response.compaction"
    users = [i for i in compacted["output"] if i["type"] == "message"]
    assert [(u["role"], u["content"][0]["text"]) for u in users] == [
        ("user", "My name is Ada."),
        ("user", "I like tea."),
    ]
    item = compacted["output"][-1]
    assert item["type"] == "compaction" and item["id"].startswith("cmp_")
    summary_request = last_request(fake, "echo")
    assert summary_request["messages"][-1]["role"] == "user"  # the model is asked to summarize
    assert "summar" in summary_request["messages"][-1]["content"].lower()
    assert "Ada" not in item["encrypted_content"] and "echo" not in item["encrypted_content"]
    # Continue from the compacted items: the summary comes back expanded.
    follow = create_raw(
        stored_client, model="fake-echo", input=[*compacted["output"], {"role": "user", "content": "What do I like?"}]
    )
    assert follow.output_text == "echo: What do I like?"
    sent = last_request(fake, "echo")["messages"]
    assert [m["role"] for m in sent] == ["user", "user", "system", "user"]
    assert sent[2]["content"].startswith("Summary of the earlier part of this conversation")
    assert "echo: You are performing a context checkpoint compaction" in sent[2]["content"]
    # A compaction item that was altered is refused, naming it.
    tampered = {**item, "encrypted_content": item["encrypted_content"][:-4] + "AAAA"}
    resp = stored_http.post("/v1/responses", json={"model": "fake-echo", "input": [tampered]})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "input[0].encrypted_content"
    # The SDK's `compact` sends the same request (its strict types cannot hold the user messages the spec's own
    # example returns, so this client does not validate strictly).
    with openai.OpenAI(base_url=str(stored_client.base_url), api_key="x", max_retries=0) as loose:
        via_sdk = loose.responses.compact(model="fake-echo", input=conversation)  # type: ignore[arg-type]
    assert via_sdk.object == "response.compaction" and via_sdk.output[-1].type == "compaction"


def test_compact_needs_a_model(stored_http: httpx.Client) -> None:
    resp = stored_http.post("/v1/responses/compact", json={"input": "x"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "model"


def test_context_management_compacts_inside_create(stored_http: httpx.Client, fake: FakeUpstream) -> None:
    long_text = " ".join(f"fact{i}" for i in range(1500))
    body = {
        "model": "fake-echo",
        "input": [
            {"role": "user", "content": long_text},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "now answer"},
        ],
        "context_management": [{"type": "compaction", "compact_threshold": 1000}],
    }
    events = post_stream(stored_http, body)
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["compaction", "message"]
    assert final["output"][1]["content"][0]["text"] == "echo: now answer"
    sent = last_request(fake, "echo")["messages"]
    assert [m["role"] for m in sent] == ["user", "system", "user"]  # the assistant turn was summarized away
    small = post_stream(stored_http, {**body, "input": "short"})
    assert [i["type"] for i in small[-1]["response"]["output"]] == ["message"]


# -- background ---------------------------------------------------------------------------------------------------


def wait_for(client: openai.OpenAI, response_id: str, statuses: set[str], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        response = client.responses.retrieve(response_id)
        if response.status in statuses or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_background_create_and_poll(stored_client: openai.OpenAI, stored_http: httpx.Client) -> None:
    queued = create_raw(stored_client, model="fake-slow_tokens:0.2", input="in the background", background=True)
    assert queued.status == "queued" and queued.background is True
    running = check_response(stored_http.get(f"/v1/responses/{queued.id}").json())
    assert running["status"] in ("queued", "in_progress", "completed")  # as it is now, output so far included
    done = wait_for(stored_client, queued.id, {"completed", "failed"})
    assert done.status == "completed" and done.output_text == "echo: in the background"
    check_response(stored_http.get(f"/v1/responses/{queued.id}").json())


def test_background_cancel_stops_the_upstream(
    stored_client: openai.OpenAI, stored_http: httpx.Client, fake: FakeUpstream
) -> None:
    before = len(fake.cancelled)
    hangs = fake.count("hang")
    queued = create_raw(stored_client, model="fake-hang", input="never ends", background=True)
    # Cancel only once the upstream has the request (the fake is shared: its total count proves nothing).
    deadline = time.monotonic() + 10
    while fake.count("hang") == hangs and time.monotonic() < deadline:
        time.sleep(0.01)
    assert fake.count("hang") > hangs
    wait_for(stored_client, queued.id, {"in_progress"})
    raw = stored_http.post(f"/v1/responses/{queued.id}/cancel")
    assert raw.status_code == 200, raw.text
    cancelled = check_response(raw.json())
    assert cancelled["status"] == "cancelled" and cancelled["background"] is True
    assert fake.wait_cancelled(before + 1)
    assert stored_client.responses.retrieve(queued.id).status == "cancelled"
    again = stored_http.post(f"/v1/responses/{queued.id}/cancel")
    assert again.status_code == 400 and "cancelled" in again.json()["error"]["message"]
    plain = create_raw(stored_client, model="fake-echo", input="not background")
    with pytest.raises(openai.BadRequestError) as err:
        stored_client.responses.cancel(plain.id)
    assert "background" in err.value.message
    with pytest.raises(openai.NotFoundError):
        stored_client.responses.cancel("resp_missing")


def test_stored_response_events_are_rebuilt(stored_client: openai.OpenAI, stored_http: httpx.Client) -> None:
    response = create_raw(stored_client, model="fake-echo", input="replay me")
    resp = stored_http.get(f"/v1/responses/{response.id}", params={"stream": "true"})
    events = typed_events(resp.text)
    assert collapsed([e["type"] for e in events]) == TEXT_STREAM
    assert events[-1]["response"] == json.loads(response.model_dump_json(exclude_unset=True))
    tail = list(stored_client.responses.retrieve(response.id, stream=True, starting_after=5))
    assert [e.sequence_number for e in tail] == [e["sequence_number"] for e in events[6:]]


def test_background_stream_resumes_after_a_disconnect(
    stored_client: openai.OpenAI, stored_http: httpx.Client, stored_gateway: ManifoldProcess
) -> None:
    body = {"model": "fake-slow_tokens:0.2", "input": "a b c d e f", "background": True, "stream": True}
    seen: list[str] = []
    with stored_http.stream("POST", "/v1/responses", json=body) as resp:
        assert resp.status_code == 200
        buffer = ""
        for text in resp.iter_text():
            buffer += text
            while "\n\n" in buffer:
                block, buffer = buffer.split("\n\n", 1)
                seen.append(block)
            if len(seen) >= 5:
                break
    first = typed_events("\n\n".join(seen) + "\n\n")
    assert first[0]["type"] == "response.created" and first[0]["response"]["status"] == "queued"
    assert first[1]["type"] == "response.queued" and first[2]["type"] == "response.in_progress"
    response_id = first[0]["response"]["id"]
    last = first[-1]["sequence_number"]
    resumed = stored_http.get(f"/v1/responses/{response_id}", params={"stream": "true", "starting_after": last})
    assert resumed.status_code == 200
    rest = typed_events(resumed.text, first=last + 1)
    assert rest[-1]["type"] == "response.completed"
    assert rest[-1]["response"]["output"][0]["content"][0]["text"] == "echo: a b c d e f"
    # The SDK's own resume, from the first event on: the same events again.
    events = list(stored_client.responses.retrieve(response_id, stream=True, starting_after=0))
    assert [e.sequence_number for e in events] == [e["sequence_number"] for e in first[1:] + rest]
    assert "Traceback" not in stored_gateway.log()


def test_restart_fails_unfinished_background_responses(
    fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> None:
    workdir = tmp_path_factory.mktemp("restart")
    config = {
        "model_list": [{"model_name": "fake-hang", "provider": "openai", "api_base": fake.base("hang")}],
        "storage": {"data_dir": str(workdir / "data")},
        "responses": {"background_lease_s": 1},
    }
    first = ManifoldProcess(config, workdir)
    try:
        with openai.OpenAI(base_url=first.base_url, api_key="x", max_retries=0) as c:
            queued = c.responses.create(model="fake-hang", input="forever", background=True)
            wait_for(c, queued.id, {"in_progress"})
    finally:
        first.proc.kill()  # SIGKILL: no shutdown, the response is left in_progress
        first.proc.wait()
        first.stop()
    second = ManifoldProcess(config, workdir)
    try:
        with openai.OpenAI(base_url=second.base_url, api_key="x", max_retries=0, _strict_response_validation=True) as c:
            failed = wait_for(c, queued.id, {"failed"})
            assert failed.status == "failed"
            assert failed.error is not None and failed.error.code == "server_error"
            assert "restart" in failed.error.message
            raw = httpx.get(f"{second.base_url}/responses/{queued.id}")
            check_response(raw.json())
            # A graceful shutdown fails what it was running at once.
            running = c.responses.create(model="fake-hang", input="forever", background=True)
            wait_for(c, running.id, {"in_progress"})
    finally:
        second.stop()
    third = ManifoldProcess(config, workdir)
    try:
        with openai.OpenAI(base_url=third.base_url, api_key="x", max_retries=0, _strict_response_validation=True) as c:
            stopped = c.responses.retrieve(running.id)
            assert stopped.status == "failed" and stopped.error is not None
            assert "shut down" in stopped.error.message
    finally:
        third.stop()


# -- errors -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "no-such-model", "input": "x"}, 404, "model"),
        ({"model": "fake-echo"}, 400, "input"),
        ({"model": "fake-echo", "input": "x", "max_output_tokens": 8}, 400, "max_output_tokens"),
        ({"model": "fake-echo", "input": "x", "temperature": 3}, 400, "temperature"),
        ({"model": "fake-echo", "input": [{"role": "wizard", "content": "x"}]}, 400, "input[0].role"),
        (
            {"model": "fake-echo", "input": [{"role": "user", "content": [{"type": "input_text"}]}]},
            400,
            "input[0].content[0].text",
        ),
        ({"model": "fake-echo", "input": [{"type": "item_reference", "id": "x"}]}, 400, "input[0].type"),
        ({"model": "fake-echo", "input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
        ({"model": "fake-echo", "input": "x", "background": True, "store": False}, 400, "background"),
        ({"model": "fake-echo", "input": "x", "previous_response_id": "resp_nope"}, 404, "previous_response_id"),
        ({"model": "fake-status:400", "input": "x"}, 400, None),
    ],
)
def test_errors_name_the_parameter(http: httpx.Client, body: dict[str, Any], status: int, param: str | None) -> None:
    resp = http.post("/v1/responses", json=body)
    assert resp.status_code == status, resp.text
    assert_valid("ErrorResponse", resp.json())
    assert resp.json()["error"]["param"] == param


def test_upstream_failure_mid_stream_is_response_failed(http: httpx.Client) -> None:
    events = post_stream(http, {"model": "fake-stream_error", "input": "x"})
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "server_error"
    assert "mid-stream" in events[-1]["response"]["error"]["message"]


def test_client_leaving_a_stream_cancels_the_upstream(
    http: httpx.Client, fake: FakeUpstream, gateway: ManifoldProcess
) -> None:
    before = len(fake.cancelled)
    body = {"model": "fake-slow_tokens:0.2", "input": "a b c d e f g h", "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as r:
        for line in r.iter_lines():
            if "output_text.delta" in line:
                break
    assert fake.wait_cancelled(before + 1)
    deadline = time.monotonic() + 5
    while "client disconnected" not in gateway.log() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "Traceback" not in gateway.log()  # the stream's iterator closed cleanly


# -- native pass-through ------------------------------------------------------------------------------------------


def test_native_deployment_is_passed_through(
    stored_client: openai.OpenAI, stored_http: httpx.Client, fake: FakeUpstream
) -> None:
    response = create_raw(
        stored_client, model="fake-native", input="hi there", instructions="Be nice.", metadata={"a": "b"}
    )
    assert response.output_text == "native: hi there"
    assert response.model == "fake-native" and response.id.startswith("resp_upstream")
    sent = [r for r in fake.requests if r.path.endswith("/responses")][-1]
    assert sent.body == {
        "model": "upstream-model",
        "input": "hi there",
        "instructions": "Be nice.",
        "metadata": {"a": "b"},
    }
    assert stored_client.responses.retrieve(response.id).output_text == "native: hi there"
    items = list(stored_client.responses.input_items.list(response.id))
    assert [i.content[0].text for i in items] == ["hi there"]  # type: ignore[union-attr]
    events = post_stream(stored_http, {"model": "fake-native", "input": "streamed words"})
    assert collapsed([e["type"] for e in events]) == TEXT_STREAM
    assert events[-1]["response"]["model"] == "fake-native"
    assert stored_client.responses.retrieve(events[-1]["response"]["id"]).output_text == "native: streamed words"
    with stored_client.responses.stream(model="fake-native", input="helper") as stream:
        final = stream.get_final_response()
    assert final.output_text == "native: helper"
    resp = stored_http.post("/v1/responses", json={"model": "fake-native", "input": "x", "background": True})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "background"


def test_native_is_checked_in_the_config() -> None:
    from manifold.errors import ConfigError
    from manifold.validation import parse_config

    with pytest.raises(ConfigError) as err:
        parse_config(
            {
                "model_list": [
                    {"model_name": "a", "provider": "local", "responses": "native"},
                    {"model_name": "b", "provider": "openai", "api_base": "http://x/v1", "responses": "sometimes"},
                ]
            }
        )
    assert err.value.problems == [
        "model_list[0].responses: provider 'local' has no native Responses API; leave it out (translated through "
        "chat completions)",
        "model_list[1].responses: 'sometimes' is not one of: native, translate",
    ]
