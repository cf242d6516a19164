"""Self-tests for the fake OpenAI-compatible upstream (tests/fakes/openai_upstream.py)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import openai
import pytest
import pytest_asyncio

from tests.fakes.openai_upstream import BIG_CONTENT, CONTEXT_LENGTH_MESSAGE, FakeUpstream, Recorded

MESSAGES: list[Any] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first question"},
    {"role": "assistant", "content": "first answer"},
    {"role": "user", "content": "hello big world"},
]
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}},
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeUpstream) -> FakeUpstream:
    server.clear()
    return server


@pytest_asyncio.fixture(loop_scope="function")  # the tests run in per-test loops
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def sdk(fake: FakeUpstream, behavior: str = "echo", **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base(behavior), api_key="sk-fake", max_retries=0, **kwargs)


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "my-model", "messages": MESSAGES, **extra}


def parse_sse(text: str) -> list[str]:
    """The ``data:`` payloads of an SSE body, checking the framing on the way."""
    assert text.endswith("\n\n"), text[-50:]
    frames = text[:-2].split("\n\n")
    assert all(f.startswith("data: ") for f in frames), frames
    return [f.removeprefix("data: ") for f in frames]


async def post(
    http: aiohttp.ClientSession, url: str, payload: dict[str, Any], **kwargs: Any
) -> tuple[int, dict[str, str], str]:
    async with http.post(url + "/chat/completions", json=payload, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def stream_chunks(http: aiohttp.ClientSession, url: str, payload: dict[str, Any]) -> list[dict[str, Any]]:
    status, headers, text = await post(http, url, payload | {"stream": True})
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    datas = parse_sse(text)
    assert datas[-1] == "[DONE]"
    return [json.loads(d) for d in datas[:-1]]


# --- routes and recording ----------------------------------------------------------------------


async def test_models_route(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    for url in (fake.base("status:503") + "/models", fake.url + "/v1/models"):
        async with http.get(url) as resp:
            assert resp.status == 200
            assert await resp.json() == {
                "object": "list",
                "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}],
            }
    assert fake.count("models") == 2
    models = sdk(fake).models.list()
    assert [m.id for m in models.data] == ["fake-model"]


async def test_unprefixed_path_is_echo_and_unknown_paths_404(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, _, text = await post(http, fake.url + "/v1", body())
    assert status == 200
    assert json.loads(text)["choices"][0]["message"]["content"] == "echo: hello big world"
    async with http.get(fake.url + "/v1/embeddings") as resp:
        assert resp.status == 404
        assert "error" in await resp.json()
    async with http.get(fake.base() + "/chat/completions") as resp:
        assert resp.status == 405
    assert [r.behavior for r in fake.requests] == ["echo", "not_found", "method_not_allowed"]


def test_request_recording(fake: FakeUpstream) -> None:
    client = sdk(fake, default_headers={"X-Request-Id": "req-123", "X-Custom": "yes"})
    client.chat.completions.create(
        model="my-model",
        messages=[{"role": "user", "content": "hi"}],
        extra_body={"top_k": 5},
        extra_query={"api-version": "2024"},
    )
    assert fake.count() == 1 and fake.count("echo") == 1 and fake.count("tools") == 0
    rec = fake.requests[0]
    assert isinstance(rec, Recorded)
    assert rec.method == "POST"
    assert rec.path == "/b/echo/v1/chat/completions"
    assert rec.query == {"api-version": "2024"}
    assert rec.headers["authorization"] == "Bearer sk-fake"
    assert rec.headers["x-request-id"] == "req-123"
    assert rec.headers["x-custom"] == "yes"
    assert all(k == k.lower() for k in rec.headers)
    assert rec.body == {"model": "my-model", "messages": [{"role": "user", "content": "hi"}], "top_k": 5}
    assert json.loads(rec.raw) == rec.body
    assert rec.behavior == "echo"
    assert not rec.stream
    assert fake.cancelled == []
    fake.clear()
    assert fake.requests == [] and fake.count() == 0


async def test_fake_behavior_body_field_overrides_path(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, _, text = await post(http, fake.base("echo"), body(fake_behavior="status:418"))
    assert status == 418
    assert json.loads(text)["error"]["code"] == "fake_418"
    assert fake.requests[0].behavior == "status:418"
    assert fake.requests[0].path == "/b/echo/v1/chat/completions"


async def test_behavior_path_segment_is_url_decoded(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, _, _ = await post(http, fake.url + "/b/status%3A503/v1", body())
    assert status == 503
    assert fake.count("status:503") == 1


async def test_bad_requests_answer_400(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    for behavior in ("nonsense", "status:abc", "slow_headers:forever"):
        status, _, text = await post(http, fake.base(behavior), body())
        assert status == 400, behavior
        assert json.loads(text)["error"]["type"] == "invalid_request_error"
    async with http.post(fake.base() + "/chat/completions", data=b"{nope") as resp:
        assert resp.status == 400
    assert fake.requests[-1].body is None and fake.requests[-1].raw == b"{nope"


# --- echo ----------------------------------------------------------------------------------------


async def test_echo_non_stream(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, headers, text = await post(http, fake.base(), body())
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    data = json.loads(text)
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-fake")
    assert data["model"] == "my-model"
    assert isinstance(data["created"], int)
    [choice] = data["choices"]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"] == {"role": "assistant", "content": "echo: hello big world"}  # no refusal
    assert data["usage"] == {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}


def test_echo_non_stream_sdk_with_n_and_text_parts(fake: FakeUpstream) -> None:
    completion = sdk(fake).chat.completions.create(
        model="other-model",
        messages=[{"role": "user", "content": [{"type": "text", "text": "part one"}, {"type": "text", "text": "two"}]}],
        n=2,
    )
    assert completion.model == "other-model"
    assert [c.index for c in completion.choices] == [0, 1]
    assert {c.message.content for c in completion.choices} == {"echo: part one two"}
    assert completion.usage is not None and completion.usage.completion_tokens == 8


def test_echo_stream_sdk_with_usage(fake: FakeUpstream) -> None:
    stream = sdk(fake).chat.completions.create(
        model="my-model", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert fake.requests[0].stream
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    content_chunks = chunks[1:-2]
    assert len(content_chunks) == 4  # one per word
    assert "".join(c.choices[0].delta.content or "" for c in content_chunks) == "echo: hello big world"
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 13
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].id.startswith("chatcmpl-fake")
    assert {c.model for c in chunks} == {"my-model"}


async def test_echo_stream_raw_frames(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    chunks = await stream_chunks(http, fake.base(), body())
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["delta"] == {} and chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all("usage" not in c for c in chunks)  # no include_usage -> no usage chunk
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)


async def test_big(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, _, text = await post(http, fake.base("big"), body())
    assert json.loads(text)["choices"][0]["message"]["content"] == BIG_CONTENT
    assert BIG_CONTENT.split()[-1] == "w9999" and len(BIG_CONTENT.split()) == 10_000
    chunks = await stream_chunks(http, fake.base("big"), body())
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks) == BIG_CONTENT


# --- sloppy --------------------------------------------------------------------------------------


async def test_sloppy_stream_repeats_role_and_usage(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    chunks = await stream_chunks(http, fake.base("sloppy"), body(stream_options={"include_usage": True}))
    assert len(chunks) >= 4
    for chunk in chunks:
        assert chunk["usage"] is not None
        assert "system_fingerprint" in chunk and chunk["system_fingerprint"] is None
        for choice in chunk["choices"]:
            assert choice["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == (
        "echo: hello big world"
    )
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4


async def test_sloppy_non_stream(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, _, text = await post(http, fake.base("sloppy"), body())
    data = json.loads(text)
    assert data["system_fingerprint"] is None
    assert data["usage"]["prompt_tokens_details"] is None
    assert data["choices"][0]["message"]["content"] == "echo: hello big world"


# --- tools ---------------------------------------------------------------------------------------


def test_tools_non_stream_sdk(fake: FakeUpstream) -> None:
    completion = sdk(fake, "tools").chat.completions.create(
        model="m",
        messages=MESSAGES,
        tools=TOOLS[:1],
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id == "call_fake_1" and call.type == "function"
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


async def test_tools_stream_repeats_id_type_and_name(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    chunks = await stream_chunks(http, fake.base("tools"), body(tools=TOOLS[:1]))
    deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert len(deltas) >= 3
    for d in deltas:
        assert d["index"] == 0 and d["id"] == "call_fake_1" and d["type"] == "function"
        assert d["function"]["name"] == "get_weather"
    assert "".join(d["function"]["arguments"] for d in deltas) == '{"city": "Paris"}'
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


async def test_tools_parallel(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    chunks = await stream_chunks(http, fake.base("tools"), body(tools=TOOLS))
    deltas = [tc for c in chunks for tc in c["choices"][0]["delta"].get("tool_calls", [])]
    assert {(d["index"], d["id"], d["function"]["name"]) for d in deltas} == {
        (0, "call_fake_1", "get_weather"),
        (1, "call_fake_2", "get_time"),
    }
    _, _, text = await post(http, fake.base("tools"), body(tools=TOOLS, parallel_tool_calls=False))
    assert len(json.loads(text)["choices"][0]["message"]["tool_calls"]) == 1


def test_tools_stream_sdk_accumulates(fake: FakeUpstream) -> None:
    stream = sdk(fake, "tools").chat.completions.create(
        model="m",
        messages=MESSAGES,
        tools=TOOLS,
        stream=True,
    )
    args: dict[int, str] = {}
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                assert tc.function is not None and tc.function.arguments is not None
                args[tc.index] = args.get(tc.index, "") + tc.function.arguments
    assert {i: json.loads(a) for i, a in args.items()} == {0: {"city": "Paris"}, 1: {"city": "Paris"}}


# --- errors --------------------------------------------------------------------------------------


async def test_status_errors(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, headers, text = await post(http, fake.base("status:429"), body())
    assert status == 429 and headers["Retry-After"] == "1"
    assert json.loads(text) == {
        "error": {"message": "fake 429", "type": "fake_error", "param": None, "code": "fake_429"}
    }
    status, headers, _ = await post(http, fake.base("status:503"), body(stream=True))
    assert status == 503 and headers["Retry-After"] == "1"
    status, headers, text = await post(http, fake.base("status:500"), body())
    assert status == 500 and "Retry-After" not in headers
    assert json.loads(text)["error"]["code"] == "fake_500"


def test_status_error_sdk(fake: FakeUpstream) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        sdk(fake, "status:429").chat.completions.create(model="m", messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "1"
    assert info.value.code == "fake_429"


async def test_text_error(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, headers, text = await post(http, fake.base("text_error:502"), body())
    assert status == 502 and headers["Content-Type"].startswith("text/plain") and text == "plain failure"


async def test_malformed(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, headers, text = await post(http, fake.base("malformed"), body())
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert text == '{"id": "x", "choices": ['
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)
    _, _, text = await post(http, fake.base("malformed"), body(stream=True))
    datas = parse_sse(text)
    json.loads(datas[0])
    assert datas[1] == "{not json}"


async def test_stream_error(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    _, _, text = await post(http, fake.base("stream_error"), body(stream=True))
    datas = parse_sse(text)
    assert len(datas) == 2 and "[DONE]" not in datas
    assert json.loads(datas[0])["object"] == "chat.completion.chunk"
    assert json.loads(datas[1]) == {"error": {"message": "fake mid-stream failure", "type": "server_error"}}


async def test_json_for_stream(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, headers, text = await post(http, fake.base("json_for_stream"), body(stream=True))
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert json.loads(text)["object"] == "chat.completion"


async def test_cut_stream_and_non_stream(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    for payload in (body(stream=True), body()):
        with pytest.raises(aiohttp.ClientError):
            async with http.post(fake.base("cut") + "/chat/completions", json=payload) as resp:
                assert resp.status == 200
                await resp.read()
    assert fake.count("cut") == 2
    await asyncio.sleep(0.05)
    assert fake.cancelled == []  # the fake hung up, not the client


async def test_cut_stream_delivers_two_chunks_first(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(fake.base("cut") + "/chat/completions", json=body(stream=True)) as resp:
            async for data in resp.content.iter_any():
                received += data
    frames = [f for f in received.decode().split("\n\n") if f]
    assert len(frames) == 2 and all(json.loads(f.removeprefix("data: ")) for f in frames)


def test_cut_sdk_raises_connection_error(fake: FakeUpstream) -> None:
    with pytest.raises(openai.APIConnectionError):
        sdk(fake, "cut").chat.completions.create(model="m", messages=MESSAGES)


# --- timing and cancellation ---------------------------------------------------------------------


async def test_hang_client_timeout_is_recorded_as_cancelled(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await post(http, fake.base("hang"), body(), timeout=aiohttp.ClientTimeout(total=0.3))
    assert fake.count("hang") == 1  # recorded before the behavior ran
    assert await asyncio.to_thread(fake.wait_cancelled, 1, 5.0)
    assert fake.cancelled[0] is fake.requests[0]


def test_hang_visible_while_in_flight_then_cancelled_by_sdk_timeout(fake: FakeUpstream) -> None:
    client = sdk(fake, "hang", timeout=0.5)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            client.chat.completions.create(model="m", messages=MESSAGES)
        except openai.APITimeoutError as e:
            errors.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    assert fake.wait_requests(1, 5.0)  # recorded while the behavior still hangs
    assert fake.requests[0].behavior == "hang" and fake.cancelled == []
    caller.join(5.0)
    assert len(errors) == 1
    assert fake.wait_cancelled(1, 5.0)
    assert not fake.wait_cancelled(2, 0.05)


async def test_abandoned_slow_stream_is_recorded_as_cancelled(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    async with http.post(fake.base("slow_tokens:0.2") + "/chat/completions", json=body(stream=True)) as resp:
        assert resp.status == 200
        first = await resp.content.readuntil(b"\n\n")
        assert json.loads(first.removeprefix(b"data: "))["choices"][0]["delta"]["role"] == "assistant"
        resp.close()  # abandon mid-stream
    assert await asyncio.to_thread(fake.wait_cancelled, 1, 5.0)
    assert fake.cancelled[0].behavior == "slow_tokens:0.2"


async def test_slow_headers(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    start = time.monotonic()
    status, _, text = await post(http, fake.base("slow_headers:0.3"), body())
    assert status == 200 and time.monotonic() - start >= 0.3
    assert json.loads(text)["choices"][0]["message"]["content"] == "echo: hello big world"


async def test_slow_first_token_sends_headers_first(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    start = time.monotonic()
    async with http.post(fake.base("slow_first_token:1.0") + "/chat/completions", json=body(stream=True)) as resp:
        headers_after = time.monotonic() - start
        assert resp.status == 200
        text = (await resp.read()).decode()
        body_after = time.monotonic() - start
    assert headers_after < 0.9 <= 1.0 <= body_after
    assert parse_sse(text)[-1] == "[DONE]"


async def test_slow_tokens_delays_every_chunk(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    start = time.monotonic()
    chunks = await stream_chunks(http, fake.base("slow_tokens:0.05"), body())
    assert len(chunks) == 6 and time.monotonic() - start >= 6 * 0.05


def test_stop_does_not_wait_for_hanging_requests() -> None:
    fake = FakeUpstream().start()
    client = openai.OpenAI(base_url=fake.base("hang"), api_key="k", max_retries=0, timeout=5.0)
    timer = threading.Timer(0.3, fake.stop)
    timer.start()
    start = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model="m", messages=MESSAGES)
    assert time.monotonic() - start < 3.0  # closed by the stopping server, not the client timeout
    timer.join()
    assert fake.count("hang") == 1
    fake.stop()  # idempotent


# --- behaviors for the router's tests ------------------------------------------------------------


async def test_tag_is_ignored_but_recorded(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, _, text = await post(http, fake.base("echo@a"), body())
    assert status == 200 and json.loads(text)["choices"][0]["message"]["content"] == "echo: hello big world"
    status, _, _ = await post(http, fake.base("status:500@b"), body())
    assert status == 500
    assert (fake.count("echo@a"), fake.count("status:500@b"), fake.count("echo")) == (1, 1, 0)


async def test_flaky_fails_the_first_n_requests(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    statuses = [(await post(http, fake.base("flaky:2"), body()))[0] for _ in range(4)]
    assert statuses == [503, 503, 200, 200]
    assert (await post(http, fake.base("flaky:2@other"), body()))[0] == 503  # counted per behavior string
    fake.clear()
    assert (await post(http, fake.base("flaky:2"), body(stream=True)))[0] == 503


async def test_retry_after_ms(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, headers, text = await post(http, fake.base("retry_after_ms:250"), body())
    assert status == 429 and headers["retry-after-ms"] == "250" and "Retry-After" not in headers
    assert json.loads(text)["error"]["code"] == "fake_429"


async def test_reset_before_the_first_event(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    received = b""
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(fake.base("reset") + "/chat/completions", json=body(stream=True)) as resp:
            assert resp.status == 200
            async for data in resp.content.iter_any():
                received += data
    assert received == b""
    with pytest.raises(aiohttp.ClientError):
        async with http.post(fake.base("reset") + "/chat/completions", json=body()) as resp:
            await resp.read()


async def test_stall_pauses_after_the_first_content_chunk(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    started = time.monotonic()
    chunks = await stream_chunks(http, fake.base("stall:0.3"), body())
    assert time.monotonic() - started >= 0.3
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "stalled ", None]


async def test_context_length(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, _, text = await post(http, fake.base("context_length"), body())
    assert status == 400
    assert json.loads(text)["error"] == {
        "message": CONTEXT_LENGTH_MESSAGE,
        "type": "invalid_request_error",
        "param": "messages",
        "code": "context_length_exceeded",
    }
    status, _, text = await post(http, fake.base("context_length:message"), body())
    assert status == 400 and json.loads(text)["error"]["code"] is None


async def test_status_529(fake: FakeUpstream, http: aiohttp.ClientSession) -> None:
    status, _, text = await post(http, fake.base("status:529"), body())
    assert status == 529 and json.loads(text)["error"]["code"] == "fake_529"
