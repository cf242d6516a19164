"""normalize_completion and ChunkShaper: what reaches the client matches OpenAI's schema and the SDK's
accumulation rules (role and tool-call id/type/name exactly once)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from manifold.api.chat_response import ChunkShaper, normalize_completion

PUBLIC = "my-model"


def completion(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": "chatcmpl-up",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "upstream/llama-3-8b",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!"},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    obj.update(overrides)
    return obj


# -- normalize_completion ---------------------------------------------------------------------------------------


def test_normalize_adds_refusal_and_sets_public_model() -> None:
    out = normalize_completion(completion(), PUBLIC)
    assert out["model"] == PUBLIC
    assert out["object"] == "chat.completion"
    assert out["id"] == "chatcmpl-up"
    assert out["created"] == 1700000000
    message = out["choices"][0]["message"]
    assert message == {"role": "assistant", "content": "Hello!", "refusal": None}
    assert "refusal" in message and message["refusal"] is None


def test_normalize_works_in_place() -> None:
    obj = completion()
    assert normalize_completion(obj, PUBLIC) is obj


def test_normalize_drops_null_system_fingerprint_keeps_real_one() -> None:
    assert "system_fingerprint" not in normalize_completion(completion(system_fingerprint=None), PUBLIC)
    assert "system_fingerprint" not in normalize_completion(
        {k: v for k, v in completion().items() if k != "system_fingerprint"}, PUBLIC
    )
    assert normalize_completion(completion(system_fingerprint="fp_1"), PUBLIC)["system_fingerprint"] == "fp_1"


def test_normalize_drops_null_usage_details() -> None:
    usage = {
        "prompt_tokens": 5,
        "completion_tokens": 2,
        "total_tokens": 7,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    out = normalize_completion(completion(usage=usage), PUBLIC)
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_normalize_keeps_real_usage_details_and_fills_counts() -> None:
    usage = {
        "prompt_tokens": 5.0,
        "completion_tokens": None,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    out = normalize_completion(completion(usage=usage), PUBLIC)
    assert out["usage"] == {
        "prompt_tokens": 5,
        "completion_tokens": 0,
        "total_tokens": 0,
        "prompt_tokens_details": {"cached_tokens": 3},
        "completion_tokens_details": {"reasoning_tokens": 1},
    }
    assert isinstance(out["usage"]["prompt_tokens"], int)


def test_normalize_drops_null_usage() -> None:
    assert "usage" not in normalize_completion(completion(usage=None), PUBLIC)


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("content_filter", "content_filter"),
        ("function_call", "function_call"),
        ("eos", "stop"),
        ("eos_token", "stop"),
        ("stop_sequence", "stop"),
        ("end_turn", "stop"),
        ("max_tokens", "length"),
        ("max_length", "length"),
        (None, "stop"),
        ("", "stop"),
    ],
)
def test_normalize_maps_finish_reason(upstream: Any, expected: str) -> None:
    obj = completion()
    obj["choices"][0]["finish_reason"] = upstream
    assert normalize_completion(obj, PUBLIC)["choices"][0]["finish_reason"] == expected


def test_normalize_keeps_unknown_extra_fields() -> None:
    obj = completion(prompt_logprobs=None, kv_transfer_params={"a": 1}, timings={"predicted_ms": 12.5})
    obj["choices"][0]["stop_reason"] = 128009
    obj["choices"][0]["message"]["reasoning_content"] = "thinking"
    out = normalize_completion(obj, PUBLIC)
    assert out["prompt_logprobs"] is None
    assert out["kv_transfer_params"] == {"a": 1}
    assert out["timings"] == {"predicted_ms": 12.5}
    assert out["choices"][0]["stop_reason"] == 128009
    assert out["choices"][0]["message"]["reasoning_content"] == "thinking"


def test_normalize_message_fields() -> None:
    obj = completion()
    obj["choices"][0]["message"] = {
        "role": "ASSISTANT",
        "tool_calls": [{"id": "call_1", "function": {"name": "f", "arguments": "{}"}}],
        "function_call": None,
        "audio": None,
        "annotations": None,
    }
    obj["choices"][0]["finish_reason"] = "tool_calls"
    message = normalize_completion(obj, PUBLIC)["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }


def test_normalize_drops_empty_tool_calls_and_fills_missing_parts() -> None:
    obj = {"choices": [{"message": {"content": "x", "tool_calls": []}}, {"message": {}}]}
    out = normalize_completion(obj, PUBLIC)
    assert out["id"].startswith("chatcmpl-")
    assert isinstance(out["created"], int)
    assert [c["index"] for c in out["choices"]] == [0, 1]
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "x", "refusal": None}
    assert out["choices"][1]["message"] == {"role": "assistant", "content": None, "refusal": None}
    assert out["choices"][1]["finish_reason"] == "stop"
    assert out["choices"][1]["logprobs"] is None


def test_normalize_logprobs_gets_both_keys() -> None:
    obj = completion()
    obj["choices"][0]["logprobs"] = {
        "content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": []}]
    }
    lp = normalize_completion(obj, PUBLIC)["choices"][0]["logprobs"]
    assert lp["refusal"] is None
    assert lp["content"][0]["token"] == "Hi"


def test_normalized_completion_parses_with_the_sdk() -> None:
    from openai.types.chat import ChatCompletion

    obj = completion(
        usage={"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, "prompt_tokens_details": None}
    )
    out = normalize_completion(obj, PUBLIC)
    parsed = ChatCompletion.model_validate(out)
    assert parsed.model == PUBLIC
    assert parsed.choices[0].message.content == "Hello!"
    assert parsed.choices[0].message.refusal is None


# -- ChunkShaper ------------------------------------------------------------------------------------------------


def chunk(*choices: dict[str, Any], usage: Any = "absent", **extra: Any) -> dict[str, Any]:
    c: dict[str, Any] = {
        "id": "chatcmpl-up",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "upstream/llama",
        "system_fingerprint": None,
        "choices": list(choices),
    }
    if usage != "absent":
        c["usage"] = usage
    c.update(extra)
    return c


def choice(index: int = 0, finish_reason: Any = None, **delta: Any) -> dict[str, Any]:
    return {"index": index, "delta": delta, "finish_reason": finish_reason, "logprobs": None}


def tool_delta(
    index: int, arguments: str | None, *, id: str | None = None, name: str | None = None, type: str | None = None
) -> dict[str, Any]:
    tc: dict[str, Any] = {"index": index}
    if id is not None:
        tc["id"] = id
    if type is not None:
        tc["type"] = type
    fn: dict[str, Any] = {}
    if name is not None:
        fn["name"] = name
    if arguments is not None:
        fn["arguments"] = arguments
    tc["function"] = fn
    return tc


USAGE = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def upstream_tool_stream(with_role: bool = True) -> list[dict[str, Any]]:
    """A chatty upstream: role in every delta, id/type/name repeated in every tool-call delta, usage at the end."""
    role = {"role": "assistant"} if with_role else {}
    full = {"id": "call_1", "type": "function", "name": "get_weather"}
    return [
        chunk(choice(content="", **role)),
        chunk(choice(content="Let me ", **role)),
        chunk(choice(content="check.", **role)),
        chunk(choice(tool_calls=[tool_delta(0, "", **full)], **role)),
        chunk(choice(tool_calls=[tool_delta(0, '{"city": ', **full)], **role)),
        chunk(choice(tool_calls=[tool_delta(0, '"Paris"}', **full)], **role)),
        chunk(choice(tool_calls=[tool_delta(1, "{}", id="call_2", type="function", name="get_time")], **role)),
        chunk(choice(tool_calls=[tool_delta(1, None, id="call_2", type="function", name="get_time")], **role)),
        chunk(choice(finish_reason="tool_calls", **role)),
        chunk(usage=USAGE),
    ]


def shape_all(shaper: ChunkShaper, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = [s for c in chunks if (s := shaper.shape(c)) is not None]
    final = shaper.usage_chunk()
    if final is not None:
        out.append(final)
    return out


def deltas(shaped: list[dict[str, Any]], index: int = 0) -> list[dict[str, Any]]:
    return [c["delta"] for s in shaped for c in s["choices"] if c["index"] == index]


def test_chunk_envelope_fields() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    first = shaper.shape(chunk(choice(content="a"), id="chatcmpl-up", created=1234))
    second = shaper.shape(chunk(choice(content="b"), id="other-id", created=9999, system_fingerprint="fp_x"))
    assert first is not None and second is not None
    for c in (first, second):
        assert c["id"] == "chatcmpl-up"  # one id for the whole stream
        assert c["created"] == 1234
        assert c["model"] == PUBLIC
        assert c["object"] == "chat.completion.chunk"
    assert "system_fingerprint" not in first
    assert second["system_fingerprint"] == "fp_x"


def test_chunk_without_id_gets_a_generated_one() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    first = shaper.shape({"choices": [choice(content="a")]})
    assert first is not None
    assert first["id"].startswith("chatcmpl-")
    assert isinstance(first["created"], int)


@pytest.mark.parametrize("with_role", [True, False], ids=["upstream-repeats-role", "upstream-never-sends-role"])
def test_role_only_in_first_chunk_per_choice(with_role: bool) -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    shaped = shape_all(shaper, upstream_tool_stream(with_role))
    ds = deltas(shaped)
    assert ds[0]["role"] == "assistant"
    assert all("role" not in d for d in ds[1:])


def test_role_per_choice_with_several_choices() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    upstream = [
        chunk(choice(0, role="assistant", content="a"), choice(1, role="assistant", content="x")),
        chunk(choice(0, role="assistant", content="b")),
        chunk(choice(1, content="y")),
        chunk(choice(2, content="new")),
        chunk(choice(2, role="assistant", content="er")),
    ]
    shaped = shape_all(shaper, upstream)
    for index, expected in [(0, ["assistant", None]), (1, ["assistant", None]), (2, ["assistant", None])]:
        assert [d.get("role") for d in deltas(shaped, index)] == expected


def test_role_is_forced_to_assistant() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    shaped = shaper.shape(chunk(choice(role="model", content="a")))
    assert shaped is not None
    assert shaped["choices"][0]["delta"]["role"] == "assistant"


def test_tool_call_identity_only_in_first_delta() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    shaped = shape_all(shaper, upstream_tool_stream())
    tool_deltas = [tc for d in deltas(shaped) for tc in d.get("tool_calls", [])]
    first_0, *rest_0 = [tc for tc in tool_deltas if tc["index"] == 0]
    first_1, *rest_1 = [tc for tc in tool_deltas if tc["index"] == 1]
    assert first_0 == {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert rest_0 == [
        {"index": 0, "function": {"arguments": '{"city": '}},
        {"index": 0, "function": {"arguments": '"Paris"}'}},
    ]
    assert first_1 == {
        "index": 1,
        "id": "call_2",
        "type": "function",
        "function": {"name": "get_time", "arguments": "{}"},
    }
    # a later delta repeating only the identity keeps index and gets empty arguments
    assert rest_1 == [{"index": 1, "function": {"arguments": ""}}]


def test_tool_call_type_added_to_first_delta_when_missing() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    shaped = shaper.shape(chunk(choice(tool_calls=[tool_delta(0, "{", id="call_9", name="f")])))
    assert shaped is not None
    assert shaped["choices"][0]["delta"]["tool_calls"][0]["type"] == "function"


def test_tool_call_index_added_from_position() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    tcs = [
        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    shaped = shaper.shape(chunk(choice(tool_calls=tcs)))
    assert shaped is not None
    assert [tc["index"] for tc in shaped["choices"][0]["delta"]["tool_calls"]] == [0, 1]


def test_tool_calls_tracked_per_choice() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    shaped = shape_all(
        shaper,
        [
            chunk(choice(0, tool_calls=[tool_delta(0, "", id="call_a", type="function", name="f")])),
            chunk(choice(1, tool_calls=[tool_delta(0, "", id="call_b", type="function", name="f")])),
            chunk(choice(1, tool_calls=[tool_delta(0, "{}", id="call_b", type="function", name="f")])),
        ],
    )
    assert deltas(shaped, 1)[0]["tool_calls"][0]["id"] == "call_b"
    assert deltas(shaped, 1)[1]["tool_calls"][0] == {"index": 0, "function": {"arguments": "{}"}}


def test_empty_tool_calls_list_removed() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    shaped = shaper.shape(chunk(choice(content="a", tool_calls=[])))
    assert shaped is not None
    assert "tool_calls" not in shaped["choices"][0]["delta"]


@pytest.mark.parametrize(
    ("upstream", "expected"),
    [(None, None), ("stop", "stop"), ("eos", "stop"), ("max_tokens", "length"), ("tool_calls", "tool_calls")],
)
def test_chunk_finish_reason(upstream: Any, expected: Any) -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    shaped = shaper.shape(chunk(choice(content="a", finish_reason=upstream)))
    assert shaped is not None
    assert shaped["choices"][0]["finish_reason"] == expected


def test_usage_withheld_and_emitted_last_when_include_usage() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=True)
    shaped = shape_all(shaper, upstream_tool_stream())
    *body, last = shaped
    # every content chunk says `usage: null`
    assert all("usage" in c and c["usage"] is None for c in body)
    assert all(c["choices"] for c in body)
    # the upstream's usage-only chunk was not forwarded; usage_chunk() carries it, with no choices
    assert last["choices"] == []
    assert last["usage"] == USAGE
    assert last["id"] == body[0]["id"]
    assert last["model"] == PUBLIC
    assert last["object"] == "chat.completion.chunk"
    assert last["created"] == body[0]["created"]


def test_usage_in_the_final_content_chunk_is_moved_out() -> None:
    # llama.cpp style: usage rides on the chunk with finish_reason
    shaper = ChunkShaper(PUBLIC, include_usage=True)
    shaped = shaper.shape(chunk(choice(finish_reason="stop"), usage=USAGE))
    assert shaped is not None
    assert shaped["usage"] is None
    final = shaper.usage_chunk()
    assert final is not None
    assert final["usage"] == USAGE


def test_usage_chunk_drops_null_details() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=True)
    shaper.shape(chunk(choice(content="a")))
    assert (
        shaper.shape(chunk(usage={**USAGE, "prompt_tokens_details": None, "completion_tokens_details": None})) is None
    )
    final = shaper.usage_chunk()
    assert final is not None
    assert final["usage"] == USAGE


def test_no_usage_without_include_usage() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    shaped = shape_all(shaper, upstream_tool_stream())
    assert all("usage" not in c for c in shaped)
    assert all(c["choices"] for c in shaped)
    assert shaper.usage_chunk() is None


def test_no_usage_chunk_when_upstream_never_reported_usage() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=True)
    assert shaper.shape(chunk(choice(content="a"))) is not None
    assert shaper.usage_chunk() is None


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize(
    "upstream",
    [
        pytest.param(chunk(usage=USAGE), id="usage-only"),
        pytest.param(chunk(usage=USAGE, system_fingerprint="fp_1"), id="usage-only-with-fingerprint"),
        pytest.param({"choices": [], "usage": USAGE}, id="bare-usage-only"),
        pytest.param(chunk(), id="empty-choices"),
        pytest.param(chunk(usage=None), id="empty-choices-null-usage"),
        pytest.param({"id": "x", "choices": [], "usage": None}, id="bare-empty-choices-null-usage"),
    ],
)
def test_chunks_without_choices_are_dropped(upstream: dict[str, Any], include_usage: bool) -> None:
    # An empty-choices chunk is, for a client, the usage chunk: mid-stream it must never be forwarded.
    shaper = ChunkShaper(PUBLIC, include_usage=include_usage)
    assert shaper.shape(chunk(choice(content="a"))) is not None
    assert shaper.shape(upstream) is None


def test_logprobs_in_chunks_get_both_keys() -> None:
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    c = chunk(choice(content="a"))
    c["choices"][0]["logprobs"] = {"content": [{"token": "a", "logprob": -1.0, "bytes": [97], "top_logprobs": []}]}
    shaped = shaper.shape(c)
    assert shaped is not None
    assert shaped["choices"][0]["logprobs"]["refusal"] is None


# -- accumulation as the SDK does it ----------------------------------------------------------------------------


def accumulate(acc: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """The rule of the SDK's `accumulate_delta`: strings concatenated, numbers added, except `index` and `type`;
    dicts merged; lists of indexed dicts merged by `index`."""
    for key, value in delta.items():
        if key not in acc or acc[key] is None:
            acc[key] = copy.deepcopy(value)
            continue
        if key in ("index", "type"):
            acc[key] = value
        elif (isinstance(acc[key], str) and isinstance(value, str)) or (
            isinstance(acc[key], int | float) and isinstance(value, int | float)
        ):
            acc[key] += value
        elif isinstance(acc[key], dict) and isinstance(value, dict):
            accumulate(acc[key], value)
        elif isinstance(acc[key], list) and isinstance(value, list):
            for entry in value:
                index = entry["index"]
                if index < len(acc[key]):
                    accumulate(acc[key][index], entry)
                else:
                    acc[key].insert(index, copy.deepcopy(entry))
    return acc


def replay(shaped: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    messages: dict[int, dict[str, Any]] = {}
    for c in shaped:
        for ch in c["choices"]:
            accumulate(messages.setdefault(ch["index"], {}), ch["delta"])
    return messages


def test_unshaped_stream_breaks_accumulation() -> None:
    # The control: without shaping, the SDK rule doubles the repeated strings (what ChunkShaper prevents).
    message = replay([copy.deepcopy(c) for c in upstream_tool_stream()])[0]
    assert message["role"] != "assistant"
    assert message["tool_calls"][0]["id"] == "call_1" * 3


@pytest.mark.parametrize("with_role", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
def test_shaped_stream_accumulates_correctly(with_role: bool, include_usage: bool) -> None:
    shaped = shape_all(ChunkShaper(PUBLIC, include_usage=include_usage), upstream_tool_stream(with_role))
    message = replay(shaped)[0]
    assert message["role"] == "assistant"
    assert message["content"] == "Let me check."
    assert message["tool_calls"] == [
        {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"index": 1, "id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    assert json.loads(message["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}


@pytest.mark.parametrize("with_role", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
def test_shaped_stream_through_the_sdk_stream_state(with_role: bool, include_usage: bool) -> None:
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    shaped = shape_all(ChunkShaper(PUBLIC, include_usage=include_usage), upstream_tool_stream(with_role))
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for c in shaped:
        # round-trip through JSON, as the bytes on the wire
        list(state.handle_chunk(ChatCompletionChunk.model_validate(json.loads(json.dumps(c)))))
    final = state.get_final_completion()
    assert final.model == PUBLIC
    assert len(final.choices) == 1
    message = final.choices[0].message
    assert message.role == "assistant"
    assert message.content == "Let me check."
    assert final.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    assert [tc.id for tc in message.tool_calls] == ["call_1", "call_2"]
    assert [tc.function.name for tc in message.tool_calls] == ["get_weather", "get_time"]
    assert [tc.function.arguments for tc in message.tool_calls] == ['{"city": "Paris"}', "{}"]
    if include_usage:
        assert final.usage is not None
        assert (final.usage.prompt_tokens, final.usage.completion_tokens, final.usage.total_tokens) == (10, 5, 15)
    else:
        assert final.usage is None


def test_sdk_stream_state_with_two_choices() -> None:
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    upstream = [
        chunk(choice(0, role="assistant", content="Hel"), choice(1, role="assistant", content="Bon")),
        chunk(choice(0, role="assistant", content="lo"), choice(1, role="assistant", content="jour")),
        chunk(choice(0, role="assistant", finish_reason="stop"), choice(1, role="assistant", finish_reason="eos")),
    ]
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for c in shape_all(ChunkShaper(PUBLIC, include_usage=False), upstream):
        list(state.handle_chunk(ChatCompletionChunk.model_validate(c)))
    final = state.get_final_completion()
    assert [ch.message.role for ch in final.choices] == ["assistant", "assistant"]
    assert [ch.message.content for ch in final.choices] == ["Hello", "Bonjour"]
    assert [ch.finish_reason for ch in final.choices] == ["stop", "stop"]


def test_azure_prompt_filter_first_chunk_does_not_set_created_to_zero() -> None:
    # Azure opens a stream with `{"id": "", "created": 0, "model": "", "object": "", "choices": [],
    # "prompt_filter_results": [...]}`; its placeholder `created: 0` must not become the stream's timestamp.
    shaper = ChunkShaper(PUBLIC, include_usage=False)
    azure_first = {
        "id": "",
        "object": "",
        "created": 0,
        "model": "",
        "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}],
    }
    shaper.shape(azure_first)
    shaped = shaper.shape(chunk(choice(content="Hi"), id="chatcmpl-azure", created=1700000000))
    assert shaped is not None
    assert shaped["id"]
    assert shaped["created"] > 0
