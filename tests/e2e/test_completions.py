"""Legacy completions (`POST /completions`) through a real `manifold serve`, driven by the official `openai` SDK
against the fake upstream: native pass-through, and the chat mapping for chat-only backends.

Streamed completions are read with a default (non-strict) SDK client: every non-final chunk has
`finish_reason: null`, as OpenAI sends it, which the SDK's `Literal` type (and the spec) do not admit; strict
validation would reject OpenAI's own streams. The raw frames are judged by the schema with the one named
relaxation for it (`text_completion_nulls`).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.test_chat import sse_events
from tests.e2e.test_errors import check_envelope
from tests.fakes.openai_upstream import FakeUpstream

NULLS = {"text_completion_nulls"}


@pytest.fixture
def lenient(gateway: ManifoldProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway.base_url, api_key="sk-client", max_retries=0) as c:
        yield c


def last_request(fake: FakeUpstream, suffix: str) -> Any:
    matching = [r for r in fake.requests if r.path.endswith(suffix)]
    assert matching, f"no upstream request to {suffix}"
    return matching[-1]


def stream_text(http: httpx.Client, body: dict[str, Any]) -> tuple[list[Any], dict[int, str]]:
    resp = http.post("/v1/completions", json={**body, "stream": True})
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.text.endswith("data: [DONE]\n\n")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    texts: dict[int, str] = {}
    for chunk in chunks:
        assert_valid("CreateCompletionResponse", chunk, relaxed=NULLS)
        for choice in chunk["choices"]:
            texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("cmpl-")
    assert {c["model"] for c in chunks} == {body["model"]}
    return chunks, texts


# -- native pass-through ---------------------------------------------------------------------------------------


def test_string_prompt(client: openai.OpenAI, http: httpx.Client, fake: FakeUpstream) -> None:
    fake.clear()
    completion = client.completions.create(model="fake-echo", prompt="hello there")
    assert completion.object == "text_completion"
    assert completion.model == "fake-echo"
    assert [c.text for c in completion.choices] == ["echo: hello there"]
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    got = last_request(fake, "/v1/completions")
    assert got.body == {"model": "upstream-model", "prompt": "hello there"}
    body = http.post("/v1/completions", json={"model": "fake-echo", "prompt": "hello there"}).json()
    assert_valid("CreateCompletionResponse", body)


@pytest.mark.parametrize(
    ("prompt", "texts"),
    [
        (["a b", "c"], ["echo: a b", "echo: a b", "echo: c", "echo: c"]),
        ([1212, 318], ["echo: tokens 1212 318"] * 2),
        ([[1, 2], [3]], ["echo: tokens 1 2", "echo: tokens 1 2", "echo: tokens 3", "echo: tokens 3"]),
    ],
    ids=["strings", "tokens", "token-arrays"],
)
def test_prompt_forms_and_n(
    client: openai.OpenAI, http: httpx.Client, fake: FakeUpstream, prompt: Any, texts: list[str]
) -> None:
    fake.clear()
    completion = client.completions.create(model="fake-echo", prompt=prompt, n=2)
    assert [c.index for c in completion.choices] == list(range(len(texts)))
    assert [c.text for c in completion.choices] == texts
    assert last_request(fake, "/v1/completions").body["prompt"] == prompt  # unchanged
    assert_valid(
        "CreateCompletionResponse", http.post("/v1/completions", json={"model": "fake-echo", "prompt": prompt}).json()
    )


def test_echo_suffix_and_everything_else_reach_the_upstream(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.clear()
    sent: dict[str, Any] = {
        "best_of": 2,
        "echo": True,
        "frequency_penalty": 0.5,
        "logit_bias": {"50256": -100},
        "max_tokens": 20,
        "n": 2,
        "presence_penalty": -0.5,
        "seed": 7,
        "stop": ["\n", "END"],
        "suffix": "tail",
        "temperature": 0.2,
        "top_p": 0.9,
        "user": "user-1",
    }
    completion = client.completions.create(model="fake-echo", prompt="Say hi", extra_body={"top_k": 5}, **sent)
    assert [c.text for c in completion.choices] == ["Say hiecho: Say hi [tail]"] * 2
    got = last_request(fake, "/v1/completions").body
    assert got == {"model": "upstream-model", "prompt": "Say hi", "top_k": 5, **sent}


def test_logprobs(client: openai.OpenAI, http: httpx.Client) -> None:
    completion = client.completions.create(model="fake-echo", prompt="a b", logprobs=2)
    lp = completion.choices[0].logprobs
    assert lp is not None and lp.tokens == ["echo:", " a", " b"]
    assert lp.text_offset == [0, 5, 7]
    assert lp.top_logprobs is not None and all(len(t) == 2 for t in lp.top_logprobs)
    body = http.post("/v1/completions", json={"model": "fake-echo", "prompt": "a b", "logprobs": 2}).json()
    assert_valid("CreateCompletionResponse", body)


def test_echo_with_logprobs_keeps_the_null_first_logprob(lenient: openai.OpenAI, http: httpx.Client) -> None:
    completion = lenient.completions.create(model="fake-echo", prompt="a b", logprobs=1, echo=True)
    lp = completion.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.tokens[:2] == ["a", " b"]
    assert lp.token_logprobs is not None and lp.token_logprobs[0] is None
    body = http.post(
        "/v1/completions", json={"model": "fake-echo", "prompt": "a b", "logprobs": 1, "echo": True}
    ).json()
    assert_valid("CreateCompletionResponse", body, relaxed=NULLS)


def test_streamed_with_usage(lenient: openai.OpenAI, http: httpx.Client) -> None:
    stream = lenient.completions.create(
        model="fake-echo", prompt="hello there world", stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == "echo: hello there world"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    raw, texts = stream_text(
        http, {"model": "fake-echo", "prompt": "hello there world", "stream_options": {"include_usage": True}}
    )
    assert texts == {0: "echo: hello there world"}
    assert raw[-1]["choices"] == [] and raw[-1]["usage"]["total_tokens"] > 0
    assert all("usage" not in c for c in raw[:-1])  # not nullable in this schema: absent, not null


def test_streamed_prompt_forms_echo_and_n(http: httpx.Client) -> None:
    _, texts = stream_text(http, {"model": "fake-echo", "prompt": ["a", "b c"], "n": 2, "echo": True})
    assert texts == {0: "aecho: a", 1: "aecho: a", 2: "b cecho: b c", 3: "b cecho: b c"}
    chunks, texts = stream_text(http, {"model": "fake-echo", "prompt": [[7, 8]], "logprobs": 1})
    assert texts == {0: "echo: tokens 7 8"}
    assert all("usage" not in c for c in chunks)  # not asked for
    assert any(ch["logprobs"] for c in chunks for ch in c["choices"])


def test_async_client(gateway: ManifoldProcess) -> None:
    import asyncio

    async def run() -> None:
        async with openai.AsyncOpenAI(base_url=gateway.base_url, api_key="k", max_retries=0) as aclient:
            completion = await aclient.completions.create(model="fake-echo", prompt="x y")
            assert completion.choices[0].text == "echo: x y"
            stream = await aclient.completions.create(model="fake-echo", prompt="x y", stream=True)
            assert "".join([c.choices[0].text async for c in stream if c.choices]) == "echo: x y"

    asyncio.run(run())


def test_upstream_json_for_a_stream_request_is_streamed(lenient: openai.OpenAI) -> None:
    chunks = list(lenient.completions.create(model="fake-json_for_stream", prompt="p q", stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: p q"


def test_upstream_error_passes_through(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model="fake-status:400", prompt="x")
    assert info.value.code == "fake_400"


def test_azure_path(client: openai.OpenAI, fake: FakeUpstream) -> None:
    fake.clear()
    assert client.completions.create(model="azure-gpt", prompt="z").choices[0].text == "echo: z"
    got = fake.requests[-1]
    assert got.path.endswith("/openai/deployments/my-deployment/completions")
    assert got.query["api-version"] == "2024-10-21" and got.headers["api-key"] == "azure-secret-key"


# -- chat-only backends: answered through chat ----------------------------------------------------------------


def test_chat_only_backend_answers_through_chat(client: openai.OpenAI, http: httpx.Client, fake: FakeUpstream) -> None:
    fake.clear()
    completion = client.completions.create(model="fake-chat-only", prompt=["hello world", "x"], n=2, seed=3)
    assert [c.text for c in completion.choices] == ["echo: hello world"] * 2 + ["echo: x"] * 2
    assert [c.index for c in completion.choices] == [0, 1, 2, 3]
    assert completion.id.startswith("cmpl-") and completion.model == "fake-chat-only"
    assert completion.usage is not None and completion.usage.prompt_tokens == 3  # summed over both prompts
    chats = sorted((r.body for r in fake.requests if r.path.endswith("/chat/completions")), key=str)
    assert not [r for r in fake.requests if r.path.endswith("/v1/completions")]
    assert chats == sorted(
        (
            {
                "model": "upstream-model",
                "messages": [{"role": "user", "content": p}],
                "n": 2,
                "seed": 3,
                "max_tokens": 16,  # the legacy default; chat has none
            }
            for p in ("hello world", "x")
        ),
        key=str,
    )
    body = http.post("/v1/completions", json={"model": "fake-chat-only", "prompt": "q", "echo": True}).json()
    assert_valid("CreateCompletionResponse", body)
    assert body["choices"][0]["text"] == "qecho: q"


def test_chat_only_backend_streams_through_chat(lenient: openai.OpenAI, http: httpx.Client, fake: FakeUpstream) -> None:
    fake.clear()
    chunks = list(
        lenient.completions.create(
            model="fake-chat-only",
            prompt="one two",
            stream=True,
            max_tokens=5,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "echo: one two"
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 2
    chat = last_request(fake, "/chat/completions").body
    assert chat["stream"] is True and chat["max_tokens"] == 5 and chat["stream_options"] == {"include_usage": True}
    _, texts = stream_text(http, {"model": "fake-chat-only", "prompt": ["a", "b"], "echo": True})
    assert texts == {0: "aecho: a", 1: "becho: b"}


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"prompt": [1, 2]}, "prompt"),
        ({"suffix": "s"}, "suffix"),
        ({"best_of": 3}, "best_of"),
        ({"echo": True, "logprobs": 1}, "echo"),
        ({"max_tokens": 0}, "max_tokens"),
    ],
)
def test_chat_only_backend_rejects_what_chat_cannot_express(
    http: httpx.Client, extra: dict[str, Any], param: str
) -> None:
    body = {"model": "fake-chat-only", "prompt": "x", **extra}
    check_envelope(http.post("/v1/completions", json=body), 400, param)
    check_envelope(
        http.post("/v1/completions", json={**body, "stream": True} if "best_of" not in extra else body), 400, param
    )


# -- validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake-echo"}, "prompt"),
        ({"prompt": "x"}, "model"),
        ({"model": "fake-echo", "prompt": [1, "a"]}, "prompt[1]"),
        ({"model": "fake-echo", "prompt": ["a", 1]}, "prompt[1]"),
        ({"model": "fake-echo", "prompt": [[1], []]}, "prompt[1]"),
        ({"model": "fake-echo", "prompt": [[1], [2, "x"]]}, "prompt[1][1]"),
        ({"model": "fake-echo", "prompt": []}, "prompt"),
        ({"model": "fake-echo", "prompt": [True]}, "prompt[0]"),
        ({"model": "fake-echo", "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": "fake-echo", "prompt": "x", "best_of": 21}, "best_of"),
        ({"model": "fake-echo", "prompt": "x", "best_of": 2, "n": 3}, "best_of"),
        ({"model": "fake-echo", "prompt": "x", "best_of": 2, "stream": True}, "best_of"),
        ({"model": "fake-echo", "prompt": "x", "n": 0}, "n"),
        ({"model": "fake-echo", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": "fake-echo", "prompt": "x", "temperature": 2.5}, "temperature"),
        ({"model": "fake-echo", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": "fake-echo", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"model": "fake-echo", "prompt": "x", "echo": "yes"}, "echo"),
        ({"model": "fake-echo", "prompt": "x", "logit_bias": {"abc": 1}}, "logit_bias.abc"),
    ],
)
def test_validation_names_the_parameter(
    http: httpx.Client, fake: FakeUpstream, body: dict[str, Any], param: str
) -> None:
    fake.clear()
    check_envelope(http.post("/v1/completions", json=body), 400, param)
    assert not fake.requests  # nothing reached the upstream


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="no-such-model", prompt="x")
    assert info.value.code == "model_not_found"


@pytest.mark.parametrize("route", ["completions", "embeddings", "images"])
def test_disconnect_cancels_the_upstream_request(gateway: ManifoldProcess, fake: FakeUpstream, route: str) -> None:
    fake.clear()
    c = openai.OpenAI(base_url=gateway.base_url, api_key="k", max_retries=0, timeout=1.0)
    with pytest.raises(openai.APITimeoutError):
        if route == "completions":
            c.completions.create(model="fake-hang", prompt="x")
        elif route == "embeddings":
            c.embeddings.create(model="fake-hang", input="x")
        else:
            c.images.generate(model="fake-hang", prompt="x")
    assert fake.wait_cancelled(1, timeout=5.0)
    assert fake.cancelled[0].path.endswith("/" + ("images/generations" if route == "images" else route))


def test_disconnect_cancels_a_completion_stream(gateway: ManifoldProcess, fake: FakeUpstream) -> None:
    fake.clear()
    body = json.dumps({"model": "fake-hang", "prompt": "x", "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert b"200" in sock.recv(4096)  # headers and a keep-alive comment, then the client leaves
    assert fake.wait_cancelled(1, timeout=5.0)
