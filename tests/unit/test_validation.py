"""Request validation: every rule gives an OpenAI-shaped 400 naming the exact parameter; valid requests pass."""

from __future__ import annotations

import json
from typing import Any

import pytest

from manifold.api.chat import (
    AllowedToolsChoice,
    AssistantMessage,
    ChatCompletionRequest,
    DeveloperMessage,
    FunctionMessage,
    NamedToolChoice,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    ResponseFormatText,
    SystemMessage,
    ToolMessage,
    UserMessage,
    cross_field_problems,
)
from manifold.api.validation import BAD_JSON_MESSAGE, convert, decode_json_object
from manifold.errors import InvalidRequestError, MissingParameterError

USER = {"role": "user", "content": "Hello"}


def req(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [USER]}
    body.update(fields)
    return body


def user_parts(*parts: dict[str, Any]) -> dict[str, Any]:
    return req(messages=[{"role": "user", "content": list(parts)}])


def fails(body: dict[str, Any]) -> InvalidRequestError:
    with pytest.raises(InvalidRequestError) as info:
        convert(body, ChatCompletionRequest)
    return info.value


def assert_envelope(err: InvalidRequestError, param: str | None, code: str) -> None:
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    assert err.param == param
    assert err.code == code
    env = err.to_dict()
    assert set(env) == {"error"}
    assert env["error"] == {"message": err.message, "type": "invalid_request_error", "param": param, "code": code}
    assert json.loads(err.to_json()) == env


# -- the body itself ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        pytest.param(b"", "invalid_json", "empty", id="empty-body"),
        pytest.param(b"{bad json", "invalid_json", "could not parse the JSON body", id="bad-json"),
        pytest.param(b'{"model": "m",}', "invalid_json", "could not parse the JSON body", id="trailing-comma"),
        pytest.param(b"{} trailing", "invalid_json", "could not parse the JSON body", id="trailing-garbage"),
        pytest.param(b"\xff\xfe", "invalid_json", "could not parse the JSON body", id="not-utf8"),
        pytest.param(b"[1, 2]", "invalid_type", "got an array", id="array"),
        pytest.param(b'[{"model": "m"}]', "invalid_type", "got an array", id="array-of-objects"),
        pytest.param(b"null", "invalid_type", "got null", id="null"),
        pytest.param(b'"text"', "invalid_type", "got a string", id="string"),
        pytest.param(b"42", "invalid_type", "got an integer", id="integer"),
        pytest.param(b"true", "invalid_type", "got a boolean", id="boolean"),
    ],
)
def test_decode_json_object_rejects(body: bytes, code: str, fragment: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        decode_json_object(body)
    err = info.value
    assert_envelope(err, None, code)
    assert fragment in err.message
    if code == "invalid_json":
        assert err.message.startswith(BAD_JSON_MESSAGE)
    else:
        assert "must be a JSON object" in err.message


def test_decode_json_object_returns_the_object_with_unknown_fields() -> None:
    raw = decode_json_object(b'{"model": "m", "messages": [], "top_k": 40, "x": {"y": [1, null]}}')
    assert raw == {"model": "m", "messages": [], "top_k": 40, "x": {"y": [1, None]}}


# -- one rule per row --------------------------------------------------------------------------------------------

LONG_FUNCTION_NAME = "f" * 65

INVALID: list[Any] = [
    # (id, body, param, code, what the message must contain)
    ("missing-messages", {"model": "m"}, "messages", "missing_required_parameter", "'messages'"),
    ("missing-model", {"messages": [USER]}, "model", "missing_required_parameter", "'model'"),
    ("empty-model", req(model=""), "model", "empty_string", "'model'"),
    ("model-not-string", req(model=5), "model", "invalid_type", "'model'"),
    ("empty-messages", req(messages=[]), "messages", "empty_array", "'messages'"),
    ("messages-not-array", req(messages="hi"), "messages", "invalid_type", "'messages'"),
    ("message-not-object", req(messages=["hi"]), "messages[0]", "invalid_type", "'messages[0]'"),
    (
        "invalid-role",
        req(messages=[USER, {"role": "robot", "content": "x"}]),
        "messages[1].role",
        "invalid_value",
        "'messages[1].role'",
    ),
    (
        "missing-role",
        req(messages=[{"content": "x"}]),
        "messages[0].role",
        "missing_required_parameter",
        "'messages[0].role'",
    ),
    (
        "missing-content",
        req(messages=[{"role": "user"}]),
        "messages[0].content",
        "missing_required_parameter",
        "'messages[0].content'",
    ),
    (
        "missing-content-second-message",
        req(messages=[USER, {"role": "system"}]),
        "messages[1].content",
        "missing_required_parameter",
        "'messages[1].content'",
    ),
    (
        "empty-content-parts",
        req(messages=[{"role": "user", "content": []}]),
        "messages[0].content",
        "empty_array",
        "'messages[0].content'",
    ),
    (
        "bad-content-part-type",
        user_parts({"type": "video", "video": {}}),
        "messages[0].content[0].type",
        "invalid_value",
        "'messages[0].content[0].type'",
    ),
    (
        "bad-second-content-part-type",
        user_parts({"type": "text", "text": "a"}, {"type": "refusal", "refusal": "no"}),
        "messages[0].content[1].type",
        "invalid_value",
        "'messages[0].content[1].type'",
    ),
    (
        "image-url-missing-url",
        user_parts({"type": "image_url", "image_url": {"detail": "low"}}),
        "messages[0].content[0].image_url.url",
        "missing_required_parameter",
        "'messages[0].content[0].image_url.url'",
    ),
    (
        "image-url-bad-detail",
        user_parts({"type": "image_url", "image_url": {"url": "https://x/y.png", "detail": "ultra"}}),
        "messages[0].content[0].image_url.detail",
        "invalid_value",
        "'messages[0].content[0].image_url.detail'",
    ),
    (
        "input-audio-bad-format",
        user_parts({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "ogg"}}),
        "messages[0].content[0].input_audio.format",
        "invalid_value",
        "'messages[0].content[0].input_audio.format'",
    ),
    (
        "tool-message-without-tool-call-id",
        req(messages=[{"role": "tool", "content": "42"}]),
        "messages[0].tool_call_id",
        "missing_required_parameter",
        "'messages[0].tool_call_id'",
    ),
    ("temperature-2.5", req(temperature=2.5), "temperature", "decimal_above_max_value", "2.5"),
    ("temperature-negative", req(temperature=-1), "temperature", "decimal_below_min_value", "-1"),
    ("temperature-string", req(temperature="hot"), "temperature", "invalid_type", "a string"),
    ("top-p-1.5", req(top_p=1.5), "top_p", "decimal_above_max_value", "1.5"),
    ("presence-penalty-3", req(presence_penalty=3), "presence_penalty", "decimal_above_max_value", "3"),
    ("presence-penalty--3", req(presence_penalty=-3), "presence_penalty", "decimal_below_min_value", "-3"),
    ("frequency-penalty-3", req(frequency_penalty=3), "frequency_penalty", "decimal_above_max_value", "3"),
    ("frequency-penalty--3", req(frequency_penalty=-3), "frequency_penalty", "decimal_below_min_value", "-3"),
    ("n-0", req(n=0), "n", "integer_below_min_value", "0"),
    ("n-129", req(n=129), "n", "integer_above_max_value", "129"),
    ("stop-5-items", req(stop=["a", "b", "c", "d", "e"]), "stop", "array_above_max_length", "length 5"),
    ("stop-empty", req(stop=[]), "stop", "empty_array", "'stop'"),
    (
        "top-logprobs-21",
        req(logprobs=True, top_logprobs=21),
        "top_logprobs",
        "integer_above_max_value",
        "21",
    ),
    (
        "bad-tool-name",
        req(tools=[{"type": "function", "function": {"name": "get weather"}}]),
        "tools[0].function.name",
        "invalid_value",
        "'tools[0].function.name'",
    ),
    (
        "tool-name-too-long",
        req(tools=[{"type": "function", "function": {"name": LONG_FUNCTION_NAME}}]),
        "tools[0].function.name",
        "invalid_value",
        "'tools[0].function.name'",
    ),
    (
        "bad-tool-type",
        req(tools=[{"type": "plugin", "plugin": {}}]),
        "tools[0].type",
        "invalid_value",
        "'tools[0].type'",
    ),
    (
        "json-schema-without-name",
        req(response_format={"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}),
        "response_format.json_schema.name",
        "missing_required_parameter",
        "'response_format.json_schema.name'",
    ),
    (
        "bad-response-format-type",
        req(response_format={"type": "yaml"}),
        "response_format.type",
        "invalid_value",
        "'response_format.type'",
    ),
    ("service-tier", req(service_tier="ultra"), "service_tier", "invalid_value", "'ultra'"),
    ("reasoning-effort", req(reasoning_effort="extreme"), "reasoning_effort", "invalid_value", "'extreme'"),
    ("max-tokens-0", req(max_tokens=0), "max_tokens", "integer_below_min_value", "0"),
    (
        "max-completion-tokens-0",
        req(max_completion_tokens=0),
        "max_completion_tokens",
        "integer_below_min_value",
        "0",
    ),
    (
        "metadata-17-keys",
        req(metadata={f"key{i}": "v" for i in range(17)}),
        "metadata",
        "object_above_max_length",
        "length 17",
    ),
    ("seed-float", req(seed=1.5), "seed", "invalid_type", "a number"),
    ("seed-string", req(seed="7"), "seed", "invalid_type", "a string"),
    ("stream-string", req(stream="yes"), "stream", "invalid_type", "a string"),
    ("logprobs-int", req(logprobs=1), "logprobs", "invalid_type", "an integer"),
    ("modalities-bad", req(modalities=["video"]), "modalities[0]", "invalid_value", "'video'"),
    (
        "audio-bad-format",
        req(audio={"voice": "alloy", "format": "ogg"}),
        "audio.format",
        "invalid_value",
        "'audio.format'",
    ),
]


@pytest.mark.parametrize(("body", "param", "code", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in INVALID])
def test_invalid_request(body: dict[str, Any], param: str, code: str, fragment: str) -> None:
    err = fails(body)
    assert_envelope(err, param, code)
    assert fragment in err.message
    # Every message names the parameter, as OpenAI's do.
    assert param in err.message
    # No msgspec wording leaks through.
    assert "$." not in err.message
    assert "`" not in err.message
    if code == "missing_required_parameter":
        assert isinstance(err, MissingParameterError)
        assert err.message == f"Missing required parameter: '{param}'."


def test_range_message_wording() -> None:
    err = fails(req(temperature=2.5))
    assert err.message == (
        "Invalid 'temperature': decimal above maximum value. Expected a value <= 2, but got 2.5 instead."
    )
    err = fails(req(n=129))
    assert err.message == "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 129 instead."


def test_invalid_enum_message_wording() -> None:
    err = fails(req(messages=[USER, {"role": "robot", "content": "x"}]))
    assert err.message == "Invalid value: 'robot'. Check the documented values for 'messages[1].role'."


@pytest.mark.parametrize(("value", "code"), [(101, "integer_above_max_value"), (-101, "integer_below_min_value")])
def test_logit_bias_value_out_of_range(value: int, code: str) -> None:
    err = fails(req(logit_bias={"50256": value}))
    assert err.status_code == 400
    assert err.type == "invalid_request_error"
    assert err.code == code
    # The param must be a real location (not msgspec's `[...]` placeholder) and the message the real value.
    assert err.param in ("logit_bias", "logit_bias.50256")
    assert "[...]" not in err.message
    assert str(value) in err.message
    assert "got null" not in err.message


def test_metadata_value_too_long() -> None:
    err = fails(req(metadata={"note": "v" * 513}))
    assert err.code == "string_above_max_length"
    assert err.param in ("metadata", "metadata.note")
    assert "[...]" not in err.message
    assert "length 513" in err.message


def test_metadata_key_too_long() -> None:
    err = fails(req(metadata={"k" * 65: "v"}))
    assert err.status_code == 400
    assert err.param == "metadata"
    assert "'metadata'" in err.message
    assert "`" not in err.message  # msgspec's own text must not reach the client


# -- valid requests ---------------------------------------------------------------------------------------------

VALID: list[Any] = [
    ("minimal", req()),
    ("system", req(messages=[{"role": "system", "content": "Be brief."}, USER])),
    ("system-named", req(messages=[{"role": "system", "content": "x", "name": "ops"}, USER])),
    ("system-text-parts", req(messages=[{"role": "system", "content": [{"type": "text", "text": "x"}]}, USER])),
    ("developer", req(messages=[{"role": "developer", "content": "Be brief."}, USER])),
    ("developer-text-parts", req(messages=[{"role": "developer", "content": [{"type": "text", "text": "x"}]}])),
    (
        "user-all-part-kinds",
        user_parts(
            {"type": "text", "text": "What is in this image?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "high"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "input_audio", "input_audio": {"data": "SUQz", "format": "mp3"}},
            {"type": "file", "file": {"file_id": "file-abc"}},
            {"type": "file", "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"}},
        ),
    ),
    ("user-named", req(messages=[{"role": "user", "content": "hi", "name": "alice"}])),
    (
        "assistant-tool-calls-null-content",
        req(
            messages=[
                USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_1",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {"id": "call_2", "type": "custom", "custom": {"name": "shell", "input": "ls"}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "22C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "a.txt"}]},
            ]
        ),
    ),
    ("assistant-no-content-key", req(messages=[USER, {"role": "assistant"}])),
    (
        "assistant-refusal-parts",
        req(
            messages=[
                USER,
                {
                    "role": "assistant",
                    "content": [{"type": "text", "text": "Partly"}, {"type": "refusal", "refusal": "No."}],
                    "refusal": "No.",
                },
                USER,
            ]
        ),
    ),
    ("assistant-audio", req(messages=[USER, {"role": "assistant", "audio": {"id": "audio_1"}}, USER])),
    (
        "assistant-function-call",
        req(
            messages=[
                USER,
                {"role": "assistant", "content": None, "function_call": {"name": "f", "arguments": "{}"}},
                {"role": "function", "name": "f", "content": "done"},
            ]
        ),
    ),
    ("function-null-content", req(messages=[USER, {"role": "function", "name": "f", "content": None}])),
    (
        "tools-and-tool-choice-string",
        req(
            tools=[
                {
                    "type": "function",
                    "function": {
                        "name": "get_weather",
                        "description": "Weather",
                        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                        "strict": True,
                    },
                },
                {"type": "custom", "custom": {"name": "shell", "format": {"type": "text"}}},
                {
                    "type": "custom",
                    "custom": {
                        "name": "sql",
                        "format": {"type": "grammar", "grammar": {"definition": "x", "syntax": "lark"}},
                    },
                },
            ],
            tool_choice="required",
            parallel_tool_calls=False,
        ),
    ),
    ("tool-choice-none", req(tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="none")),
    ("tool-choice-auto-without-tools", req(tool_choice="auto")),
    (
        "tool-choice-named",
        req(
            tools=[{"type": "function", "function": {"name": "get_weather"}}],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=True,
        ),
    ),
    (
        "tool-choice-named-custom",
        req(
            tools=[{"type": "custom", "custom": {"name": "shell"}}],
            tool_choice={"type": "custom", "custom": {"name": "shell"}},
        ),
    ),
    (
        "tool-choice-allowed-tools",
        req(
            tools=[{"type": "function", "function": {"name": "a"}}, {"type": "function", "function": {"name": "b"}}],
            tool_choice={
                "type": "allowed_tools",
                "allowed_tools": {"mode": "auto", "tools": [{"type": "function", "function": {"name": "a"}}]},
            },
        ),
    ),
    ("response-format-text", req(response_format={"type": "text"})),
    ("response-format-json-object", req(response_format={"type": "json_object"})),
    (
        "response-format-json-schema",
        req(
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "person",
                    "description": "A person",
                    "schema": {"type": "object", "properties": {"name": {"type": "string"}}},
                    "strict": True,
                },
            }
        ),
    ),
    ("logprobs-top-logprobs", req(logprobs=True, top_logprobs=20)),
    ("stream-stream-options", req(stream=True, stream_options={"include_usage": True, "include_obfuscation": False})),
    ("store-metadata", req(store=True, metadata={f"k{i}": "v" * 512 for i in range(16)})),
    (
        "modalities-audio",
        req(modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"}),
    ),
    ("audio-voice-object", req(modalities=["audio"], audio={"voice": {"id": "voice_1"}, "format": "pcm16"})),
    ("prediction-string", req(prediction={"type": "content", "content": "old code"})),
    ("prediction-parts", req(prediction={"type": "content", "content": [{"type": "text", "text": "old"}]})),
    (
        "web-search-options",
        req(
            web_search_options={
                "search_context_size": "low",
                "user_location": {"type": "approximate", "approximate": {"city": "Paris", "country": "FR"}},
            }
        ),
    ),
    ("unknown-extra-fields", req(top_k=40, repetition_penalty=1.1, min_p=0.05, chat_template_kwargs={"x": 1})),
    (
        "boundaries",
        req(
            temperature=0,
            top_p=1,
            presence_penalty=-2,
            frequency_penalty=2,
            n=128,
            stop=["a", "b", "c", "d"],
            logit_bias={"50256": -100, "1": 100},
            max_tokens=1,
            max_completion_tokens=1,
            seed=-(2**62),
        ),
    ),
    ("stop-string", req(stop="\n")),
    ("nulls-everywhere", req(temperature=None, top_p=None, n=None, stop=None, tools=None, seed=None, user=None)),
    (
        "misc-enums",
        req(service_tier="flex", reasoning_effort="minimal", verbosity="low", prompt_cache_retention="24h"),
    ),
    ("functions-deprecated", req(functions=[{"name": "f", "parameters": {}}], function_call={"name": "f"})),
    ("function-call-auto", req(functions=[{"name": "f"}], function_call="auto")),
]


@pytest.mark.parametrize("body", [pytest.param(b, id=i) for i, b in VALID])
def test_valid_request(body: dict[str, Any]) -> None:
    parsed = convert(body, ChatCompletionRequest)
    assert isinstance(parsed, ChatCompletionRequest)
    assert parsed.model == body["model"]
    assert len(parsed.messages) == len(body["messages"])
    assert cross_field_problems(parsed) is None


def test_valid_request_types() -> None:
    body = req(
        messages=[
            {"role": "system", "content": "s"},
            {"role": "developer", "content": "d"},
            USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "tool", "tool_call_id": "c", "content": "r"},
            {"role": "function", "name": "f", "content": "r"},
        ],
        tools=[{"type": "function", "function": {"name": "f"}}],
        tool_choice={"type": "function", "function": {"name": "f"}},
        response_format={"type": "json_schema", "json_schema": {"name": "n"}},
        temperature=1,
        top_k=3,
    )
    parsed = convert(body, ChatCompletionRequest)
    assert [type(m) for m in parsed.messages] == [
        SystemMessage,
        DeveloperMessage,
        UserMessage,
        AssistantMessage,
        ToolMessage,
        FunctionMessage,
    ]
    assert isinstance(parsed.tool_choice, NamedToolChoice)
    assert parsed.tool_choice.function.name == "f"
    assert isinstance(parsed.response_format, ResponseFormatJSONSchema)
    assert parsed.temperature == 1.0
    assert not hasattr(parsed, "top_k")


@pytest.mark.parametrize(
    ("response_format", "cls"),
    [
        ({"type": "text"}, ResponseFormatText),
        ({"type": "json_object"}, ResponseFormatJSONObject),
        ({"type": "json_schema", "json_schema": {"name": "x"}}, ResponseFormatJSONSchema),
    ],
)
def test_response_format_variants(response_format: dict[str, Any], cls: type) -> None:
    assert isinstance(convert(req(response_format=response_format), ChatCompletionRequest).response_format, cls)


def test_allowed_tools_choice_parsed() -> None:
    parsed = convert(
        req(
            tools=[{"type": "function", "function": {"name": "a"}}],
            tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": []}},
        ),
        ChatCompletionRequest,
    )
    assert isinstance(parsed.tool_choice, AllowedToolsChoice)
    assert parsed.tool_choice.allowed_tools.mode == "required"


def test_decode_then_convert_end_to_end() -> None:
    raw = decode_json_object(json.dumps(req(temperature=0.2, top_k=5)).encode())
    parsed = convert(raw, ChatCompletionRequest)
    assert parsed.temperature == 0.2
    assert raw["top_k"] == 5  # the raw object (what is forwarded) keeps unknown fields


# -- cross-field rules ------------------------------------------------------------------------------------------

CROSS: list[Any] = [
    ("stream-options-without-stream", req(stream_options={"include_usage": True}), "stream_options"),
    ("stream-options-stream-false", req(stream=False, stream_options={"include_usage": True}), "stream_options"),
    ("top-logprobs-without-logprobs", req(top_logprobs=5), "top_logprobs"),
    ("top-logprobs-logprobs-false", req(logprobs=False, top_logprobs=3), "top_logprobs"),
    (
        "named-tool-choice-without-tools",
        req(tool_choice={"type": "function", "function": {"name": "f"}}),
        "tool_choice",
    ),
    (
        "allowed-tools-without-tools",
        req(tool_choice={"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}}),
        "tool_choice",
    ),
    (
        "named-tool-choice-empty-tools",
        req(tools=[], tool_choice={"type": "function", "function": {"name": "f"}}),
        "tool_choice",
    ),
    ("parallel-tool-calls-without-tools", req(parallel_tool_calls=True), "parallel_tool_calls"),
    ("logit-bias-non-token-key", req(logit_bias={"hello": 5}), "logit_bias.hello"),
]


@pytest.mark.parametrize(("body", "param"), [pytest.param(b, p, id=i) for i, b, p in CROSS])
def test_cross_field_problem(body: dict[str, Any], param: str) -> None:
    parsed = convert(body, ChatCompletionRequest)  # each is fine field by field
    problem = cross_field_problems(parsed)
    assert problem is not None
    got_param, message = problem
    assert got_param == param
    assert param.split(".")[0] in message


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(req(stream=True, stream_options={"include_usage": False}), id="stream-options-with-stream"),
        pytest.param(req(logprobs=True, top_logprobs=5), id="top-logprobs-with-logprobs"),
        pytest.param(req(top_logprobs=0), id="top-logprobs-zero"),
        pytest.param(req(tool_choice="none"), id="string-tool-choice-without-tools"),
        pytest.param(
            req(
                tools=[{"type": "function", "function": {"name": "f"}}],
                tool_choice={"type": "function", "function": {"name": "f"}},
            ),
            id="named-tool-choice-with-tools",
        ),
        pytest.param(req(logit_bias={"50256": -100, "-1": 1}), id="numeric-logit-bias-keys"),
    ],
)
def test_no_cross_field_problem(body: dict[str, Any]) -> None:
    assert cross_field_problems(convert(body, ChatCompletionRequest)) is None
