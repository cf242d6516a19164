"""`mode: tensors` against a real MLServer 1.7.1 serving Seldon-convention runtimes, through a real `manifold
serve`, with the official `openai` SDK as client. The runtimes decode what Manifold sends on their own (the
oracle for the tensor convention); `fake_response: inspect` makes them answer with what they decoded."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import struct
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from manifold.config import KServeV2Deployment
from manifold.errors import BadGatewayError
from manifold.providers.kserve_v2.provider import KServeV2Provider, TensorsProvider
from tests.conformance.schema import assert_valid
from tests.e2e.conftest import free_port
from tests.e2e.kserve.conftest import text_of, valid_stream
from tests.fakes.mlserver import MLServerProcess

WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
INSPECT = {"fake_response": "inspect"}


def inspected(completion: Any) -> dict[str, Any]:
    return json.loads(completion.choices[0].message.content)  # type: ignore[no-any-return]


def raw_completion(oai: openai.OpenAI, **kwargs: Any) -> dict[str, Any]:
    """Create through the SDK (strict) and return the raw JSON body, validated against OpenAI's schema."""
    response = oai.chat.completions.with_raw_response.create(**kwargs)
    response.parse()
    body: dict[str, Any] = response.http_response.json()
    assert_valid("CreateChatCompletionResponse", body)
    return body


# -- chat, not streamed ------------------------------------------------------------------------------------------


def test_chat_local_runtime_reply(oai: openai.OpenAI) -> None:
    body = raw_completion(oai, model="chat_llm", messages=[{"role": "user", "content": "hello there"}])
    assert body["model"] == "chat_llm"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "echo: hello there", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["id"].startswith("chatcmpl-")


def test_chat_api_runtime_reply_through_output_all(oai: openai.OpenAI) -> None:
    body = raw_completion(
        oai,
        model="chat_llm",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"fake_response": "output_all"},
    )
    assert body["choices"][0]["message"]["content"] == "echo: hi"
    assert body["model"] == "chat_llm"  # the public name, not the runtime's "upstream-llm"
    assert body["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    assert "system_fingerprint" not in body  # null upstream value dropped


def test_the_runtime_decodes_the_conversation_as_sent(oai: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "text", "text": "ünï ✓"}]},
        {"role": "assistant", "content": "A cat."},
        {"role": "user", "content": "Sure?"},
    ]
    completion = oai.chat.completions.create(
        model="chat_llm",
        messages=messages,
        temperature=0.25,
        max_completion_tokens=40,
        stop=["\n"],
        extra_body={**INSPECT, "top_k": 7},
        extra_headers={"x-request-id": "kserve-e2e-1"},
    )
    seen = inspected(completion)
    assert seen["id"] == "kserve-e2e-1"  # the request id travels as the OIP id
    assert seen["messages"] == messages
    options = {"temperature": 0.25, "max_completion_tokens": 40, "stop": ["\n"], **INSPECT, "top_k": 7}
    assert seen["llm_parameters"] == options  # `model` and `messages` are not parameters
    assert seen["kwargs"] == options


def test_one_message_with_an_image_part(oai: openai.OpenAI) -> None:
    parts: list[Any] = [
        {"type": "text", "text": "What is in this image?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
    ]
    completion = oai.chat.completions.create(
        model="chat_llm", messages=[{"role": "user", "content": parts}], extra_body=INSPECT
    )
    assert inspected(completion)["messages"] == [{"role": "user", "content": parts}]


def test_tools_round_trip(oai: openai.OpenAI) -> None:
    first = raw_completion(oai, model="chat_llm", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER])
    choice = first["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call == {
        "id": "call_mlserver_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    history: list[Any] = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_mlserver_1", "content": "18C"},
    ]
    second = raw_completion(oai, model="chat_llm", messages=history, tools=[WEATHER])
    assert second["choices"][0]["message"]["content"] == "tool said: 18C"
    seen = inspected(
        oai.chat.completions.create(
            model="chat_llm",
            messages=history,
            tools=[WEATHER],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            parallel_tool_calls=False,
            extra_body=INSPECT,
        )
    )
    # The convention cannot tell null content from "": a tool-calling assistant turn arrives with "".
    assert seen["messages"] == [history[0], {**history[1], "content": ""}, history[2]]
    assert seen["tools"] == [WEATHER]
    assert seen["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert seen["parallel_tool_calls"] is False
    assert set(seen["llm_parameters"]) == {"fake_response"}  # tools travel as tensors, not parameters


# -- chat, streamed ----------------------------------------------------------------------------------------------


def test_stream_local_runtime(oai: openai.OpenAI, http: httpx.Client) -> None:
    pieces = [
        chunk.choices[0].delta.content or ""
        for chunk in oai.chat.completions.create(
            model="chat_llm", messages=[{"role": "user", "content": "one two three"}], stream=True
        )
        if chunk.choices
    ]
    assert "".join(pieces) == "echo: one two three"
    request = {"model": "chat_llm", "messages": [{"role": "user", "content": "one two three"}], "stream": True}
    chunks = valid_stream(http.post("/v1/chat/completions", json=request))
    assert text_of(chunks) == "echo: one two three"
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert len({c["id"] for c in chunks}) == 1


def test_stream_api_runtime_with_usage(http: httpx.Client) -> None:
    request = {
        "model": "chat_llm",
        "messages": [{"role": "user", "content": "a b"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "fake_response": "output_all",
    }
    chunks = valid_stream(http.post("/v1/chat/completions", json=request))
    assert text_of(chunks) == "echo: a b"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert all(c["usage"] is None for c in chunks[:-1])
    assert all(c["model"] == "chat_llm" for c in chunks)


def test_stream_tool_call_through_the_sdk_helper(oai: openai.OpenAI) -> None:
    with oai.chat.completions.stream(
        model="chat_llm", messages=[{"role": "user", "content": "Weather?"}], tools=[WEATHER]
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].id == "call_mlserver_1"
    assert calls[0].function.name == "get_weather"  # not repeated into "get_weatherget_weather…"
    assert calls[0].function.arguments == '{"city": "Paris"}'
    assert final.choices[0].finish_reason == "tool_calls"


# -- errors ------------------------------------------------------------------------------------------------------


def test_model_error_is_a_400_with_its_message(oai: openai.OpenAI, http: httpx.Client) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="chat_llm", messages=[{"role": "user", "content": "fail:inference"}])
    assert "the fake model refused: fail:inference" in err.value.message
    resp = http.post("/v1/chat/completions", json={"model": "chat_llm", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 200
    bad = http.post(
        "/v1/chat/completions", json={"model": "chat_llm", "messages": [{"role": "user", "content": "fail:inference"}]}
    )
    assert bad.status_code == 400
    assert_valid("ErrorResponse", bad.json())


def test_model_crash_is_a_502(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        oai.chat.completions.create(model="chat_llm", messages=[{"role": "user", "content": "fail:crash"}])
    assert err.value.status_code == 502
    assert "failed with status 500: Internal Server Error" in err.value.message


def test_a_model_the_server_does_not_serve_is_a_502(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        oai.chat.completions.create(model="mlserver-missing", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 502
    assert "Model nope not found" in err.value.message


def test_mlserver_validation_errors_keep_their_detail(http: httpx.Client) -> None:
    # A generate request sent to MLServer, whose /generate wants an InferenceRequest: FastAPI's 422 {"detail"}.
    resp = http.post(
        "/v1/chat/completions", json={"model": "mlserver-generate", "messages": [{"role": "user", "content": "x"}]}
    )
    assert resp.status_code == 422
    assert_valid("ErrorResponse", resp.json())
    assert resp.json()["error"]["message"] == "body.inputs: Field required"


def test_unreachable_server_is_a_502(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as err:
        oai.chat.completions.create(model="kserve-refused", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 502
    assert err.value.code == "upstream_unreachable"


def test_a_stream_the_server_cuts_before_its_first_event_is_a_502(http: httpx.Client) -> None:
    # MLServer sends its 200 and then closes the connection when the runtime raises inside predict_stream; the
    # gateway has not sent anything yet, so the client still gets a status.
    request = {"model": "chat_llm", "messages": [{"role": "user", "content": "fail:inference"}], "stream": True}
    resp = http.post("/v1/chat/completions", json=request)
    assert resp.status_code == 502
    assert_valid("ErrorResponse", resp.json())
    assert "cut the stream" in resp.json()["error"]["message"]


# -- embeddings and images ---------------------------------------------------------------------------------------


def expected_embedding(text: str) -> list[float]:
    """The hash vector the embeddings runtime computes, as FP32 carries it."""
    digest = hashlib.sha256(text.encode()).digest()
    return [struct.unpack("<f", struct.pack("<f", round(b / 255.0, 6)))[0] for b in digest[:8]]


def test_embeddings_float(per_model: Callable[..., openai.OpenAI], http: httpx.Client) -> None:
    client = per_model("embed")
    result = client.embeddings.create(model="embed", input=["hello", "world"], encoding_format="float")
    assert [d.index for d in result.data] == [0, 1]
    for item, text in zip(result.data, ["hello", "world"], strict=True):
        assert item.embedding == pytest.approx(expected_embedding(text), abs=1e-6)
    assert result.model == "embed"
    raw = http.post("/v2/models/embed/infer/embeddings", json={"model": "embed", "input": "hello"})
    assert raw.status_code == 200
    assert_valid("CreateEmbeddingResponse", raw.json())


def test_embeddings_base64_the_sdk_default(per_model: Callable[..., openai.OpenAI], http: httpx.Client) -> None:
    # The SDK asks for base64 unless told otherwise and decodes it after validation, so not strict here.
    result = per_model("embed", strict=False).embeddings.create(model="embed", input="hello")
    assert result.data[0].embedding == pytest.approx(expected_embedding("hello"), abs=1e-6)
    raw = http.post(
        "/v2/models/embed/infer/embeddings", json={"model": "embed", "input": "hi", "encoding_format": "base64"}
    )
    assert_valid("CreateEmbeddingResponse", raw.json(), relaxed={"embedding_base64"})
    decoded = struct.unpack("<8f", base64.b64decode(raw.json()["data"][0]["embedding"]))
    assert list(decoded) == pytest.approx(expected_embedding("hi"), abs=1e-6)


def test_embeddings_token_arrays_are_refused(http: httpx.Client) -> None:
    resp = http.post("/v2/models/embed/infer/embeddings", json={"input": [[1, 2, 3]]})
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == "input"


def test_images(per_model: Callable[..., openai.OpenAI], http: httpx.Client) -> None:
    result = per_model("images").images.generate(model="images", prompt="an otter", n=2)
    assert result.data is not None and len(result.data) == 2
    assert result.data[0].b64_json and result.data[0].revised_prompt == "an otter"
    raw = http.post("/v2/models/images/infer/images/generations", json={"prompt": "a beach"})
    assert raw.status_code == 200
    assert_valid("ImagesResponse", raw.json())


# -- readiness and metadata (the provider itself, against the real server) ---------------------------------------


def test_readiness_and_metadata(mlserver: MLServerProcess) -> None:
    async def probe(model: str, api_base: str = mlserver.url) -> tuple[bool, Any]:
        provider = KServeV2Provider(KServeV2Deployment(model_name=model, api_base=api_base))
        assert isinstance(provider, TensorsProvider)
        await provider.start()
        try:
            ready = await provider.ready()
            try:
                meta: Any = await provider.model_metadata()
            except BadGatewayError as exc:
                meta = exc
            return ready, meta
        finally:
            await provider.aclose()

    ready, meta = asyncio.run(probe("chat_llm"))
    assert ready is True
    assert meta["name"] == "chat_llm" and "inputs" in meta
    ready, meta = asyncio.run(probe("nope"))
    assert ready is False
    assert isinstance(meta, BadGatewayError) and "Model nope not found" in meta.message
    ready, _ = asyncio.run(probe("chat_llm", f"http://127.0.0.1:{free_port()}"))
    assert ready is False


def test_gateway_readiness_lists_each_deployment(http: httpx.Client) -> None:
    resp = http.get("/health/ready")
    assert resp.status_code == 503  # the deliberately broken deployments are not ready
    ready = {d["model"]: d["ready"] for d in resp.json()["deployments"]}
    assert ready["chat_llm"] and ready["embed"] and ready["gen-chatml"]
    assert not ready["mlserver-missing"] and not ready["kserve-refused"]
