"""Output mappings: a handler's answer → the route's OpenAI object (filtered, required keys checked, strings and
typed objects converted), and a handler's stream ↔ chat chunks."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterable
from typing import Any

import msgspec
import pytest
from openai.types.chat import ChatCompletionMessage

from manifold.providers.python_handler import contracts, streams
from manifold.providers.python_handler.errors import HandlerContractError

WHAT = "POST /v1/chat/completions"


LEADING = {"id": None, "object": None, "created": None, "model": None}  # filled by the gateway's normalization


def test_a_string_is_a_whole_chat_answer() -> None:
    out = contracts.chat_completion("hi", WHAT)
    assert out == {
        **LEADING,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
    }
    assert list(out) == ["id", "object", "created", "model", "choices"]  # in the spec's order
    assert contracts.text_completion("hi", WHAT)["choices"][0]["text"] == "hi"


def test_unknown_keys_are_dropped_and_known_ones_kept() -> None:
    out = contracts.chat_completion(
        {
            "choices": [{"message": {"content": "x", "score": 1}, "finish_reason": "stop", "trace": 1}],
            "usage": {"prompt_tokens": 1},
            "service_tier": "default",
            "extra": True,
        },
        WHAT,
    )
    assert out == {
        **LEADING,
        "choices": [{"message": {"content": "x"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1},
        "service_tier": "default",
    }


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        ({"id": "x"}, "'choices'"),
        ({"choices": None}, "'choices'"),
        ({"choices": [{"finish_reason": "stop"}]}, "'choices[0].message'"),
    ],
)
def test_a_missing_required_field_is_named(answer: Any, field: str) -> None:
    with pytest.raises(HandlerContractError) as info:
        contracts.chat_completion(answer, WHAT)
    assert info.value.status_code == 500
    assert f"The handler's answer to {WHAT} lacks the required field {field}." == info.value.message


def test_not_an_object_is_named() -> None:
    with pytest.raises(HandlerContractError, match=r"is not an object at the answer \(got int\)"):
        contracts.chat_completion(42, WHAT)
    with pytest.raises(HandlerContractError, match="cannot be sent as JSON"):
        contracts.chat_completion({"choices": [object()]}, WHAT)


@dataclasses.dataclass
class Choice:
    message: dict[str, Any]
    finish_reason: str = "stop"


class Answer(msgspec.Struct):
    choices: list[Choice]


def test_structs_dataclasses_and_pydantic_become_json_values() -> None:
    message = ChatCompletionMessage(role="assistant", content="typed")
    out = contracts.chat_completion(Answer([Choice(message={"role": "assistant", "content": "x"})]), WHAT)
    assert out["choices"] == [{"message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]
    out = contracts.chat_completion({"choices": [{"message": message}]}, WHAT)
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "typed"}


def test_direct_answers_are_completed_where_the_spec_allows() -> None:
    page = contracts.direct("list_chat_completion_messages", [{"id": "m-0"}, {"id": "m-1"}], WHAT, {}, 1)
    assert page == {
        "object": "list",
        "data": [{"id": "m-0"}, {"id": "m-1"}],
        "first_id": "m-0",
        "last_id": "m-1",
        "has_more": False,
    }
    empty = contracts.direct("list_response_input_items", [], WHAT, {}, 1)
    assert empty["first_id"] is None and empty["data"] == []
    deleted = contracts.direct("delete_chat_completion", True, WHAT, {"completion_id": "c1"}, 1)
    assert deleted == {"id": "c1", "deleted": True, "object": "chat.completion.deleted"}
    deleted = contracts.direct("delete_response", False, WHAT, {"response_id": "r1"}, 1)
    assert deleted == {"id": "r1", "deleted": False, "object": "response"}
    tokens = contracts.direct("count_response_input_tokens", 12, WHAT, {}, 1)
    assert tokens == {"input_tokens": 12, "object": "response.input_tokens"}
    models = contracts.direct("list_models", ["a", {"id": "b", "owned_by": "me"}], WHAT, {}, 7)
    assert models["data"] == [
        {"object": "model", "created": 7, "owned_by": "manifold", "id": "a"},
        {"object": "model", "created": 7, "owned_by": "me", "id": "b"},
    ]


def test_a_response_object_needs_its_required_fields_but_they_may_be_null() -> None:
    response = {
        "id": "resp_1",
        "created_at": 1,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": None,
        "model": "m",
        "output": [],
        "parallel_tool_calls": True,
        "temperature": None,
        "tool_choice": "auto",
        "tools": [],
        "top_p": None,
        "internal": 1,
    }
    out = contracts.direct("retrieve_response", response, WHAT, {}, 1)
    assert out["object"] == "response" and "internal" not in out
    del response["tools"]
    with pytest.raises(HandlerContractError, match="'tools'"):
        contracts.direct("retrieve_response", response, WHAT, {}, 1)


def test_a_stored_completion_is_normalized() -> None:
    out = contracts.direct(
        "retrieve_chat_completion",
        {"id": "c", "created": 1, "model": "m", "choices": [{"message": {"content": "x"}}]},
        WHAT,
        {},
        1,
    )
    assert out["object"] == "chat.completion"
    assert out["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": "x", "refusal": None},
        "finish_reason": "stop",
        "logprobs": None,
    }


# -- streams -----------------------------------------------------------------------------------------------------


async def _items(values: Iterable[Any]) -> AsyncIterator[Any]:
    for value in values:
        yield value


def _chunks(values: Iterable[Any]) -> list[dict[str, Any]]:
    async def run() -> list[dict[str, Any]]:
        return [chunk async for chunk in streams.chat_chunks(_items(values), WHAT)]

    return asyncio.run(run())


def test_text_deltas_become_chunks_and_the_stream_is_finished() -> None:
    assert _chunks(["a", "", None, "b"]) == [
        {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "b"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ]


def test_delta_dicts_and_chunk_dicts_are_kept_and_filtered() -> None:
    chunks = _chunks(
        [
            {"refusal": "no", "mood": "sad"},
            {"choices": [{"index": 0, "delta": {"content": "x", "y": 1}, "finish_reason": "length"}], "z": 1},
            {"choices": [], "usage": {"total_tokens": 3}},
        ]
    )
    assert chunks == [
        {"choices": [{"index": 0, "delta": {"refusal": "no"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "x"}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"total_tokens": 3}},
    ]


def test_a_stream_collects_into_one_answer() -> None:
    async def run() -> dict[str, Any]:
        return await streams.collect_chat(_items(["Hel", "lo", {"choices": [], "usage": {"total_tokens": 2}}]), WHAT)

    out = asyncio.run(run())
    assert out["choices"][0]["message"]["content"] == "Hello"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["total_tokens"] == 2
    assert out["id"] is None and out["model"] is None  # the gateway sets them

    async def empty() -> dict[str, Any]:
        return await streams.collect_chat(_items([]), WHAT)

    with pytest.raises(HandlerContractError, match="is an empty stream"):
        asyncio.run(empty())


def test_a_whole_answer_streams_as_one_delta() -> None:
    async def run() -> list[dict[str, Any]]:
        answer = {
            "choices": [
                {
                    "message": {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "function": {}}]},
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"total_tokens": 1},
        }
        return [c async for c in streams.answer_as_chunks(answer, WHAT)]

    first, usage = asyncio.run(run())
    assert first["choices"][0]["delta"] == {
        "role": "assistant",
        "tool_calls": [{"id": "c", "function": {}, "index": 0}],
    }
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert usage == {"choices": [], "usage": {"total_tokens": 1}}


def test_a_response_shaped_answer_becomes_the_chat_answer_the_engine_reads() -> None:
    answer = {
        "output": [
            {"type": "reasoning", "summary": []},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "a"}]},
            {"type": "message", "content": [{"type": "output_text", "text": "b"}, {"type": "refusal", "refusal": "r"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}", "status": "completed"},
        ],
        "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5},
    }
    out = contracts.chat_from_response(answer, WHAT)
    assert out["choices"] == [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "ab",
                "refusal": "r",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            "finish_reason": "tool_calls",
        }
    ]
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    assert contracts.chat_from_response({"output_text": "t"}, WHAT)["choices"][0]["message"]["content"] == "t"
    assert contracts.chat_from_response("plain", WHAT)["choices"][0]["message"]["content"] == "plain"
    with pytest.raises(HandlerContractError, match=r"lacks the required field 'output\[0\]\.call_id'"):
        contracts.chat_from_response({"output": [{"type": "function_call", "name": "f", "arguments": ""}]}, WHAT)
    with pytest.raises(HandlerContractError, match="neither text, a chat completion nor a Response"):
        contracts.chat_from_response({"answer": 1}, WHAT)
