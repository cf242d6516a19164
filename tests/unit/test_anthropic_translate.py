"""The Anthropic translator, table-driven from golden files (tests/fixtures/anthropic/, see PROVENANCE.md there).

Requests: each OpenAI request must translate to exactly the recorded Anthropic request; both sides are valid by
their own side's types (OpenAI's openapi.yaml and Manifold's wire type; the `anthropic` SDK's MessageCreateParams).
Responses: each Anthropic message must translate to exactly the expected chat.completion, valid by OpenAI's
schema. Translating back: an assistant turn built from a translated response reproduces Anthropic's blocks.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from manifold.api.chat import ChatCompletionRequest, cross_field_problems
from manifold.api.chat_response import normalize_completion
from manifold.config import Deployment
from manifold.errors import InvalidRequestError, UnsupportedError
from manifold.providers.anthropic.shapes import Usage
from manifold.providers.anthropic.translate import (
    DEFAULT_MAX_TOKENS,
    api_version,
    finish_reason,
    from_anthropic,
    response_tool_name,
    to_anthropic,
    usage_from_anthropic,
)
from tests.conformance.schema import assert_valid
from tests.fakes.anthropic_schema import request_problems, response_problems

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "anthropic"
REQUESTS = sorted((FIXTURES / "requests").glob("*.json"))
RESPONSES = sorted((FIXTURES / "responses").glob("*.json"))
CREATED = 1700000000


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def deployment(**overrides: Any) -> Deployment:
    fields = {"model_name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5", **overrides}
    return msgspec.convert(fields, Deployment)


def translate(openai: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    return to_anthropic(openai, deployment(**overrides))


def chat(**fields: Any) -> dict[str, Any]:
    return {"model": "claude", "messages": [{"role": "user", "content": "Hi"}], **fields}


def test_there_are_golden_files() -> None:
    assert len(REQUESTS) >= 12 and len(RESPONSES) >= 8


# -- requests, golden ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
def test_request_translates_to_the_recorded_anthropic_request(path: Path) -> None:
    case = load(path)
    dep = msgspec.convert(case["deployment"], Deployment)
    sent = copy.deepcopy(case["openai"])
    assert to_anthropic(case["openai"], dep) == case["anthropic"]
    assert case["openai"] == sent  # the client's body is never mutated


@pytest.mark.parametrize("path", REQUESTS, ids=lambda p: p.stem)
def test_both_sides_of_a_request_golden_are_valid(path: Path) -> None:
    case = load(path)
    dep = msgspec.convert(case["deployment"], Deployment)
    assert request_problems(case["anthropic"], api_version(dep)) == []
    req = msgspec.convert(case["openai"], ChatCompletionRequest)
    assert cross_field_problems(req) is None
    assert_valid("CreateChatCompletionRequest", case["openai"])


# -- responses, golden -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", RESPONSES, ids=lambda p: p.stem)
def test_response_translates_to_the_expected_completion(path: Path) -> None:
    case = load(path)
    received = copy.deepcopy(case["anthropic"])
    got = from_anthropic(case["anthropic"], "claude", response_tool=case.get("response_tool"), created=CREATED)
    assert got == case["openai"]
    assert case["anthropic"] == received


@pytest.mark.parametrize("path", RESPONSES, ids=lambda p: p.stem)
def test_both_sides_of_a_response_golden_are_valid(path: Path) -> None:
    case = load(path)
    assert response_problems(case["anthropic"]) == []
    assert_valid("CreateChatCompletionResponse", case["openai"])
    # Already in the shape the server's normalizer makes: it changes nothing.
    assert normalize_completion(copy.deepcopy(case["openai"]), "claude") == case["openai"]


# A response_format answer is plain JSON content in the next turn, by design, so it is not among these.
ANSWERS = [p for p in RESPONSES if not load(p).get("response_tool")]


@pytest.mark.parametrize("path", ANSWERS, ids=lambda p: p.stem)
def test_a_translated_answer_sent_back_reproduces_anthropic_blocks(path: Path) -> None:
    """The other way round: the assistant message a client got is part of its next request; translated back,
    it must be what Anthropic answered (text and tool_use blocks; thinking is not carried)."""
    case = load(path)
    message = case["openai"]["choices"][0]["message"]
    turn = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls") and v is not None}
    back = translate(chat(messages=[{"role": "user", "content": "Hi"}, turn]))["messages"][1]
    blocks = [b for b in case["anthropic"]["content"] if b["type"] in ("text", "tool_use")]
    if len(blocks) == 1 and blocks[0]["type"] == "text":
        assert back == {"role": "assistant", "content": blocks[0]["text"]}
    else:
        assert back == {"role": "assistant", "content": blocks}


# -- requests, rule by rule ------------------------------------------------------------------------------------


def test_max_tokens_is_always_sent() -> None:
    assert translate(chat())["max_tokens"] == DEFAULT_MAX_TOKENS
    assert translate(chat(), default_max_tokens=77)["max_tokens"] == 77
    assert translate(chat(max_tokens=5), default_max_tokens=77)["max_tokens"] == 5
    assert translate(chat(max_tokens=5, max_completion_tokens=9))["max_tokens"] == 9


def test_stop_string_and_list() -> None:
    assert translate(chat(stop="END"))["stop_sequences"] == ["END"]
    assert translate(chat(stop=["a", "b"]))["stop_sequences"] == ["a", "b"]


def test_safety_identifier_is_the_user_id_when_user_is_absent() -> None:
    assert translate(chat(safety_identifier="hash-1"))["metadata"] == {"user_id": "hash-1"}
    assert translate(chat(user="u", safety_identifier="hash-1"))["metadata"] == {"user_id": "u"}


def test_tool_choice_mapping() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert "tool_choice" not in translate(chat(tools=tools))
    assert translate(chat(tools=tools, tool_choice="auto"))["tool_choice"] == {"type": "auto"}
    assert translate(chat(tools=tools, tool_choice="none"))["tool_choice"] == {"type": "none"}
    assert translate(chat(tools=tools, tool_choice="required"))["tool_choice"] == {"type": "any"}
    named = {"type": "function", "function": {"name": "f"}}
    assert translate(chat(tools=tools, tool_choice=named))["tool_choice"] == {"type": "tool", "name": "f"}
    out = translate(chat(tools=tools, parallel_tool_calls=False))
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}
    out = translate(chat(tools=tools, tool_choice="required", parallel_tool_calls=False))
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    # `none` takes no disable_parallel_tool_use (ToolChoiceNoneParam has only `type`)
    assert translate(chat(tools=tools, tool_choice="none", parallel_tool_calls=False))["tool_choice"] == {
        "type": "none"
    }
    # tool_choice without tools is not sent
    assert "tool_choice" not in translate(chat(tool_choice="none"))


def test_allowed_tools_restricts_the_tools() -> None:
    tools = [{"type": "function", "function": {"name": n}} for n in ("a", "b", "c")]
    choice = {
        "type": "allowed_tools",
        "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "b"}}]},
    }
    out = translate(chat(tools=tools, tool_choice=choice))
    assert [t["name"] for t in out["tools"]] == ["b"]
    assert out["tool_choice"] == {"type": "any"}
    assert request_problems(out) == []


def test_strict_functions_stay_strict() -> None:
    tools = [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "object"}}}]
    assert translate(chat(tools=tools))["tools"][0] == {"name": "f", "input_schema": {"type": "object"}, "strict": True}


def test_parameters_without_type_get_an_object_type() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {}}}}}]
    assert translate(chat(tools=tools))["tools"][0]["input_schema"] == {"type": "object", "properties": {"a": {}}}


def test_response_format_json_schema_forces_its_tool() -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True}}
    body = chat(response_format=fmt)
    out = translate(body)
    assert out["tools"] == [
        {
            "name": "answer",
            "description": "Respond to the user with this tool: its input is your whole answer.",
            "input_schema": {"type": "object"},
            "strict": True,
        }
    ]
    assert out["tool_choice"] == {"type": "tool", "name": "answer"}
    assert response_tool_name(body) == "answer"
    # with tool_choice "none", the client's tools may not be called: the answer tool is forced
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = translate(chat(response_format=fmt, tools=tools, tool_choice="none"))
    assert out["tool_choice"] == {"type": "tool", "name": "answer"}
    # a named tool choice wins: no answer tool
    named = {"type": "function", "function": {"name": "f"}}
    body = chat(response_format=fmt, tools=tools, tool_choice=named)
    assert [t["name"] for t in translate(body)["tools"]] == ["f"]
    assert response_tool_name(body) is None


def test_response_format_text_changes_nothing() -> None:
    assert translate(chat(response_format={"type": "text"})) == translate(chat())


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(n=2), "n"),
        (chat(logprobs=True), "logprobs"),
        (chat(top_logprobs=2, logprobs=True), "logprobs"),
        (chat(modalities=["text", "audio"]), "modalities"),
        (chat(audio={"voice": "alloy", "format": "wav"}), "audio"),
        (chat(prediction={"type": "content", "content": "x"}), "prediction"),
        (chat(web_search_options={}), "web_search_options"),
        (chat(functions=[{"name": "f"}]), "functions"),
        (chat(function_call="auto"), "function_call"),
        (chat(logit_bias={"50256": -100}), "logit_bias"),
        (chat(presence_penalty=0.5), "presence_penalty"),
        (chat(frequency_penalty=-1), "frequency_penalty"),
        (chat(tools=[{"type": "custom", "custom": {"name": "c"}}]), "tools[0].type"),
        (
            chat(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
            "messages[0].content[0].type",
        ),
        (
            chat(messages=[{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]),
            "messages[0].content[0].file.file_id",
        ),
        (
            chat(
                messages=[
                    {"role": "user", "content": [{"type": "file", "file": {"file_data": "data:text/csv;base64,YQ=="}}]}
                ]
            ),
            "messages[0].content[0].file.file_data",
        ),
        (chat(messages=[{"role": "function", "name": "f", "content": "x"}]), "messages[0].role"),
        (
            chat(
                messages=[
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "custom", "custom": {"name": "x", "input": ""}}],
                    }
                ]
            ),
            "messages[0].tool_calls[0].type",
        ),
    ],
)
def test_what_anthropic_cannot_do_is_a_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedError) as info:
        translate(body)
    assert info.value.status == 400
    assert info.value.param == param
    assert info.value.code == "unsupported_parameter"


def test_openai_defaults_that_change_nothing_are_accepted() -> None:
    out = translate(chat(n=1, logprobs=False, presence_penalty=0, frequency_penalty=0, logit_bias={}, top_logprobs=0))
    assert request_problems(out) == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (chat(temperature=1.5), "temperature"),
        (chat(top_k="many"), "top_k"),
        (chat(top_k=-1), "top_k"),
        (
            chat(
                messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]
            ),
            "messages[0].content[0].image_url.url",
        ),
        (
            chat(
                messages=[
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}],
                    }
                ]
            ),
            "messages[0].content[0].image_url.url",
        ),
        (
            chat(
                messages=[
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,raw"}}]}
                ]
            ),
            "messages[0].content[0].image_url.url",
        ),
        (
            chat(
                messages=[
                    {
                        "role": "assistant",
                        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}],
                    }
                ]
            ),
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            chat(response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "array"}}}),
            "response_format.json_schema.schema",
        ),
        (
            chat(
                tools=[{"type": "function", "function": {"name": "a"}}],
                response_format={"type": "json_schema", "json_schema": {"name": "a"}},
            ),
            "response_format.json_schema.name",
        ),
    ],
)
def test_bad_values_are_a_400_naming_the_param(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        translate(body)
    assert info.value.param == param
    assert not isinstance(info.value, UnsupportedError)


def test_api_version_2026_refuses_sampling_parameters() -> None:
    with pytest.raises(UnsupportedError) as info:
        translate(chat(temperature=0.5), api_version="2026-10-21")
    assert info.value.param == "temperature"
    assert "2026-10-21" in info.value.message
    with pytest.raises(UnsupportedError) as info:
        translate(chat(top_k=5), api_version="2026-10-21")
    assert info.value.param == "top_k"
    out = translate(chat(max_tokens=9), api_version="2026-10-21")
    assert request_problems(out, "2026-10-21") == []


def test_data_url_parameters_are_read_loosely() -> None:
    url = "data:image/PNG;charset=binary;BASE64,iVBORw0KGgo="
    content = [{"type": "image_url", "image_url": {"url": url}}]
    out = translate(chat(messages=[{"role": "user", "content": content}]))
    assert out["messages"][0]["content"][0]["source"] == {
        "type": "base64",
        "media_type": "image/png",
        "data": "iVBORw0KGgo=",
    }


def test_extra_fields_that_are_not_anthropic_are_not_sent() -> None:
    out = translate(chat(repetition_penalty=1.1, chat_template_kwargs={"x": 1}, thinking={"type": "enabled"}))
    assert set(out) == {"model", "max_tokens", "messages"}


def test_empty_tool_arguments_are_an_empty_input() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": ""}}
    out = translate(chat(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [call]}]))
    assert out["messages"][1]["content"] == [{"type": "tool_use", "id": "c1", "name": "f", "input": {}}]


def test_tool_results_come_first_in_their_user_turn() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        {"role": "user", "content": "x"},
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": ""},
        {"role": "user", "content": "and now?"},
    ]
    out = translate(chat(messages=messages))
    assert out["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "c1"}, {"type": "text", "text": "and now?"}],
    }
    assert request_problems(out) == []


def test_a_single_system_part_with_a_cache_breakpoint_stays_a_block() -> None:
    part = {"type": "text", "text": "rules", "prompt_cache_breakpoint": {"mode": "explicit"}}
    out = translate(chat(messages=[{"role": "system", "content": [part]}, {"role": "user", "content": "x"}]))
    assert out["system"] == [{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}]


# -- responses, rule by rule -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop_reason", "has_tools", "expected"),
    [
        ("end_turn", False, "stop"),
        ("stop_sequence", False, "stop"),
        ("pause_turn", False, "stop"),
        ("max_tokens", False, "length"),
        ("model_context_window_exceeded", False, "length"),
        ("tool_use", True, "tool_calls"),
        ("tool_use", False, "stop"),  # only the response_format tool was used
        ("refusal", False, "content_filter"),
        ("something_new", False, "stop"),
        (None, False, "stop"),
    ],
)
def test_finish_reason(stop_reason: Any, has_tools: bool, expected: str) -> None:
    assert finish_reason(stop_reason, has_tools) == expected


def test_usage_counts_cache_tokens_into_the_prompt() -> None:
    usage = {"input_tokens": 10, "cache_read_input_tokens": 200, "cache_creation_input_tokens": 30, "output_tokens": 7}
    assert usage_from_anthropic(msgspec.convert(usage, Usage)) == {
        "prompt_tokens": 240,
        "completion_tokens": 7,
        "total_tokens": 247,
        "prompt_tokens_details": {"cached_tokens": 200, "cache_write_tokens": 30},
    }
    nulls = {"input_tokens": 3, "cache_read_input_tokens": None, "output_tokens": 1}
    assert usage_from_anthropic(msgspec.convert(nulls, Usage)) == {
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "total_tokens": 4,
        "prompt_tokens_details": {"cached_tokens": 0},
    }
    assert usage_from_anthropic(None) is None


def test_a_message_without_content_is_an_empty_completion() -> None:
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [], "stop_reason": "end_turn"}
    completion = from_anthropic(message, "claude", created=CREATED)
    assert completion["choices"][0]["message"]["content"] == ""
    assert "usage" not in completion
    assert_valid("CreateChatCompletionResponse", completion)
