"""KServe-style per-model URLs (`/v2/models/{model}/infer/...`), Seldon Core 2's OpenAI scheme, on the gateway."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.kserve.conftest import text_of, valid_stream
from tests.fakes.mlserver import MLServerProcess


def test_the_sdk_with_the_models_base_url(per_model: Callable[..., openai.OpenAI]) -> None:
    client = per_model("chat_llm")
    completion = client.chat.completions.create(model="chat_llm", messages=[{"role": "user", "content": "via url"}])
    assert completion.choices[0].message.content == "echo: via url"
    assert completion.model == "chat_llm"
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in client.chat.completions.create(
            model="chat_llm", messages=[{"role": "user", "content": "a b"}], stream=True
        )
        if c.choices
    )
    assert streamed == "echo: a b"


def test_underscores_are_part_of_the_name(per_model: Callable[..., openai.OpenAI]) -> None:
    # Seldon's check keeps only what precedes the first "_" (its version suffix); here the name is the name.
    completion = per_model("assistant_v1").chat.completions.create(
        model="assistant_v1", messages=[{"role": "user", "content": "x"}]
    )
    assert completion.model == "assistant_v1"
    with pytest.raises(openai.BadRequestError) as err:
        per_model("assistant_v1").chat.completions.create(
            model="assistant", messages=[{"role": "user", "content": "x"}]
        )
    assert err.value.code == "model_mismatch"


def test_a_body_model_that_differs_is_a_400(http: httpx.Client) -> None:
    resp = http.post(
        "/v2/models/chat_llm/infer/chat/completions",
        json={"model": "gen-chatml", "messages": [{"role": "user", "content": "x"}]},
    )
    assert resp.status_code == 400
    body = resp.json()
    assert_valid("ErrorResponse", body)
    assert body["error"]["param"] == "model" and body["error"]["code"] == "model_mismatch"
    assert "'gen-chatml'" in body["error"]["message"] and "'chat_llm'" in body["error"]["message"]
    for path in ("/v2/models/embed/infer/embeddings", "/v2/models/images/infer/images/generations"):
        resp = http.post(path, json={"model": "other", "input": "x", "prompt": "x"})
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "model_mismatch"


def test_a_body_without_model_takes_the_paths(http: httpx.Client) -> None:
    resp = http.post(
        "/v2/models/chat_llm/infer/chat/completions", json={"messages": [{"role": "user", "content": "y"}]}
    )
    assert resp.status_code == 200
    assert_valid("CreateChatCompletionResponse", resp.json())
    assert resp.json()["model"] == "chat_llm"
    resp = http.post(
        "/v2/models/gen-chatml/infer/chat/completions", json={"messages": [{"role": "user", "content": "z"}]}
    )
    assert resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "echo: z"


def test_infer_stream_always_streams(http: httpx.Client, per_model: Callable[..., openai.OpenAI]) -> None:
    resp = http.post(
        "/v2/models/chat_llm/infer_stream/chat/completions", json={"messages": [{"role": "user", "content": "s t"}]}
    )
    assert text_of(valid_stream(resp)) == "echo: s t"
    resp = http.post(
        "/v2/models/gen-chatml/infer_stream/chat/completions",
        json={"messages": [{"role": "user", "content": "u"}], "stream": False},
    )
    assert text_of(valid_stream(resp)) == "echo: u"
    result = per_model("embed", stream=True).embeddings.create(model="embed", input="e", encoding_format="float")
    assert len(result.data[0].embedding) == 8


def test_unknown_model_and_wrong_method(http: httpx.Client) -> None:
    resp = http.post("/v2/models/nope/infer/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "model_not_found"
    resp = http.get("/v2/models/chat_llm/infer/chat/completions")
    assert resp.status_code == 405
    resp = http.post("/v2/models/chat_llm/infer/completions", json={})
    assert resp.status_code == 404


def test_invalid_bodies_name_the_parameter(http: httpx.Client) -> None:
    resp = http.post("/v2/models/chat_llm/infer/chat/completions", json={"messages": []})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "messages"
    resp = http.post("/v2/models/embed/infer/embeddings", json={"input": "x", "encoding_format": "hex"})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "encoding_format"
    resp = http.post("/v2/models/images/infer/images/generations", json={"n": 1})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
    resp = http.post("/v2/models/chat_llm/infer/chat/completions", content=b"{not json")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_json"


def test_the_urls_can_be_turned_off(mlserver: MLServerProcess, tmp_path: Path) -> None:
    config = {
        "model_list": [{"model_name": "chat_llm", "provider": "kserve_v2", "api_base": mlserver.url}],
        "server": {"kserve_urls": False},
    }
    proc = ManifoldProcess(config, tmp_path)
    try:
        with httpx.Client(base_url=proc.url, timeout=30) as http:
            resp = http.post("/v2/models/chat_llm/infer/chat/completions", json={"messages": []})
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "unknown_url"
            ok = http.post(
                "/v1/chat/completions", json={"model": "chat_llm", "messages": [{"role": "user", "content": "q"}]}
            )
            assert ok.status_code == 200
    finally:
        proc.stop()


def test_model_names_with_slashes(tmp_path: Path, mlserver: MLServerProcess) -> None:
    config = {
        "model_list": [
            {"model_name": "org/chat:v1", "provider": "kserve_v2", "api_base": mlserver.url, "model": "chat_llm"}
        ]
    }
    proc = ManifoldProcess(config, tmp_path)
    try:
        with openai.OpenAI(
            base_url=f"{proc.url}/v2/models/org/chat:v1/infer",
            api_key="x",
            max_retries=0,
            _strict_response_validation=True,
        ) as client:
            completion = client.chat.completions.create(
                model="org/chat:v1", messages=[{"role": "user", "content": "w"}]
            )
        assert completion.model == "org/chat:v1" and completion.choices[0].message.content == "echo: w"
    finally:
        proc.stop()
