"""The Responses engine's pure parts, table-driven: input items and their validation, the translation to chat,
the event builder (every event judged by its ResponseStreamEvent schema), compaction seals and event buffers."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import msgspec
import pytest

from manifold.api.response_request import CreateResponseRequest, function_tools, input_items
from manifold.errors import InvalidRequestError, UnsupportedError
from manifold.providers.token_estimate import estimate_chat_tokens
from manifold.responses.compaction import CompactionSeal
from manifold.responses.events import ResponseBuilder, completion_chunks, replay
from manifold.responses.jobs import Job
from manifold.responses.objects import skeleton
from manifold.responses.translate import context_after_compaction, items_to_messages, to_chat_body
from tests.conformance.schema import assert_valid, assert_valid_stream_event


def no_expand(content: str, param: str) -> str:
    return f"<{content}>"


def request(**kw: Any) -> CreateResponseRequest:
    return msgspec.convert({"model": "m", "input": "x", **kw}, CreateResponseRequest)


# -- input items ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "param", "error"),
    [
        ([{"role": "wizard", "content": "x"}], "input[0].role", InvalidRequestError),
        ([{"role": "user"}], "input[0].content", InvalidRequestError),
        ([{"role": "user", "content": [{"type": "input_text"}]}], "input[0].content[0].text", InvalidRequestError),
        ([{"role": "user", "content": [{"type": "video"}]}], "input[0].content[0].type", InvalidRequestError),
        ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id", InvalidRequestError),
        ([{"type": "function_call_output", "call_id": "", "output": "x"}], "input[0].call_id", InvalidRequestError),
        (["text"], "input[0]", InvalidRequestError),
        ([{"content": "x"}], "input[0].type", InvalidRequestError),
        ([{"type": "item_reference", "id": "msg_1"}], "input[0].type", UnsupportedError),
        ([{"type": "web_search_call", "id": "ws_1"}], "input[0].type", UnsupportedError),
    ],
)
def test_bad_input_items_name_their_place(raw: Any, param: str, error: type[Exception]) -> None:
    with pytest.raises(error) as err:
        input_items(raw)
    assert err.value.param == param  # type: ignore[attr-defined]


def test_input_items_are_normalized_as_listed() -> None:
    items = input_items(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "output_text", "text": "yo"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_image", "image_url": "http://i"}]},
            {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c", "output": "1", "id": "fco_given"},
        ]
    )
    prefixes = ["msg_", "msg_", "msg_", "fc_", "fco_given"]
    assert all(item["id"].startswith(prefix) for item, prefix in zip(items, prefixes, strict=True))
    assert items[0]["content"] == [{"type": "input_text", "text": "hi"}] and items[0]["status"] == "completed"
    assert items[1]["content"] == [{"type": "output_text", "text": "yo", "annotations": [], "logprobs": []}]
    assert items[2]["content"] == [{"type": "input_image", "detail": "auto", "image_url": "http://i"}]
    assert items[3]["status"] == "completed" and items[4]["id"] == "fco_given"
    for item in items:
        assert_valid("ItemResource", item)


def test_only_function_tools() -> None:
    assert function_tools([{"type": "function", "name": "f"}])[0].name == "f"
    with pytest.raises(UnsupportedError) as err:
        function_tools([{"type": "function", "name": "f"}, {"type": "file_search"}])
    assert err.value.param == "tools[1].type"
    with pytest.raises(InvalidRequestError) as bad:
        function_tools([{"type": "function", "name": "bad name!"}])
    assert bad.value.param == "tools[0].name"


# -- translation ----------------------------------------------------------------------------------------------------


def test_items_become_chat_messages() -> None:
    items = input_items(
        [
            {"role": "developer", "content": "rules"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "let me check"},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "[]"},
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "function_call_output", "call_id": "c1", "output": "1"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "2"}]},
            {"type": "compaction", "encrypted_content": "sealed"},
        ]
    )
    before = copy.deepcopy(items)
    assert items_to_messages(items, no_expand) == [
        {"role": "developer", "content": "rules"},
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "let me check",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "[]"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "1"},
        {"role": "tool", "tool_call_id": "c2", "content": "2"},
        {"role": "system", "content": "Summary of the earlier part of this conversation (compacted):\n<sealed>"},
    ]
    assert items == before  # pure


def test_images_outside_user_messages_are_refused() -> None:
    items = input_items([{"role": "system", "content": [{"type": "input_image", "image_url": "http://i"}]}])
    with pytest.raises(UnsupportedError) as err:
        items_to_messages(items, no_expand)
    assert err.value.param == "input[0].content"
    by_file = input_items([{"role": "user", "content": [{"type": "input_image", "file_id": "file_1"}]}])
    with pytest.raises(UnsupportedError) as err:
        items_to_messages(by_file, no_expand)
    assert err.value.param == "input[0].content[0].file_id"


def test_a_compaction_item_replaces_what_came_before_but_user_messages() -> None:
    items = input_items(
        [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "b"},
            {"type": "compaction", "encrypted_content": "s"},
            {"role": "assistant", "content": "c"},
        ]
    )
    kept = context_after_compaction(items)
    assert [(i["type"], i.get("role")) for i in kept] == [
        ("message", "user"),
        ("compaction", None),
        ("message", "assistant"),
    ]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"text": {"format": {"type": "text"}}}, {}),
        ({"text": {"format": {"type": "json_object"}}}, {"response_format": {"type": "json_object"}}),
        (
            {"text": {"format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}, "strict": True}}},
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "s", "schema": {"type": "object"}, "strict": True},
                }
            },
        ),
        ({"text": {"verbosity": "low"}}, {"verbosity": "low"}),
        ({"max_output_tokens": 100, "top_p": 0.5}, {"max_completion_tokens": 100, "top_p": 0.5}),
        ({"reasoning": {"effort": "high", "summary": "auto"}}, {"reasoning_effort": "high"}),
        ({"tool_choice": "required"}, {"tool_choice": "required"}),
        (
            {"tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "f"}},
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}},
            },
        ),
        (
            {
                "tools": [{"type": "function", "name": "f", "strict": True, "parameters": {"type": "object"}}],
                "parallel_tool_calls": False,
                "tool_choice": {"type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "f"}]},
            },
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}, "strict": True}}
                ],
                "parallel_tool_calls": False,
                "tool_choice": {
                    "type": "allowed_tools",
                    "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "f"}}]},
                },
            },
        ),
        ({"parallel_tool_calls": False}, {}),  # without tools a chat backend would refuse it
        ({"metadata": {"k": "v"}, "store": True, "background": False}, {}),
    ],
)
def test_options_map_to_chat(options: dict[str, Any], expected: dict[str, Any]) -> None:
    req = request(**options)
    messages = [{"role": "user", "content": "x"}]
    body = to_chat_body(req, messages, function_tools(req.tools), stream=False)
    assert body == {"model": "m", "messages": messages, **expected}
    streamed = to_chat_body(req, messages, function_tools(req.tools), stream=True)
    assert streamed["stream"] is True and streamed["stream_options"] == {"include_usage": True}


# -- the event builder ----------------------------------------------------------------------------------------------


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def run(chunks: list[dict[str, Any]], **request_options: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    req = request(**request_options)
    builder = ResponseBuilder(skeleton(req, function_tools(req.tools), "in_progress"))
    events = [builder.lifecycle("response.created"), builder.lifecycle("response.in_progress")]
    for c in chunks:
        events += builder.feed(c)
    events += builder.finish()
    for event in events:
        assert_valid_stream_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert_valid("Response", builder.response)
    return events, builder.response


USAGE = {"choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}


def test_text_then_tool_call_closes_the_message_first() -> None:
    events, response = run(
        [
            chunk({"role": "assistant", "content": "Let me look."}),
            chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f"}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a":'}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": " 1}"}}]}),
            chunk({}, "tool_calls"),
            USAGE,
        ],
        tools=[{"type": "function", "name": "f"}],
    )
    assert [e["type"] for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [i["type"] for i in response["output"]] == ["message", "function_call"]
    assert response["output"][1]["arguments"] == '{"a": 1}' and response["output"][1]["call_id"] == "call_1"
    assert response["usage"]["total_tokens"] == 8 and response["status"] == "completed"
    assert response["completed_at"] is not None


def test_refusal_and_a_cut_answer() -> None:
    events, response = run([chunk({"refusal": "No."}), chunk({"content": "But"}), chunk({}, "length")])
    message = response["output"][0]
    assert message["status"] == "incomplete" and [p["type"] for p in message["content"]] == ["refusal", "output_text"]
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-1]["type"] == "response.incomplete" and "usage" not in response


def test_a_failure_is_response_failed() -> None:
    req = request()
    builder = ResponseBuilder(skeleton(req, [], "in_progress"))
    builder.feed(chunk({"content": "partial"}))
    (event,) = builder.fail("server_error", "upstream went away")
    assert_valid_stream_event(event)
    assert event["response"]["error"] == {"code": "server_error", "message": "upstream went away"}


def test_a_completion_replays_as_the_stream_would_build_it() -> None:
    completion = {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
    _, response = run(list(completion_chunks(completion)), tools=[{"type": "function", "name": "f"}])
    assert response["output"][0]["name"] == "f" and response["usage"]["total_tokens"] == 2


def test_replay_of_a_stored_response() -> None:
    _, response = run([chunk({"content": "Hello"}), chunk({"refusal": "no"}), chunk({}, "stop"), USAGE])
    events = replay(response)
    for event in events:
        assert_valid_stream_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[-1]["response"] == response and events[0]["response"]["output"] == []


# -- compaction seals, token estimates, event buffers ---------------------------------------------------------------


def test_compaction_seal() -> None:
    seal = CompactionSeal("secret")
    sealed = seal.seal("the summary", "m")
    assert "summary" not in sealed and sealed.startswith("mfc1.")
    assert CompactionSeal("secret").open(sealed, "input[0].encrypted_content") == "the summary"
    for bad in (sealed[:-3] + "AAA", "plain text", "mfc1.!!!"):
        with pytest.raises(InvalidRequestError) as err:
            seal.open(bad, "input[3].encrypted_content")
        assert err.value.param == "input[3].encrypted_content"
    with pytest.raises(InvalidRequestError) as err:
        CompactionSeal("another").open(sealed, "p")
    with pytest.raises(InvalidRequestError) as ephemeral:
        CompactionSeal(None).open(sealed, "p")
    assert "compaction_key" in ephemeral.value.message


def test_token_estimate_grows_with_text() -> None:
    small = estimate_chat_tokens({"messages": [{"role": "user", "content": "Tell me a joke."}]})
    large = estimate_chat_tokens({"messages": [{"role": "user", "content": "Tell me a joke. " * 10}]})
    assert 6 < small < large
    tools = estimate_chat_tokens(
        {"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"name": "f"}}]}
    )
    assert tools > estimate_chat_tokens({"messages": [{"role": "user", "content": "x"}]})


async def test_job_followers_see_every_event_and_resume_within_the_bound() -> None:
    job = Job("resp_1", max_events=16)
    seen: list[int] = []

    async def follow() -> None:
        async for event in job.follow(-1):
            seen.append(event["sequence_number"])

    reader = asyncio.get_running_loop().create_task(follow())
    for i in range(10):
        job.extend([{"sequence_number": i}])
        await asyncio.sleep(0)
    job.extend([{"sequence_number": i} for i in range(10, 40)])
    job.close()
    await reader
    assert seen[:10] == list(range(10)) and seen[-1] == 39
    assert job.first == 24
    job.check_resumable(23)
    with pytest.raises(InvalidRequestError) as err:
        job.check_resumable(10)
    assert err.value.param == "starting_after"
    assert [e["sequence_number"] async for e in job.follow(30)] == list(range(31, 40))


# -- the SSE edge -----------------------------------------------------------------------------------------------------


async def _relay(events: Any, keepalive: float = 10.0) -> tuple[list[Any], bytes]:
    from manifold.server.asgi import Request
    from manifold.server.sse_writer import stream_events

    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/responses", "headers": []}
    await stream_events(Request(scope, receive, send), events, keepalive)
    return sent, b"".join(m.get("body", b"") for m in sent[1:])


async def test_events_are_framed_with_their_type_and_no_done() -> None:
    async def events() -> Any:
        yield {"type": "response.created", "sequence_number": 0}
        await asyncio.sleep(0.05)  # past the keep-alive interval: a comment goes out meanwhile
        yield {"type": "response.completed", "sequence_number": 1}

    sent, body = await _relay(events(), keepalive=0.01)
    assert sent[0]["status"] == 200
    frames = [f for f in body.decode().split("\n\n") if f]
    assert frames[0] == 'event: response.created\ndata: {"type":"response.created","sequence_number":0}'
    assert ": keep-alive" in frames[1:-1]
    assert frames[-1].startswith("event: response.completed\n") and "[DONE]" not in body.decode()


class _Ready:
    """Events that are all there already, saying so (`buffered()`), as a response built from one upstream read."""

    def __init__(self, events: list[dict[str, Any]], fail: Exception | None = None) -> None:
        self.events = list(events)
        self.fail = fail

    def __aiter__(self) -> _Ready:
        return self

    def buffered(self) -> bool:
        return True

    async def __anext__(self) -> dict[str, Any]:
        if self.events:
            return self.events.pop(0)
        if self.fail is not None:
            raise self.fail
        raise StopAsyncIteration


async def test_events_that_are_ready_together_go_out_in_one_write() -> None:
    from manifold.server.sse_writer import event_frame

    events = [{"type": f"response.e{i}", "sequence_number": i} for i in range(5)]
    sent, body = await _relay(_Ready(copy.deepcopy(events)))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert body == b"".join(event_frame(e) for e in events)


async def test_ready_events_before_a_failure_go_out_before_its_error_event() -> None:
    from manifold.errors import ServiceUnavailableError

    events = [{"type": "response.created", "sequence_number": 0}, {"type": "response.x", "sequence_number": 1}]
    _, body = await _relay(_Ready(events, ServiceUnavailableError("storage down", code="storage_unavailable")))
    frames = body.decode().strip().split("\n\n")
    assert [f.split("\n")[0] for f in frames] == ["event: response.created", "event: response.x", "event: error"]
    assert msgspec.json.decode(frames[-1].split("data: ", 1)[1])["sequence_number"] == 2


class _Chunks:
    """Upstream chunks: the first `arrived` are there at once (`buffered()`), the rest only once `gate` is set."""

    def __init__(self, chunks: list[dict[str, Any]], arrived: int) -> None:
        self.chunks = chunks
        self.arrived = arrived
        self.gate = asyncio.Event()
        self.closed = False

    def __aiter__(self) -> _Chunks:
        return self

    def buffered(self) -> bool:
        return self.arrived > 0

    async def __anext__(self) -> dict[str, Any]:
        if self.arrived <= 0:
            await self.gate.wait()
        self.arrived -= 1
        if not self.chunks:
            raise StopAsyncIteration
        return self.chunks.pop(0)

    async def aclose(self) -> None:
        self.closed = True


def _delta(**delta: Any) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}


async def test_a_streamed_response_holds_no_frame_while_it_waits_for_the_upstream() -> None:
    """The role chunk (no event) has arrived with nothing after it: `response.created` and
    `response.in_progress` must go out before the first token, not with it."""
    from manifold.responses.engine import _ResponseEvents

    chunks = _Chunks([_delta(role="assistant"), _delta(content="Hi"), _delta(content=" there")], arrived=1)
    saved: list[str] = []
    builder = ResponseBuilder(skeleton(request(), [], "in_progress"))

    async def save() -> None:
        saved.append(builder.response["status"])

    relay = asyncio.ensure_future(_relay(_ResponseEvents(builder, None, chunks, save)))
    for _ in range(50):
        await asyncio.sleep(0)
    assert not relay.done() and not saved
    chunks.gate.set()
    sent, body = await relay
    frames = [f for f in body.decode().split("\n\n") if f]
    kinds = [f.split("\n")[0].removeprefix("event: ") for f in frames]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    # The first write (before the gate opened) held exactly the two lifecycle events.
    assert sent[1]["body"].decode().count("event: ") == 2 and sent[1]["more_body"]
    assert saved == ["completed"] and chunks.closed
    decoded = [msgspec.json.decode(f.split("data: ", 1)[1]) for f in frames]
    assert [e["sequence_number"] for e in decoded] == list(range(10))
    for event in decoded:
        assert_valid_stream_event(event)
    assert decoded[-1]["response"]["output"][0]["content"][0]["text"] == "Hi there"


async def test_an_unstored_response_whose_chunks_have_all_arrived_is_one_write() -> None:
    from manifold.responses.engine import _ResponseEvents

    chunks = _Chunks([_delta(role="assistant"), _delta(content="Hi"), _delta(content=" there")], arrived=4)
    builder = ResponseBuilder(skeleton(request(store=False), [], "in_progress"))
    sent, body = await _relay(_ResponseEvents(builder, None, chunks, None))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert not sent[1]["more_body"] and body.decode().count("event: ") == 10 and chunks.closed


async def test_a_streamed_response_is_stored_before_its_terminal_event_is_released() -> None:
    from manifold.responses.engine import _ResponseEvents

    chunks = _Chunks([_delta(content="Hi")], arrived=5)
    builder = ResponseBuilder(skeleton(request(), [], "in_progress"))
    taken: list[str] = []
    gate = asyncio.Event()

    async def save() -> None:
        await gate.wait()

    events = _ResponseEvents(builder, None, chunks, save)

    async def take() -> None:
        async for event in events:
            taken.append(event["type"])

    task = asyncio.ensure_future(take())
    for _ in range(50):
        await asyncio.sleep(0)
    assert taken[-1] == "response.output_item.done" and not events.buffered()
    gate.set()
    await task
    assert taken[-1] == "response.completed"


async def test_events_are_awaited_in_the_relays_own_task_with_keepalives_from_a_timer() -> None:
    """No task per awaited event (each costs turns of a busy event loop); the keep-alive still goes out."""
    tasks: list[asyncio.Task[Any] | None] = []

    async def events() -> Any:
        tasks.append(asyncio.current_task())
        await asyncio.sleep(0.05)
        yield {"type": "response.created", "sequence_number": 0}
        tasks.append(asyncio.current_task())
        yield {"type": "response.completed", "sequence_number": 1}

    relay = asyncio.ensure_future(_relay(events(), keepalive=0.01))
    _, body = await relay
    assert tasks == [relay, relay]
    frames = [f for f in body.decode().split("\n\n") if f]
    assert frames[0] == ": keep-alive" and frames[-2].startswith("event: response.created\n")
    assert frames[-1].startswith("event: response.completed\n")


async def test_a_failure_after_the_first_event_is_one_error_event() -> None:
    from manifold.errors import ServiceUnavailableError

    async def events() -> Any:
        yield {"type": "response.created", "sequence_number": 0}
        raise ServiceUnavailableError("storage down", code="storage_unavailable")

    _, body = await _relay(events())
    last = body.decode().strip().split("\n\n")[-1]
    assert last.startswith("event: error\ndata: ")
    error = msgspec.json.decode(last.split("data: ", 1)[1])
    assert error == {
        "type": "error",
        "code": "storage_unavailable",
        "message": "storage down",
        "param": None,
        "sequence_number": 1,
    }
    assert_valid_stream_event(error)


async def test_a_failure_before_the_first_event_keeps_its_status() -> None:
    async def events() -> Any:
        raise InvalidRequestError("bad", param="input")
        yield {}

    with pytest.raises(InvalidRequestError):
        await _relay(events())


# -- configuration ----------------------------------------------------------------------------------------------------


def test_responses_settings() -> None:
    from manifold.errors import ConfigError
    from manifold.validation import parse_config

    config = parse_config({"responses": {"compaction_key": "${KEY}"}}, environ={"KEY": "s3cret"})
    assert config.responses.compaction_key == "s3cret" and config.responses.background_lease_s == 15.0
    with pytest.raises(ConfigError) as err:
        parse_config({"responses": {"compaction_keys": "x", "stream_buffer_events": 1}})
    assert err.value.problems == [
        "responses.compaction_keys: unknown key",
        "responses.stream_buffer_events: Expected `int` >= 16",
    ]
