"""Embeddings (`POST /embeddings`) through a real `manifold serve`, driven by the official `openai` SDK against
the fake upstream. The SDK asks for base64 by default and decodes little-endian float32; base64 bodies are
judged with the one relaxation CLIENTS.md §1.3 documents for them (`embedding_base64`).

Calls that get base64 back use a default (non-strict) SDK client: the SDK validates the body against its own
`embedding: List[float]` type *before* decoding the base64, so a strict client rejects OpenAI's own answers to
the SDK's default request. Float answers are read with the strict client.
"""

from __future__ import annotations

import array
import base64
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.test_errors import check_envelope
from tests.fakes.openai_surface import vector_for
from tests.fakes.openai_upstream import FakeUpstream


@pytest.fixture
def lenient(gateway: ManifoldProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key="sk-client", max_retries=0) as c:
        yield c


def decode(text: str) -> list[float]:
    return array.array("f", base64.b64decode(text)).tolist()


def last_body(fake: FakeUpstream) -> Any:
    return [r for r in fake.requests if r.path.endswith("/embeddings")][-1].body


def test_sdk_default_asks_base64_and_decodes(lenient: openai.OpenAI, http: httpx.Client, fake: FakeUpstream) -> None:
    fake.clear()
    result = lenient.embeddings.create(model="fake-echo", input=["hello world", "second"])
    assert last_body(fake) == {
        "model": "upstream-model",
        "input": ["hello world", "second"],
        "encoding_format": "base64",  # the SDK's default, forwarded as sent
    }
    assert result.model == "fake-echo" and result.object == "list"
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[0].embedding == vector_for("hello world")
    assert result.data[1].embedding == vector_for("second")
    assert result.usage.prompt_tokens == 3 and result.usage.total_tokens == 3
    raw = http.post(
        "/v1/embeddings", json={"model": "fake-echo", "input": "hello world", "encoding_format": "base64"}
    ).json()
    assert_valid("CreateEmbeddingResponse", raw, relaxed={"embedding_base64"})
    assert decode(raw["data"][0]["embedding"]) == vector_for("hello world")


def test_float_format(client: openai.OpenAI, http: httpx.Client) -> None:
    result = client.embeddings.create(model="fake-echo", input="hello world", encoding_format="float")
    assert result.data[0].embedding == vector_for("hello world")
    raw = http.post("/v1/embeddings", json={"model": "fake-echo", "input": "hello world"}).json()
    assert_valid("CreateEmbeddingResponse", raw)  # strict: floats
    assert raw["data"][0]["embedding"] == vector_for("hello world")


def test_explicit_base64_is_left_to_the_caller(lenient: openai.OpenAI) -> None:
    result = lenient.embeddings.create(model="fake-echo", input="abc", encoding_format="base64")
    encoded: Any = result.data[0].embedding
    assert isinstance(encoded, str) and decode(encoded) == vector_for("abc")


def test_floats_from_the_backend_are_converted_to_base64(
    lenient: openai.OpenAI, http: httpx.Client, fake: FakeUpstream
) -> None:
    fake.clear()
    result = lenient.embeddings.create(model="fake-floats_only", input=["x", "y"])  # SDK asks base64
    assert [d.embedding for d in result.data] == [vector_for("x"), vector_for("y")]
    raw = http.post(
        "/v1/embeddings", json={"model": "fake-floats_only", "input": "x", "encoding_format": "base64"}
    ).json()
    assert isinstance(raw["data"][0]["embedding"], str)
    assert_valid("CreateEmbeddingResponse", raw, relaxed={"embedding_base64"})


def test_dimensions_and_user_are_forwarded(lenient: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.clear()
    result = lenient.embeddings.create(model="fake-echo", input="abc", dimensions=5, user="u-1")
    assert len(result.data[0].embedding) == 5
    body = last_body(fake)
    assert body["dimensions"] == 5 and body["user"] == "u-1"


@pytest.mark.parametrize(
    ("value", "count", "tokens"),
    [([1212, 318, 257], 1, 3), ([[1, 2], [3], [4, 5, 6]], 3, 6)],
    ids=["token-array", "token-arrays"],
)
def test_token_inputs(lenient: openai.OpenAI, fake: FakeUpstream, value: Any, count: int, tokens: int) -> None:
    fake.clear()
    result = lenient.embeddings.create(model="fake-echo", input=value)
    assert len(result.data) == count
    assert result.usage.prompt_tokens == tokens
    assert last_body(fake)["input"] == value


def test_azure_path(lenient: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.clear()
    lenient.embeddings.create(model="azure-gpt", input="z")
    got = fake.requests[-1]
    assert got.path.endswith("/openai/deployments/my-deployment/embeddings")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-echo"}, "input"),
        ({"input": "x"}, "model"),
        ({"model": "fake-echo", "input": ""}, "input"),
        ({"model": "fake-echo", "input": []}, "input"),
        ({"model": "fake-echo", "input": ["a"] * 2049}, "input"),
        ({"model": "fake-echo", "input": ["a", ""]}, "input[1]"),
        ({"model": "fake-echo", "input": ["a", 1]}, "input[1]"),
        ({"model": "fake-echo", "input": [[1], []]}, "input[1]"),
        ({"model": "fake-echo", "input": [[1], ["x"]]}, "input[1][0]"),
        ({"model": "fake-echo", "input": 5}, "input"),
        ({"model": "fake-echo", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "fake-echo", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "fake-echo", "input": "x", "user": 7}, "user"),
    ],
)
def test_validation_names_the_parameter(
    http: httpx.Client, fake: FakeUpstream, body: dict[str, Any], param: str
) -> None:
    fake.clear()
    check_envelope(http.post("/v1/embeddings", json=body), 400, param)
    assert not fake.requests


def test_upstream_error_passes_through(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="fake-status:429", input="x")
