"""Upstream answers of the wrong shape: every normalizer checks the answer against its type before reading it,
and what does not fit is an `UpstreamShapeError` (502) naming where, never a crash or an emptied "success"."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from manifold import _json
from manifold.api.chat_response import ChunkShaper, normalize_completion
from manifold.api.completions import TextChunkShaper, normalize_text_completion
from manifold.api.embeddings import normalize_embeddings
from manifold.api.images import normalize_images
from manifold.api.upstream import UpstreamShapeError
from manifold.errors import BadGatewayError

COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "up",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "hi",
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


def _with(obj: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


WRONG_COMPLETIONS = [
    (("choices", 0, "message", "tool_calls"), "abc", "choices[0].message.tool_calls"),
    (("choices",), ["x", 1, None], "choices[0]"),
    (("choices",), "hello", "choices"),
    (("choices", 0, "message"), "hi", "choices[0].message"),
    (("choices", 0, "message", "content"), 12345, "choices[0].message.content"),
    (("choices", 0, "index"), "zero", "choices[0].index"),
    (("choices", 0, "finish_reason"), 3, "choices[0].finish_reason"),
    (("choices", 0, "message", "tool_calls", 0, "function"), "f", "choices[0].message.tool_calls[0].function"),
    (("choices", 0, "message", "tool_calls", 0, "function", "arguments"), {}, "arguments"),
    (("choices", 0, "logprobs"), {"content": [{"token": 1}]}, "choices[0].logprobs.content[0].token"),
    (("usage",), "lots", "usage"),
    (("usage", "prompt_tokens"), "12", "usage.prompt_tokens"),
    (("id",), 7, "id"),
]


@pytest.mark.parametrize(("path", "value", "where"), WRONG_COMPLETIONS)
def test_wrong_shaped_completion_is_a_502_naming_where(path: tuple[Any, ...], value: Any, where: str) -> None:
    with pytest.raises(UpstreamShapeError) as info:
        normalize_completion(_with(COMPLETION, path, value), "public")
    assert info.value.status == 502 and isinstance(info.value, BadGatewayError)
    assert where in info.value.message and "schema" in info.value.message
    assert info.value.to_dict()["error"]["type"] == "upstream_error"


def test_missing_choices_and_non_objects_are_502() -> None:
    for bad in ({"id": "x"}, [], "text", None, {"choices": [{}]}):
        with pytest.raises(UpstreamShapeError):
            normalize_completion(bad, "public")  # type: ignore[arg-type]


def test_lenient_where_upstreams_differ() -> None:
    """Extra fields kept, optional fields missing or null: still a good answer."""
    obj = {
        "choices": [{"message": {"content": None, "reasoning_content": "hmm"}, "finish_reason": None}],
        "usage": None,
        "created": None,
        "timings": {"x": 1},
    }
    out = normalize_completion(obj, "public")
    assert out["choices"][0]["message"]["reasoning_content"] == "hmm" and out["timings"] == {"x": 1}
    assert out["choices"][0]["finish_reason"] == "stop" and "usage" not in out


CHUNK: dict[str, Any] = {
    "id": "c",
    "created": 1,
    "choices": [{"index": 0, "delta": {"content": "x", "tool_calls": [{"index": 0, "function": {"name": "f"}}]}}],
}


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (("choices",), "hello", "choices"),
        (("choices",), ["x", 1, None], "choices[0]"),
        (("choices", 0, "delta"), "hi", "choices[0].delta"),
        (("choices", 0, "delta", "content"), 12345, "choices[0].delta.content"),
        (("choices", 0, "index"), "zero", "choices[0].index"),
        (("choices", 0, "delta", "tool_calls"), "abc", "choices[0].delta.tool_calls"),
        (("choices", 0, "delta", "tool_calls", 0, "function", "arguments"), 5, "arguments"),
        (("usage",), [], "usage"),
    ],
)
def test_wrong_shaped_chunk_is_a_502_naming_where(path: tuple[Any, ...], value: Any, where: str) -> None:
    with pytest.raises(UpstreamShapeError) as info:
        ChunkShaper("public", include_usage=True).shape(_with(CHUNK, path, value))
    assert where in info.value.message


def test_good_chunk_still_shapes() -> None:
    out = ChunkShaper("public", include_usage=False).shape(copy.deepcopy(CHUNK))
    assert out is not None and out["choices"][0]["delta"]["role"] == "assistant"
    assert out["choices"][0]["delta"]["tool_calls"][0] == {
        "index": 0,
        "function": {"name": "f", "arguments": ""},
        "type": "function",
    }


@pytest.mark.parametrize(
    "bad",
    [
        {"choices": "hello"},
        {"choices": [{"text": 12345}]},
        {"choices": [{"text": "a", "index": "zero"}]},
        {"choices": [{"text": "a", "logprobs": "junk"}]},
        {"choices": [{"text": "a", "logprobs": {"tokens": "abc"}}]},
        {"id": "x"},
    ],
)
def test_wrong_shaped_text_completion(bad: dict[str, Any]) -> None:
    with pytest.raises(UpstreamShapeError):
        normalize_text_completion(copy.deepcopy(bad), "public")
    if "choices" in bad:
        with pytest.raises(UpstreamShapeError):
            TextChunkShaper("public", include_usage=False).shape(copy.deepcopy(bad))


@pytest.mark.parametrize(
    "bad",
    [
        {"data": "x"},
        {"data": ["x", 1]},
        {"data": [{"embedding": ["a"]}]},
        {"data": [{"embedding": [0.1], "index": "zero"}]},
        {"data": [{}]},
        {"data": [{"embedding": [0.1]}], "usage": "lots"},
        {"model": "m"},
    ],
)
def test_wrong_shaped_embeddings(bad: dict[str, Any]) -> None:
    with pytest.raises(UpstreamShapeError):
        normalize_embeddings(copy.deepcopy(bad), "public", "float")


@pytest.mark.parametrize(
    "bad",
    [{"data": "x"}, {"data": [1]}, {"data": [{"url": 5}]}, {"data": [{"revised_prompt": "only"}]}, {"created": 1}],
)
def test_wrong_shaped_images(bad: dict[str, Any]) -> None:
    with pytest.raises(UpstreamShapeError):
        normalize_images(copy.deepcopy(bad))


def test_images_and_embeddings_that_fit_still_pass() -> None:
    assert normalize_images({"created": 1.5, "data": [{"url": "u", "b64_json": None}]}) == {
        "created": 1,
        "data": [{"url": "u"}],
    }
    out = normalize_embeddings({"data": [{"embedding": [1, 0.5]}]}, "public", "float")
    assert out["data"] == [{"embedding": [1, 0.5], "object": "embedding", "index": 0}]


# -- nesting (issue 10 §3) ---------------------------------------------------------------------------------------


def _nested(depth: int) -> bytes:
    return b'{"x":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b', "s": "[[[{{\\"["}'


@pytest.mark.parametrize("depth", [2, 50, _json.MAX_REQUEST_DEPTH])
def test_request_nesting_up_to_the_limit_decodes(depth: int) -> None:
    assert _json.decode_request(_nested(depth))["s"] == '[[[{{"['


@pytest.mark.parametrize("depth", [_json.MAX_REQUEST_DEPTH + 1, 999, 1000, 5000, 200_000])
def test_request_nesting_past_the_limit_is_a_nesting_error(depth: int) -> None:
    with pytest.raises(_json.NestingError):
        _json.decode_request(_nested(depth))


def test_any_decode_turns_recursion_into_a_decode_error() -> None:
    with pytest.raises(_json.DecodeError):
        _json.decode(b"[" * 100_000 + b"]" * 100_000)


@pytest.mark.parametrize(
    ("data", "depth"),
    [
        (b'{"a":[{"b":[1,2,{}]},[]],"c":"]]]]"}', 5),
        (b"[]", 1),
        (b'"[[["', 0),
        (b'[[],[[]],{"k":{"k":[]}}]', 4),
    ],
)
def test_nesting_measure(data: bytes, depth: int) -> None:
    assert not _json.nesting_exceeds(data, depth)
    if depth:
        assert _json.nesting_exceeds(data, depth - 1)
