"""Self-check of the OpenAI-schema conformance validator (tests/conformance/schema.py).

Proves that realistic, OpenAI-shaped payloads pass and that deliberately broken ones fail, so a broken
validator (always-true schemas, lost $refs, a stale cache, leaking relaxations) cannot go unnoticed.
"""

from __future__ import annotations

import copy
import hashlib
import re
from pathlib import Path
from typing import Any

import pytest

from tests.conformance.schema import (
    RELAXATIONS,
    SPEC_PATH,
    SchemaValidator,
    assert_valid,
    assert_valid_stream_event,
    errors,
    load_spec,
    load_validator,
    normalize,
    stream_event_schema,
)

# --------------------------------------------------------------------------------------------------
# Realistic payloads (shaped like real OpenAI responses)
# --------------------------------------------------------------------------------------------------

CHAT_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-4.1-2025-04-14",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I assist you today?",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_manifold",
}

CHAT_COMPLETION_TOOL_CALL: dict[str, Any] = {
    **CHAT_COMPLETION,
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": "call_abc123",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                    }
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
        }
    ],
}

CHUNK_FIRST: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": "", "refusal": None},
            "logprobs": None,
            "finish_reason": None,
        }
    ],
    "usage": None,
}

CHUNK_LAST: dict[str, Any] = {
    **CHUNK_FIRST,
    "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
}

CHUNK_USAGE: dict[str, Any] = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [],
    "usage": {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21},
}

ERROR_ENVELOPE: dict[str, Any] = {
    "error": {
        "message": "The model `gpt-nope` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
}

ERROR_ENVELOPE_WITH_PARAM: dict[str, Any] = {
    "error": {
        "message": "Invalid type for 'temperature': expected a decimal, but got a string instead.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": None,
    }
}

MODEL: dict[str, Any] = {
    "id": "smollm2-135m",
    "object": "model",
    "created": 1686935002,
    "owned_by": "manifold",
}

MODEL_LIST: dict[str, Any] = {
    "object": "list",
    "data": [MODEL, {"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}],
}

TEXT_DELTA_EVENT: dict[str, Any] = {
    "type": "response.output_text.delta",
    "item_id": "msg_67c9fdcf37fc8190ba82116e33fb28c5",
    "output_index": 0,
    "content_index": 0,
    "delta": "Hello",
    "sequence_number": 4,
    "logprobs": [],
}

RESPONSE: dict[str, Any] = {
    "id": "resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b",
    "object": "response",
    "created_at": 1741476542,
    "status": "completed",
    "completed_at": 1741476543,
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": None,
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {
            "type": "message",
            "id": "msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "In a peaceful grove beneath a silver moon...",
                    "annotations": [],
                    "logprobs": [],
                }
            ],
        }
    ],
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "store": True,
    "temperature": 1.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 123,
    },
    "metadata": {},
}

COMPOUND_FILTER: dict[str, Any] = {
    "type": "and",
    "filters": [
        {"type": "eq", "key": "region", "value": "eu"},
        {"type": "or", "filters": [{"type": "gte", "key": "year", "value": 2024}]},
    ],
}

VALID: list[tuple[str, str, Any]] = [
    ("chat.completion", "CreateChatCompletionResponse", CHAT_COMPLETION),
    ("chat.completion tool_calls", "CreateChatCompletionResponse", CHAT_COMPLETION_TOOL_CALL),
    ("chunk first (finish_reason null, usage null)", "CreateChatCompletionStreamResponse", CHUNK_FIRST),
    ("chunk last", "CreateChatCompletionStreamResponse", CHUNK_LAST),
    ("chunk usage (choices [])", "CreateChatCompletionStreamResponse", CHUNK_USAGE),
    ("error envelope", "ErrorResponse", ERROR_ENVELOPE),
    ("error envelope with param", "ErrorResponse", ERROR_ENVELOPE_WITH_PARAM),
    ("model", "Model", MODEL),
    ("model list", "ListModelsResponse", MODEL_LIST),
    ("empty model list", "ListModelsResponse", {"object": "list", "data": []}),
    ("responses text delta event", "ResponseTextDeltaEvent", TEXT_DELTA_EVENT),
    ("response", "Response", RESPONSE),
    ("compound filter ($recursiveRef)", "CompoundFilter", COMPOUND_FILTER),
]


def _with(payload: Any, path: str, value: Any) -> Any:
    """Deep copy of ``payload`` with ``path`` ("a.0.b") set to ``value`` (or deleted if ``...``)."""
    out = copy.deepcopy(payload)
    *parents, last = path.split(".")
    node = out
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is ...:
        del node[key]
    else:
        node[key] = value
    return out


# (id, schema, payload, a substring the error list must contain)
INVALID: list[tuple[str, str, Any, str]] = [
    (
        "chunk missing id",
        "CreateChatCompletionStreamResponse",
        _with(CHUNK_FIRST, "id", ...),
        "'id' is a required",
    ),
    (
        "chunk wrong object",
        "CreateChatCompletionStreamResponse",
        _with(CHUNK_FIRST, "object", "chat.completion"),
        "$.object",
    ),
    (
        "chunk bad finish_reason",
        "CreateChatCompletionStreamResponse",
        _with(CHUNK_LAST, "choices.0.finish_reason", "done"),
        "$.choices[0].finish_reason",
    ),
    (
        "chunk usage with string tokens",
        "CreateChatCompletionStreamResponse",
        _with(CHUNK_USAGE, "usage.prompt_tokens", "9"),
        "$.usage.prompt_tokens",
    ),
    (
        "chunk choice missing delta",
        "CreateChatCompletionStreamResponse",
        _with(CHUNK_FIRST, "choices.0.delta", ...),
        "'delta' is a required",
    ),
    (
        "completion created as string",
        "CreateChatCompletionResponse",
        _with(CHAT_COMPLETION, "created", "1741569952"),
        "$.created",
    ),
    (
        "completion wrong object",
        "CreateChatCompletionResponse",
        _with(CHAT_COMPLETION, "object", "chat.completion.chunk"),
        "$.object",
    ),
    (
        "completion message missing refusal",
        "CreateChatCompletionResponse",
        _with(CHAT_COMPLETION, "choices.0.message.refusal", ...),
        "'refusal' is a required",
    ),
    (
        "completion message role user",
        "CreateChatCompletionResponse",
        _with(CHAT_COMPLETION, "choices.0.message.role", "user"),
        "$.choices[0].message.role",
    ),
    (
        "completion finish_reason null",
        "CreateChatCompletionResponse",
        _with(CHAT_COMPLETION, "choices.0.finish_reason", None),
        "$.choices[0].finish_reason",
    ),
    (
        "completion usage missing total",
        "CreateChatCompletionResponse",
        _with(CHAT_COMPLETION, "usage.total_tokens", ...),
        "'total_tokens' is a required",
    ),
    (
        "tool call missing arguments",
        "CreateChatCompletionResponse",
        _with(CHAT_COMPLETION_TOOL_CALL, "choices.0.message.tool_calls.0.function.arguments", ...),
        "$.choices[0].message.tool_calls[0]",
    ),
    (
        "error missing message",
        "ErrorResponse",
        _with(ERROR_ENVELOPE, "error.message", ...),
        "'message' is a required",
    ),
    (
        "error missing param",
        "ErrorResponse",
        _with(ERROR_ENVELOPE, "error.param", ...),
        "'param' is a required",
    ),
    ("error code as int", "ErrorResponse", _with(ERROR_ENVELOPE, "error.code", 404), "$.error.code"),
    ("bare error (no envelope)", "ErrorResponse", ERROR_ENVELOPE["error"], "'error' is a required"),
    ("model wrong object", "Model", _with(MODEL, "object", "models"), "$.object"),
    ("model missing owned_by", "Model", _with(MODEL, "owned_by", ...), "'owned_by' is a required"),
    ("model list wrong object", "ListModelsResponse", _with(MODEL_LIST, "object", "models"), "$.object"),
    (
        "model list bad item",
        "ListModelsResponse",
        _with(MODEL_LIST, "data.1.created", None),
        "$.data[1].created",
    ),
    (
        "text delta missing sequence_number",
        "ResponseTextDeltaEvent",
        _with(TEXT_DELTA_EVENT, "sequence_number", ...),
        "'sequence_number' is a required",
    ),
    (
        "text delta missing logprobs",
        "ResponseTextDeltaEvent",
        _with(TEXT_DELTA_EVENT, "logprobs", ...),
        "'logprobs' is a required",
    ),
    (
        "text delta wrong type",
        "ResponseTextDeltaEvent",
        _with(TEXT_DELTA_EVENT, "type", "response.output_text.done"),
        "$.type",
    ),
    ("response wrong object", "Response", _with(RESPONSE, "object", "chat.completion"), "$.object"),
    ("response bad status", "Response", _with(RESPONSE, "status", "done"), "$.status"),
    (
        "response output_text missing logprobs",
        "Response",
        _with(RESPONSE, "output.0.content.0.logprobs", ...),
        "$.output[0]",
    ),
    (
        "response usage missing cache_write_tokens",
        "Response",
        _with(RESPONSE, "usage.input_tokens_details.cache_write_tokens", ...),
        "$.usage",
    ),
    (
        "compound filter with bad nested comparison",
        "CompoundFilter",
        _with(COMPOUND_FILTER, "filters.1.filters.0.type", "approx"),
        "$.filters[1]",
    ),
]


@pytest.fixture(scope="module")
def validator() -> SchemaValidator:
    return load_validator()


# --------------------------------------------------------------------------------------------------
# The spec copy and the cache
# --------------------------------------------------------------------------------------------------


def test_spec_copy_matches_provenance(validator: SchemaValidator) -> None:
    provenance = (SPEC_PATH.parent / "PROVENANCE.md").read_text(encoding="utf-8")
    match = re.search(r"sha256 of the copy: `([0-9a-f]{64})`", provenance)
    assert match, "PROVENANCE.md lacks the sha256 line; re-run scripts/sync-openai-spec"
    actual = hashlib.sha256(SPEC_PATH.read_bytes()).hexdigest()
    assert actual == match.group(1), "openapi.yaml was edited by hand; re-run scripts/sync-openai-spec"
    assert validator.source_sha256 == actual


def test_load_validator_is_a_singleton() -> None:
    assert load_validator() is load_validator()


def _leftover_quirks(node: Any, path: str = "$") -> list[str]:
    """Paths of OpenAPI-3.0 / 2019-09 keywords that JSON Schema 2020-12 would silently ignore."""
    found: list[str] = []
    if isinstance(node, list):
        for i, item in enumerate(node):
            found += _leftover_quirks(item, f"{path}[{i}]")
    elif isinstance(node, dict):
        if isinstance(node.get("nullable"), bool):
            found.append(f"{path}.nullable")
        if "$recursiveRef" in node:
            found.append(f"{path}.$recursiveRef")
        if isinstance(node.get("discriminator"), dict) and "mapping" not in node["discriminator"]:
            found.append(f"{path}.discriminator")
        for key, value in node.items():
            if key not in ("example", "examples", "x-oaiMeta"):
                found += _leftover_quirks(value, f"{path}.{key}")
    return found


def test_spec_is_normalized(validator: SchemaValidator) -> None:
    assert _leftover_quirks(validator.spec) == []
    assert len(validator.schema_names()) > 1000


MINI_SPEC = """\
openapi: 3.1.0
info: {title: mini, version: 2024-10-01}
paths: {}
components:
  schemas:
    Node:
      $recursiveAnchor: true
      type: object
      required: [name, children]
      properties:
        name: {type: string, nullable: true}
        nullable: {type: boolean}
        kind: {type: string, enum: [a, b], discriminator: {propertyName: kind}}
        children:
          type: array
          items:
            oneOf: [{$recursiveRef: "#"}]
            discriminator: {propertyName: kind}
      example: {nullable: true, discriminator: {propertyName: x}}
"""


def test_normalize_on_a_miniature_spec(tmp_path: Path) -> None:
    source = tmp_path / "openapi.yaml"
    source.write_text(MINI_SPEC, encoding="utf-8")
    cache_dir = tmp_path / "cache"

    cold = load_spec(source, cache_dir=cache_dir)
    warm = load_spec(source, cache_dir=cache_dir)
    assert (cold.from_cache, warm.from_cache) == (False, True)
    assert cold.spec == warm.spec
    assert list(cache_dir.glob("openai-spec-*.json")) == [cache_dir / f"openai-spec-{cold.source_sha256[:16]}.json"]

    spec = cold.spec
    assert spec["info"]["version"] == "2024-10-01"  # YAML timestamp kept as a string
    node = spec["components"]["schemas"]["Node"]
    assert "$recursiveAnchor" not in node
    assert node["properties"]["name"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert node["properties"]["nullable"] == {"type": "boolean"}  # a property *named* nullable survives
    assert "discriminator" not in node["properties"]["kind"]
    assert node["properties"]["children"]["items"] == {"oneOf": [{"$ref": "#/components/schemas/Node"}]}
    assert node["example"] == {"nullable": True, "discriminator": {"propertyName": "x"}}  # data untouched

    mini = SchemaValidator(spec)
    assert mini.errors("Node", {"name": None, "children": [{"name": "x", "children": []}]}) == []
    assert mini.errors("Node", {"name": "x", "children": [{"name": 1, "children": []}]}) != []

    # A corrupt cache is ignored and rewritten; the input dict itself is never mutated by normalize().
    next(cache_dir.glob("*.json")).write_text("{not json", encoding="utf-8")
    assert load_spec(source, cache_dir=cache_dir).from_cache is False
    assert load_spec(source, cache_dir=cache_dir).from_cache is True
    raw: dict[str, Any] = {"components": {"schemas": {"X": {"type": "string", "nullable": True}}}}
    assert normalize(raw)["components"]["schemas"]["X"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert raw["components"]["schemas"]["X"] == {"type": "string", "nullable": True}


# --------------------------------------------------------------------------------------------------
# Valid payloads pass, broken payloads fail
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("schema", "payload"), [(s, p) for _, s, p in VALID], ids=[i for i, _, _ in VALID])
def test_valid_payloads_pass(validator: SchemaValidator, schema: str, payload: Any) -> None:
    assert validator.errors(schema, payload) == []
    assert validator.is_valid(schema, payload)
    assert_valid(schema, payload)


@pytest.mark.parametrize(
    ("schema", "payload", "expected"), [(s, p, e) for _, s, p, e in INVALID], ids=[i for i, *_ in INVALID]
)
def test_broken_payloads_fail(validator: SchemaValidator, schema: str, payload: Any, expected: str) -> None:
    problems = validator.errors(schema, payload)
    assert problems, f"{schema} accepted a broken payload"
    assert any(expected in p for p in problems), problems
    assert not validator.is_valid(schema, payload)
    # Relaxations only ever widen specific fields; none of these breakages is covered by them.
    assert validator.errors(schema, payload, relaxed=True) != []


def test_normalization_is_what_makes_chunks_pass(validator: SchemaValidator) -> None:
    raw_chunk_schema = copy.deepcopy(validator.spec)
    # Without the nullable fix the published schema would say `finish_reason: {type: string, ...}`.
    choice = raw_chunk_schema["components"]["schemas"]["CreateChatCompletionStreamResponse"]["properties"]
    choice = choice["choices"]["items"]["properties"]
    choice["finish_reason"] = choice["finish_reason"]["anyOf"][0]
    assert SchemaValidator(raw_chunk_schema).errors("CreateChatCompletionStreamResponse", CHUNK_FIRST)


def test_error_messages_are_readable(validator: SchemaValidator) -> None:
    # usage is anyOf[CompletionUsage, null]: the message must point into the closest branch.
    problems = validator.errors("CreateChatCompletionStreamResponse", _with(CHUNK_USAGE, "usage.prompt_tokens", "9"))
    assert len(problems) == 1
    assert problems[0].startswith("$.usage: ")
    assert "[closest: $.usage.prompt_tokens: '9' is not of type 'integer']" in problems[0]

    with pytest.raises(AssertionError) as excinfo:
        assert_valid("CreateChatCompletionResponse", _with(CHAT_COMPLETION, "created", "soon"))
    text = str(excinfo.value)
    assert "'CreateChatCompletionResponse' (strict): 1 error(s)" in text
    assert "$.created: 'soon' is not of type 'integer'" in text
    assert "payload: {" in text and "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT" in text

    with pytest.raises(AssertionError, match=r"chars\)$"):  # long payloads are cut short
        assert_valid("Model", {"id": "x" * 5000})


def test_unknown_schema_name(validator: SchemaValidator) -> None:
    with pytest.raises(KeyError, match="did you mean"):
        validator.errors("CreateChatCompletionResponce", {})


def test_module_shortcuts() -> None:
    assert errors("Model", MODEL) == []
    assert errors("Model", {}) != []


# --------------------------------------------------------------------------------------------------
# Responses stream events
# --------------------------------------------------------------------------------------------------


def test_stream_event_schema(validator: SchemaValidator) -> None:
    assert stream_event_schema("response.output_text.delta") == "ResponseTextDeltaEvent"
    assert stream_event_schema("response.completed") == "ResponseCompletedEvent"
    assert stream_event_schema("error") == "ResponseErrorEvent"
    types = validator.stream_event_types()
    assert len(types) == len(set(types.values())) >= 50
    with pytest.raises(KeyError, match="did you mean"):
        stream_event_schema("response.output_text.deltas")


def test_stream_events_validate_by_type(validator: SchemaValidator) -> None:
    assert assert_valid_stream_event(TEXT_DELTA_EVENT) == "ResponseTextDeltaEvent"
    completed = {"type": "response.completed", "sequence_number": 9, "response": RESPONSE}
    assert assert_valid_stream_event(completed) == "ResponseCompletedEvent"
    # the union itself accepts them too (slower, vaguer errors)
    assert validator.errors("ResponseStreamEvent", TEXT_DELTA_EVENT) == []

    with pytest.raises(AssertionError, match="sequence_number"):
        assert_valid_stream_event(_with(TEXT_DELTA_EVENT, "sequence_number", ...))
    with pytest.raises(AssertionError, match="not an event type"):
        assert_valid_stream_event({"type": "response.bogus"})
    with pytest.raises(AssertionError, match="no string 'type'"):
        assert_valid_stream_event({"delta": "x"})
    broken = {
        "type": "response.completed",
        "sequence_number": 9,
        "response": _with(RESPONSE, "status", "done"),
    }
    with pytest.raises(AssertionError, match=r"\$\.response\.status"):
        assert_valid_stream_event(broken)


# --------------------------------------------------------------------------------------------------
# Opt-in relaxations
# --------------------------------------------------------------------------------------------------

IN_PROGRESS: dict[str, Any] = {
    **RESPONSE,
    "status": "in_progress",
    "completed_at": None,
    "output": [],
    "usage": None,
}
EMBEDDINGS_BASE64: dict[str, Any] = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": "AACAPwAAAEAAAEBA"}],  # [1.0, 2.0, 3.0]
    "model": "text-embedding-3-small",
    "usage": {"prompt_tokens": 5, "total_tokens": 5},
}
STORED_MESSAGES: dict[str, Any] = {
    "object": "list",
    "data": [
        {
            "id": "chatcmpl-abc-0",
            "role": "user",
            "content": "write a haiku",
            "name": None,
            "content_parts": None,
        },
        {"id": "chatcmpl-abc-1", "role": "assistant", "content": "Silent circuits hum", "refusal": None},
    ],
    "first_id": "chatcmpl-abc-0",
    "last_id": "chatcmpl-abc-1",
    "has_more": False,
}
EMPTY_PAGE: dict[str, Any] = {
    "object": "list",
    "data": [],
    "first_id": None,
    "last_id": None,
    "has_more": False,
}

TEXT_COMPLETION_CHUNK: dict[str, Any] = {
    "id": "cmpl-abc",
    "object": "text_completion",
    "created": 1700000000,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [{"text": " Hello", "index": 0, "logprobs": None, "finish_reason": None}],
}
TEXT_COMPLETION_ECHO_LOGPROBS: dict[str, Any] = {
    **TEXT_COMPLETION_CHUNK,
    "choices": [
        {
            "text": "Say hi",
            "index": 0,
            "logprobs": {
                "tokens": ["Say", " hi"],
                "token_logprobs": [None, -1.5],
                "top_logprobs": [None, {" hi": -1.5}],
                "text_offset": [0, 3],
            },
            "finish_reason": "stop",
        }
    ],
}

# (relaxation, schema, payload that only that relaxation admits)
RELAXED_CASES: list[tuple[str, str, Any]] = [
    ("response_user_null", "Response", {**RESPONSE, "user": None}),
    ("response_usage_null", "Response", IN_PROGRESS),
    (
        "system_fingerprint_null",
        "CreateChatCompletionResponse",
        {**CHAT_COMPLETION, "system_fingerprint": None},
    ),
    (
        "system_fingerprint_null",
        "CreateChatCompletionStreamResponse",
        {**CHUNK_FIRST, "system_fingerprint": None},
    ),
    ("embedding_base64", "CreateEmbeddingResponse", EMBEDDINGS_BASE64),
    ("stored_message_roles", "ChatCompletionMessageList", STORED_MESSAGES),
    ("empty_page_null_ids", "ChatCompletionList", EMPTY_PAGE),
    ("empty_page_null_ids", "ChatCompletionMessageList", EMPTY_PAGE),
    ("empty_page_null_ids", "ResponseItemList", EMPTY_PAGE),
    ("text_completion_nulls", "CreateCompletionResponse", TEXT_COMPLETION_CHUNK),
    ("text_completion_nulls", "CreateCompletionResponse", TEXT_COMPLETION_ECHO_LOGPROBS),
]


def test_every_relaxation_is_exercised() -> None:
    assert {name for name, _, _ in RELAXED_CASES} == set(RELAXATIONS)


@pytest.mark.parametrize(
    ("relaxation", "schema", "payload"), RELAXED_CASES, ids=[f"{r}-{s}" for r, s, _ in RELAXED_CASES]
)
def test_relaxations_are_opt_in_and_named(
    validator: SchemaValidator, relaxation: str, schema: str, payload: Any
) -> None:
    assert validator.errors(schema, payload) != [], "strict validation must reject this"
    assert validator.errors(schema, payload, relaxed={relaxation}) == []
    assert validator.errors(schema, payload, relaxed=relaxation) == []  # a lone name works too
    assert validator.errors(schema, payload, relaxed=True) == []
    others = set(RELAXATIONS) - {relaxation}
    assert validator.errors(schema, payload, relaxed=others) != [], "another relaxation must not admit this"
    assert validator.errors(schema, payload) != [], "relaxing must not leak into strict validation"


def test_relaxations_stay_narrow(validator: SchemaValidator) -> None:
    # null ids only on an *empty* page
    page = {**STORED_MESSAGES, "first_id": None}
    assert validator.errors("ChatCompletionMessageList", page, relaxed=True) != []
    # base64 must look like base64; a non-list non-string still fails
    bad = _with(EMBEDDINGS_BASE64, "data.0.embedding", "not base64!")
    assert validator.errors("CreateEmbeddingResponse", bad, relaxed=True) != []
    assert validator.errors("CreateEmbeddingResponse", _with(bad, "data.0.embedding", 1.5), relaxed=True) != []
    # stored messages: roles outside the chat roles still fail
    odd = _with(STORED_MESSAGES, "data.0.role", "narrator")
    assert validator.errors("ChatCompletionMessageList", odd, relaxed=True) != []
    # Response.user relaxed for responses only; the request-side schema keeps `user: string`
    assert validator.errors("CreateModelResponseProperties", {"user": None}, relaxed=True) != []
    # the relaxed copies are new components, not edits of the shared ones
    assert "ModelResponseProperties__relaxed" not in validator.schema_names()
    assert validator.schema("ModelResponseProperties__relaxed", relaxed=True)


def test_unknown_relaxation_is_rejected(validator: SchemaValidator) -> None:
    with pytest.raises(ValueError, match="unknown relaxation"):
        validator.errors("Model", MODEL, relaxed={"everything"})
