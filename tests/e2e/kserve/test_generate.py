"""`mode: generate` against a fake generate-extension server that checks every request against
`GenerateRequest`, through a real `manifold serve`, with the official `openai` SDK as client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.kserve.conftest import text_of, valid_stream
from tests.fakes.generate_upstream import FakeGenerateServer

CHATML_PROMPT = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
CONVERSATION: list[Any] = [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]


@pytest.fixture(autouse=True)
def every_request_was_valid(generate_server: FakeGenerateServer) -> Iterator[None]:
    generate_server.problems.clear()
    yield
    assert generate_server.problems == []


def test_chat_template_rendered_by_the_gateway(oai: openai.OpenAI, generate_server: FakeGenerateServer) -> None:
    response = oai.chat.completions.with_raw_response.create(
        model="gen-chatml",
        messages=CONVERSATION,
        max_tokens=32,
        temperature=0.2,
        top_p=0.5,
        stop="\n\n",
        seed=1,
        extra_body={"top_k": 4},
    )
    completion = response.parse()
    assert_valid("CreateChatCompletionResponse", response.http_response.json())
    assert completion.choices[0].message.content == "echo: Hi there"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gen-chatml"
    call = generate_server.last("echo")
    assert call.stream is False
    assert call.body == {
        "text_input": CHATML_PROMPT,
        "parameters": {"max_tokens": 32, "temperature": 0.2, "top_p": 0.5, "seed": 1, "stop": ["\n\n"], "top_k": 4},
    }
    assert "id" not in call.body  # the generate request has no id field


def test_stream_with_done_events(oai: openai.OpenAI, http: httpx.Client, generate_server: FakeGenerateServer) -> None:
    pieces = [
        c.choices[0].delta.content or ""
        for c in oai.chat.completions.create(model="gen-chatml", messages=CONVERSATION, stream=True)
        if c.choices
    ]
    assert "".join(pieces) == "echo: Hi there"
    call = generate_server.last("echo")
    assert call.stream is True and call.body["parameters"] == {"stream": True}
    chunks = valid_stream(
        http.post("/v1/chat/completions", json={"model": "gen-chatml", "messages": CONVERSATION, "stream": True})
    )
    assert text_of(chunks) == "echo: Hi there"
    assert [c["choices"][0]["finish_reason"] for c in chunks][-1] == "stop"


def test_custom_jinja_template(oai: openai.OpenAI, generate_server: FakeGenerateServer) -> None:
    oai.chat.completions.create(model="gen-jinja", messages=CONVERSATION)
    assert generate_server.last("echo").body["text_input"] == (
        "<system>Be brief.</system><user>Hi there</user><assistant>"
    )


def test_without_template_the_single_user_message_goes_as_it_is(
    oai: openai.OpenAI, generate_server: FakeGenerateServer
) -> None:
    completion = oai.chat.completions.create(model="gen-bare", messages=[{"role": "user", "content": "plain"}])
    assert completion.choices[0].message.content == "echo: plain"
    assert generate_server.last("echo").body == {"text_input": "plain"}
    with pytest.raises(openai.BadRequestError) as err:
        oai.chat.completions.create(model="gen-bare", messages=CONVERSATION)
    assert err.value.param == "messages" and "chat_template" in err.value.message  # type: ignore[attr-defined]


def test_options_at_the_top_level_for_triton(
    oai: openai.OpenAI, http: httpx.Client, generate_server: FakeGenerateServer
) -> None:
    completion = oai.chat.completions.create(model="gen_triton", messages=CONVERSATION, max_completion_tokens=9)
    assert completion.choices[0].message.content == "echo: Hi there"
    assert generate_server.last("triton").body == {"text_input": CHATML_PROMPT, "max_tokens": 9}
    # Triton's events carry no `done`: the gateway ends the stream when the body ends.
    request = {"model": "gen_triton", "messages": CONVERSATION, "stream": True}
    chunks = valid_stream(http.post("/v1/chat/completions", json=request))
    assert text_of(chunks) == "echo: Hi there"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert generate_server.last("triton").body == {"text_input": CHATML_PROMPT, "stream": True}


def test_model_version_in_the_url(oai: openai.OpenAI, generate_server: FakeGenerateServer) -> None:
    oai.chat.completions.create(model="gen-versioned", messages=[{"role": "user", "content": "v"}])
    assert generate_server.last("echo").version == "7"


def test_finish_reason_and_usage_from_the_server(oai: openai.OpenAI, http: httpx.Client) -> None:
    completion = oai.chat.completions.create(model="gen-usage", messages=[{"role": "user", "content": "a b c"}])
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.prompt_tokens == 7
    assert completion.usage.completion_tokens == 4
    request = {
        "model": "gen-usage",
        "messages": [{"role": "user", "content": "a b c"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks = valid_stream(http.post("/v1/chat/completions", json=request))
    assert text_of(chunks) == "echo: a b c"
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["total_tokens"] == 8


def test_a_json_answer_to_a_stream_request_is_replayed_as_chunks(http: httpx.Client) -> None:
    request = {"model": "gen-json-stream", "messages": [{"role": "user", "content": "x y"}], "stream": True}
    chunks = valid_stream(http.post("/v1/chat/completions", json=request))
    assert text_of(chunks) == "echo: x y"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# -- errors ------------------------------------------------------------------------------------------------------


def test_generate_error_statuses(oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.UnprocessableEntityError) as unprocessable:
        oai.chat.completions.create(model="gen-422", messages=messages)
    assert unprocessable.value.body == {
        "message": "fake 422",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    with pytest.raises(openai.InternalServerError) as failed:
        oai.chat.completions.create(model="gen-424", messages=messages)
    assert failed.value.status_code == 502 and "fake 424" in failed.value.message
    with pytest.raises(openai.RateLimitError) as limited:
        oai.chat.completions.create(model="gen-429", messages=messages)
    assert limited.value.response.headers["retry-after"] == "1"


def test_error_event_mid_stream(oai: openai.OpenAI, http: httpx.Client) -> None:
    request = {"model": "gen-stream-error", "messages": [{"role": "user", "content": "x y"}], "stream": True}
    resp = http.post("/v1/chat/completions", json=request)
    assert resp.status_code == 200
    last = resp.text.strip().split("\n\n")[-1]
    assert last.startswith('data: {"error"') and "Request failed during generation" in last
    with pytest.raises(openai.APIError, match="Request failed during generation"):
        for _ in oai.chat.completions.create(model="gen-stream-error", messages=request["messages"], stream=True):
            pass


def test_connection_cut_mid_stream(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError, match="cut the stream"):
        for _ in oai.chat.completions.create(
            model="gen-cut", messages=[{"role": "user", "content": "x y"}], stream=True
        ):
            pass


# -- what a generate endpoint cannot do: clear 400s --------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/i.png"}}]}
                ]
            },
            "messages[0].content[0]",
        ),
    ],
)
def test_unsupported_requests(http: httpx.Client, extra: dict[str, Any], param: str) -> None:
    body = {"model": "gen-chatml", "messages": [{"role": "user", "content": "x"}], **extra}
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 400
    assert_valid("ErrorResponse", resp.json())
    assert resp.json()["error"]["param"] == param
    assert resp.json()["error"]["code"] == "unsupported_parameter"


def test_embeddings_and_images_on_a_generate_model_are_refused(http: httpx.Client) -> None:
    resp = http.post("/v2/models/gen-chatml/infer/embeddings", json={"input": "x"})
    assert resp.status_code == 400 and "does not support embeddings" in resp.json()["error"]["message"]
    resp = http.post("/v2/models/gen-chatml/infer/images/generations", json={"prompt": "x"})
    assert resp.status_code == 400 and "does not support image generation" in resp.json()["error"]["message"]
