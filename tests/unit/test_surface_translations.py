"""Pure translations of the legacy completions / embeddings / images surface: the chat mapping of legacy
completions, base64 vectors, the normalizers and the request rules (no I/O)."""

from __future__ import annotations

import array
import base64
import copy
import struct
from typing import Any

import pytest

from manifold.api.completions import (
    CompletionRequest,
    TextChunkShaper,
    cross_field_problems,
    normalize_text_completion,
    prompt_problems,
    split_prompts,
)
from manifold.api.embeddings import (
    MAX_TOTAL_TOKENS,
    base64_to_floats,
    floats_to_base64,
    input_problems,
    normalize_embeddings,
)
from manifold.api.images import ImageRequest, default_model, family_of, family_problems, normalize_images
from manifold.api.upstream import UpstreamShapeError
from manifold.errors import UnsupportedError
from manifold.providers.completions_via_chat import (
    ChunkMapper,
    add_usage,
    check_mappable,
    choices_from_chat,
    to_chat,
)
from tests.conformance.schema import assert_valid

# -- completions → chat ----------------------------------------------------------------------------------------


def test_to_chat_maps_the_prompt_and_keeps_the_rest() -> None:
    body = {
        "model": "m",
        "prompt": ["a", "b"],
        "n": 2,
        "stop": "\n",
        "temperature": 0.1,
        "logprobs": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
        "top_k": 4,
    }
    before = copy.deepcopy(body)
    out = to_chat(body, "b")
    assert body == before  # never mutated: a retry re-runs it
    assert out == {
        "model": "m",
        "messages": [{"role": "user", "content": "b"}],
        "n": 2,
        "stop": "\n",
        "temperature": 0.1,
        "logprobs": True,
        "top_logprobs": 3,
        "stream": True,
        "stream_options": {"include_usage": True},
        "top_k": 4,
        "max_tokens": 16,
    }
    assert to_chat({"model": "m", "prompt": "x", "max_tokens": 5}, "x")["max_tokens"] == 5


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": [1, 2]}, "prompt"),
        ({"prompt": [[1], [2]]}, "prompt"),
        ({"prompt": "x", "suffix": ""}, "suffix"),
        ({"prompt": "x", "best_of": 2}, "best_of"),
        ({"prompt": "x", "echo": True, "logprobs": 0}, "echo"),
        ({"prompt": "x", "max_tokens": 0}, "max_tokens"),
    ],
)
def test_what_chat_cannot_express_is_a_400(body: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedError) as info:
        check_mappable(body, "m")
    assert info.value.param == param and "'m'" in info.value.message


def test_mappable_requests_pass() -> None:
    check_mappable({"prompt": ["a", "b"], "best_of": 2, "n": 2, "echo": True, "suffix": None}, "m")


CHAT_LOGPROBS = {
    "content": [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [{"token": "Hi", "logprob": -0.1}]},
        {"token": "!", "logprob": -0.5, "bytes": [33], "top_logprobs": [{"token": "!", "logprob": -0.5}]},
    ],
    "refusal": None,
}


def test_choices_from_chat_indexes_echoes_and_maps_logprobs() -> None:
    completion = {
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi!"}, "finish_reason": "stop"},
            {
                "index": 1,
                "message": {"role": "assistant", "content": None},
                "finish_reason": "tool_calls",
                "logprobs": CHAT_LOGPROBS,
            },
        ]
    }
    out = choices_from_chat(completion, "Say:", True, 4)
    assert out[0] == {"text": "Say:Hi!", "index": 4, "logprobs": None, "finish_reason": "stop"}
    assert out[1]["index"] == 5 and out[1]["text"] == "Say:" and out[1]["finish_reason"] == "stop"
    assert out[1]["logprobs"] == {
        "tokens": ["Hi", "!"],
        "token_logprobs": [-0.1, -0.5],
        "top_logprobs": [{"Hi": -0.1}, {"!": -0.5}],
        "text_offset": [4, 6],  # after the echoed prompt
    }
    whole = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": out}
    assert_valid("CreateCompletionResponse", whole)


def test_chunk_mapper_echoes_once_skips_empty_deltas_and_offsets_logprobs() -> None:
    mapper = ChunkMapper("P ", True, 2)

    def chunk(delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
        return {"id": "chatcmpl-x", "created": 5, "model": "up", "choices": [choice]}

    first = mapper.chunk_from_chat(chunk({"role": "assistant", "content": ""}))
    assert first is not None and first["choices"][0]["text"] == "P " and first["choices"][0]["index"] == 2
    assert first["id"] is None  # the stream gets a cmpl- id of its own
    assert mapper.chunk_from_chat(chunk({"content": ""})) is None
    second = mapper.chunk_from_chat(chunk({"content": "Hi!"}, logprobs=CHAT_LOGPROBS))
    assert second is not None and second["choices"][0]["text"] == "Hi!"
    assert second["choices"][0]["logprobs"]["text_offset"] == [2, 4]
    last = mapper.chunk_from_chat(chunk({}, "length"))
    assert last is not None and last["choices"][0] == {
        "text": "",
        "index": 2,
        "logprobs": None,
        "finish_reason": "length",
    }
    assert mapper.chunk_from_chat({"choices": [], "usage": {"prompt_tokens": 1}}) is None


def test_usage_is_summed() -> None:
    total = add_usage(None, {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5})
    total = add_usage(total, {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2})
    assert total == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert add_usage(total, None) == total


# -- text_completion normalizers -------------------------------------------------------------------------------


def test_normalize_text_completion() -> None:
    obj = {
        "id": None,
        "created": 1.5,
        "model": "upstream",
        "system_fingerprint": None,
        "choices": [{"text": None, "finish_reason": "eos", "logprobs": None}],
        "usage": {"prompt_tokens": 1.0, "completion_tokens": 2, "total_tokens": 3, "prompt_tokens_details": None},
    }
    out = normalize_text_completion(obj, "public")
    assert out["id"].startswith("cmpl-") and out["model"] == "public" and out["created"] == 1
    assert out["choices"] == [{"text": "", "finish_reason": "stop", "logprobs": None, "index": 0}]
    assert "system_fingerprint" not in out and out["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }
    assert_valid("CreateCompletionResponse", out)


def test_text_chunk_shaper_holds_usage_for_the_end() -> None:
    shaper = TextChunkShaper("public", include_usage=True)
    a = shaper.shape(
        {"id": "cmpl-a", "created": 9, "choices": [{"text": "x", "index": 0, "finish_reason": None}], "usage": None}
    )
    b = shaper.shape({"id": "other", "choices": [{"text": "y", "index": 0, "finish_reason": "max_tokens"}]})
    assert (
        shaper.shape({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}}) is None
    )
    assert a is not None and b is not None
    assert (a["id"], b["id"], a["created"], b["created"], a["model"]) == ("cmpl-a", "cmpl-a", 9, 9, "public")
    assert "usage" not in a and a["choices"][0]["logprobs"] is None
    assert b["choices"][0]["finish_reason"] == "length"
    end = shaper.usage_chunk()
    assert end is not None and end["choices"] == [] and end["usage"]["total_tokens"] == 3
    for chunk in (a, b, end):
        assert_valid("CreateCompletionResponse", chunk, relaxed={"text_completion_nulls"})
    assert TextChunkShaper("p", include_usage=False).usage_chunk() is None


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [
        ("x", None),
        (None, None),
        (["a", "b"], None),
        ([1, 2], None),
        ([[1], [2, 3]], None),
        ([], "prompt"),
        (["a", 2], "prompt[1]"),
        ([1, "a"], "prompt[1]"),
        ([1, True], "prompt[1]"),
        ([[1], 2], "prompt[1]"),
        ([[1], []], "prompt[1]"),
        ([[1], [None]], "prompt[1][0]"),
        ([{"a": 1}], "prompt[0]"),
    ],
)
def test_prompt_shapes(prompt: Any, problem: str | None) -> None:
    found = prompt_problems(prompt)
    assert (found[0] if found else None) == problem


def test_split_prompts() -> None:
    assert split_prompts("x") == ["x"]
    assert split_prompts(None) == [""]
    assert split_prompts([1, 2]) == [[1, 2]]
    assert split_prompts([[1], [2]]) == [[1], [2]]
    assert split_prompts(["a", "b"]) == ["a", "b"]


def test_best_of_rules() -> None:
    def problem(**kw: Any) -> str | None:
        found = cross_field_problems(CompletionRequest(model="m", prompt="x", **kw))
        return found[0] if found else None

    assert problem(best_of=3, n=2) is None
    assert problem(best_of=2, n=3) == "best_of"
    assert problem(best_of=2, stream=True) == "best_of"
    assert problem(best_of=1, n=3) is None  # 1 (the default) means no ranking


# -- embeddings ------------------------------------------------------------------------------------------------


def test_base64_is_little_endian_float32() -> None:
    encoded = floats_to_base64([1.0, -2.5, 0.125])
    assert base64.b64decode(encoded) == struct.pack("<3f", 1.0, -2.5, 0.125)
    assert array.array("f", base64.b64decode(encoded)).tolist() == [1.0, -2.5, 0.125]  # how the SDK decodes
    assert base64_to_floats(encoded) == [1.0, -2.5, 0.125]
    for bad in ("not base64!", base64.b64encode(b"abc").decode()):
        with pytest.raises(ValueError):
            base64_to_floats(bad)


def test_normalize_embeddings_converts_to_the_requested_format() -> None:
    def answer(vector: Any) -> dict[str, Any]:
        return {"data": [{"embedding": vector}], "model": "up", "usage": {"prompt_tokens": 4}}

    as_b64 = normalize_embeddings(answer([0.5, 0.25]), "pub", "base64")
    assert as_b64["data"][0] == {"embedding": floats_to_base64([0.5, 0.25]), "object": "embedding", "index": 0}
    assert as_b64["usage"] == {"prompt_tokens": 4, "total_tokens": 4} and as_b64["model"] == "pub"
    assert_valid("CreateEmbeddingResponse", as_b64, relaxed={"embedding_base64"})
    as_floats = normalize_embeddings(answer(floats_to_base64([0.5, 0.25])), "pub", "float")
    assert as_floats["data"][0]["embedding"] == [0.5, 0.25]
    assert_valid("CreateEmbeddingResponse", as_floats)
    with pytest.raises(UpstreamShapeError, match=r"data\[0\]\.embedding"):
        normalize_embeddings(answer(7), "pub", "float")
    with pytest.raises(UpstreamShapeError, match="not base64"):
        normalize_embeddings(answer("%%%"), "pub", "float")


def test_input_limits() -> None:
    assert input_problems("x") is None
    assert input_problems([[1] * 1000] * (MAX_TOTAL_TOKENS // 1000)) is None
    found = input_problems([[1] * 1000] * (MAX_TOTAL_TOKENS // 1000 + 1))
    assert found is not None and found[0] == "input" and "300000" in found[1]
    assert input_problems(["a"] * 2048) is None
    too_many = input_problems(["a"] * 2049)
    assert too_many is not None and too_many[0] == "input" and "2048" in too_many[1]


# -- images ----------------------------------------------------------------------------------------------------


def test_families() -> None:
    assert family_of("dall-e-2") is not None and family_of("DALL-E-3") is not None
    assert family_of("gpt-image-1-mini") == family_of("gpt-image-1.5")
    assert family_of("gpt-image-2-2026-04-21") != family_of("gpt-image-1")
    assert family_of("flux-schnell") is None


def test_default_model_follows_the_spec() -> None:
    assert default_model(ImageRequest(prompt="p")) == "dall-e-2"
    assert default_model(ImageRequest(prompt="p", background="opaque")) == "gpt-image-1"
    assert default_model(ImageRequest(prompt="p", model="x")) == "x"


def test_unknown_families_get_the_generic_rules_only() -> None:
    assert family_problems(ImageRequest(prompt="p", size="777x333", style="vivid", n=4), "flux") is None
    found = family_problems(ImageRequest(prompt="p", size="big"), "flux")
    assert found is not None and found[0] == "size"


def test_normalize_images_drops_nulls() -> None:
    out = normalize_images({"created": 2.0, "data": [{"url": "https://x/1.png", "b64_json": None}], "usage": None})
    assert out == {"created": 2, "data": [{"url": "https://x/1.png"}]}
    assert_valid("ImagesResponse", out)
