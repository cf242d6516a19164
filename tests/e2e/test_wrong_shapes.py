"""Issue 10 §3 and §4 through a real gateway: JSON nested too deeply is a 400 on every JSON route, and an upstream
that answers 200 with JSON of the wrong shape is a 502 in OpenAI's envelope naming what was wrong, or, once a
stream has started, an error event that ends it. Never a 500, a traceback, a dropped stream or an empty
"success"."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manifold.frontend import OpenAIFrontend
from tests.e2e.asgi_server import serve
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.hostile import (
    MODEL,
    NATIVE,
    check_answer,
    check_error_envelope,
    check_log_clean,
    check_stream_end,
    post,
    start_gateway,
)
from tests.fakes.hostile_upstream import HostileUpstream, Script

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[HostileUpstream]:
    up = HostileUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def gateway(upstream: HostileUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    proc = start_gateway(upstream, tmp_path_factory.mktemp("wrong-shapes"))
    yield proc
    proc.stop()
    check_log_clean(proc.log())


@pytest.fixture
def http(gateway: ManifoldProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=20) as c:
        yield c


# -- §3: nesting -------------------------------------------------------------------------------------------------

JSON_ROUTES = [
    ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}),
    ("/v1/completions", {"model": MODEL, "prompt": "hi"}),
    ("/v1/embeddings", {"model": MODEL, "input": "hi"}),
    ("/v1/images/generations", {"model": MODEL, "prompt": "hi"}),
    ("/v1/responses", {"model": MODEL, "input": "hi"}),
    ("/v1/responses/input_tokens", {"model": MODEL, "input": "hi"}),
    ("/v1/responses/compact", {"model": MODEL, "input": "hi"}),
    ("/v1/chat/completions/chatcmpl-none", {"metadata": {"a": "b"}}),
    (f"/v2/models/{MODEL}/infer/chat/completions", {"messages": MESSAGES}),
    (f"/v2/models/{MODEL}/infer/embeddings", {"input": "hi"}),
    (f"/v2/models/{MODEL}/infer/images/generations", {"prompt": "hi"}),
]


def _nested(valid: dict[str, Any], depth: int) -> bytes:
    head = json.dumps(valid).encode()[:-1]
    return head + b', "x": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(("path", "valid"), JSON_ROUTES)
@pytest.mark.parametrize("depth", [200, 1000, 20_000])
def test_deep_json_is_a_400_naming_the_problem(
    http: httpx.Client, upstream: HostileUpstream, path: str, valid: dict[str, Any], depth: int
) -> None:
    before = len(upstream.received)
    answer = post(http, path, _nested(valid, depth))
    assert answer.status == 400, answer
    error = check_error_envelope(answer)
    assert "nested too deeply" in error["message"] and error["type"] == "invalid_request_error"
    assert len(upstream.received) == before


def test_nesting_within_the_limit_is_served(http: httpx.Client, upstream: HostileUpstream) -> None:
    upstream.script = Script(body=json.dumps(_completion()).encode())
    answer = post(http, "/v1/chat/completions", _nested({"model": MODEL, "messages": MESSAGES}, 100))
    assert answer.status == 200, answer
    forwarded = json.loads(upstream.received[-1].body)["x"]
    for _ in range(99):
        forwarded = forwarded[0]
    assert forwarded == []


# -- §4: wrong shapes --------------------------------------------------------------------------------------------


def _completion(**message: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "up",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "ok", **message}, "finish_reason": "stop"}
        ],
    }


WRONG_COMPLETIONS = {
    "tool_calls_string": (_completion(tool_calls="abc"), "choices[0].message.tool_calls"),
    "choices_mixed": ({**_completion(), "choices": ["x", 1, None]}, "choices[0]"),
    "choices_string": ({**_completion(), "choices": "hello"}, "'choices'"),
    "message_string": ({**_completion(), "choices": [{"index": 0, "message": "hi"}]}, "choices[0].message"),
    "content_number": (_completion(content=12345), "choices[0].message.content"),
    "index_string": (
        {**_completion(), "choices": [{"index": "zero", "message": {"content": "x"}}]},
        "choices[0].index",
    ),
    "top_level_array": ([1, 2], "top level"),
}


@pytest.mark.parametrize("case", WRONG_COMPLETIONS)
def test_wrong_chat_completion_is_a_502(http: httpx.Client, upstream: HostileUpstream, case: str) -> None:
    body, where = WRONG_COMPLETIONS[case]
    upstream.script = Script(body=json.dumps(body).encode())
    for path, request in (
        ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES}),
        ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "store": True}),
        (f"/v2/models/{MODEL}/infer/chat/completions", {"messages": MESSAGES}),
        ("/v1/responses", {"model": MODEL, "input": "hi"}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi"}),  # the same body where a text_completion is due
    ):
        answer = post(http, path, request)
        assert answer.status == 502, (path, answer)
        error = check_error_envelope(answer)
        assert error["type"] == "upstream_error", (path, error)
        assert "schema" in error["message"] or "non-object" in error["message"], (path, error)
        if "completions" in path and path != "/v1/completions" and case != "top_level_array":
            assert where in error["message"], (path, error)


def _chunk(**delta: Any) -> bytes:
    choice = {"index": 0, "delta": {"content": "a", **delta}, "finish_reason": None}
    return json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "choices": [choice]}).encode()


GOOD_CHUNK = _chunk()
WRONG_CHUNKS = {
    "tool_calls_string": _chunk(tool_calls="abc"),
    "choices_mixed": json.dumps({"id": "c", "choices": ["x", 1, None]}).encode(),
    "choices_string": json.dumps({"id": "c", "choices": "hello"}).encode(),
    "delta_string": json.dumps({"id": "c", "choices": [{"index": 0, "delta": "hi"}]}).encode(),
    "content_number": _chunk(content=12345),
    "index_string": json.dumps({"id": "c", "choices": [{"index": "zero", "delta": {}}]}).encode(),
}


@pytest.mark.parametrize("case", WRONG_CHUNKS)
def test_wrong_chunk_ends_the_stream_with_an_error_event(
    http: httpx.Client, upstream: HostileUpstream, case: str
) -> None:
    upstream.script = Script(content_type="text/event-stream", events=(GOOD_CHUNK, WRONG_CHUNKS[case], GOOD_CHUNK))
    for path, request, responses_api in (
        ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": True}, False),
        ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": True, "store": True}, False),
        (f"/v2/models/{MODEL}/infer_stream/chat/completions", {"messages": MESSAGES}, False),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "stream": True}, False),
        ("/v1/responses", {"model": MODEL, "input": "hi", "stream": True}, True),
    ):
        answer = post(http, path, request)
        assert answer.status == 200, (path, answer)
        end = check_stream_end(answer, responses_api)
        assert end in ("error", "response.failed"), (path, answer.body[-400:])
        assert b"schema" in answer.body, (path, answer.body[-400:])


def test_wrong_completion_for_a_stream_that_was_answered_at_once(http: httpx.Client, upstream: HostileUpstream) -> None:
    """An upstream that ignores `stream` and answers JSON: that JSON is checked like any completion."""
    upstream.script = Script(body=json.dumps({**_completion(), "choices": "hello"}).encode())
    answer = post(http, "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": True})
    assert answer.status == 502, answer
    check_error_envelope(answer)


@pytest.mark.parametrize(
    "body",
    [
        {"data": "x"},
        {"data": ["x", 1, None]},
        {"data": [{"embedding": "%%%not-base64"}]},
        {"data": [{"embedding": ["a", "b"]}]},
        {"data": [{"embedding": [0.5], "index": "zero"}]},
        {"object": "list"},
    ],
)
def test_wrong_embeddings_are_a_502(http: httpx.Client, upstream: HostileUpstream, body: Any) -> None:
    upstream.script = Script(body=json.dumps(body).encode())
    for path, request in (
        ("/v1/embeddings", {"model": MODEL, "input": "hi"}),
        (f"/v2/models/{MODEL}/infer/embeddings", {"input": "hi"}),
    ):
        answer = post(http, path, request)
        assert answer.status == 502, (path, answer)
        assert check_error_envelope(answer)["type"] == "upstream_error"


@pytest.mark.parametrize(
    "body", [{"data": "x"}, {"data": [1]}, {"created": 1}, {"data": [{"url": 5}]}, {"data": [{"revised_prompt": "p"}]}]
)
def test_wrong_images_are_a_502(http: httpx.Client, upstream: HostileUpstream, body: Any) -> None:
    upstream.script = Script(body=json.dumps(body).encode())
    for path, request in (
        ("/v1/images/generations", {"model": MODEL, "prompt": "hi"}),
        (f"/v2/models/{MODEL}/infer/images/generations", {"prompt": "hi"}),
    ):
        answer = post(http, path, request)
        assert answer.status == 502, (path, answer)
        check_error_envelope(answer)


@pytest.mark.parametrize(
    "body",
    [
        {"id": "resp_1", "created_at": 1, "status": "completed", "output": "hello"},
        {"created_at": 1, "status": "completed", "output": []},
        {"id": "resp_1", "created_at": 1, "status": "completed", "output": [1]},
        {"id": "resp_1", "status": "completed", "output": []},  # stored under its created_at: a 500 before
        ["x"],
    ],
)
def test_wrong_native_response_is_a_502(http: httpx.Client, upstream: HostileUpstream, body: Any) -> None:
    upstream.script = Script(body=json.dumps(body).encode())
    answer = post(http, "/v1/responses", {"model": NATIVE, "input": "hi"})
    assert answer.status == 502, answer
    check_error_envelope(answer)


def test_wrong_native_stream_event_is_an_error_event(http: httpx.Client, upstream: HostileUpstream) -> None:
    response = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "output": []}
    created = {"type": "response.created", "sequence_number": 0, "response": response}
    upstream.script = Script(
        content_type="text/event-stream",
        events=(json.dumps(created).encode(), b'{"sequence_number": 1, "delta": 5}'),
        done=False,
    )
    answer = post(http, "/v1/responses", {"model": NATIVE, "input": "hi", "stream": True})
    assert answer.status == 200, answer
    assert check_stream_end(answer, responses_api=True) == "error"


def test_a_good_answer_still_passes(http: httpx.Client, upstream: HostileUpstream) -> None:
    upstream.script = Script(body=json.dumps(_completion(reasoning_content="hmm")).encode())
    answer = post(http, "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES})
    check_answer(answer)
    assert answer.status == 200 and answer.json()["choices"][0]["message"]["reasoning_content"] == "hmm"


def test_log_has_no_traceback(gateway: ManifoldProcess) -> None:
    check_log_clean(gateway.log())


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("text/html", b"<html><body>sign in</body></html>"), ("text/event-stream", b""), ("text/plain", b"hello")],
)
def test_a_stream_without_a_single_event_is_a_502(
    http: httpx.Client, upstream: HostileUpstream, content_type: str, body: bytes
) -> None:
    """Before: a 200 with nothing but `data: [DONE]` (chat) or an empty body (Responses)."""
    upstream.script = Script(content_type=content_type, body=body)
    for path, request in (
        ("/v1/chat/completions", {"model": MODEL, "messages": MESSAGES, "stream": True}),
        ("/v1/completions", {"model": MODEL, "prompt": "hi", "stream": True}),
        ("/v1/responses", {"model": MODEL, "input": "hi", "stream": True}),
        ("/v1/responses", {"model": NATIVE, "input": "hi", "stream": True}),
    ):
        answer = post(http, path, request)
        assert answer.status == 502, (path, answer)
        check_error_envelope(answer)


def test_a_native_stream_cut_before_its_final_event_ends_with_an_error(
    http: httpx.Client, upstream: HostileUpstream
) -> None:
    response = {"id": "resp_1", "object": "response", "created_at": 1, "status": "in_progress", "output": []}
    delta = {"type": "response.output_text.delta", "sequence_number": 1, "delta": "hel", "output_index": 0}
    upstream.script = Script(
        content_type="text/event-stream",
        events=(
            json.dumps({"type": "response.created", "sequence_number": 0, "response": response}).encode(),
            json.dumps(delta).encode(),
        ),
        done=False,
    )
    answer = post(http, "/v1/responses", {"model": NATIVE, "input": "hi", "stream": True})
    assert answer.status == 200, answer
    assert check_stream_end(answer, responses_api=True) == "error"
    assert b"before a final event" in answer.body


def test_deep_json_on_a_frontend_is_a_400(tmp_path: Path) -> None:
    """The Python frontend decodes its own bodies: its API routes and its custom routes hold the same limit."""
    app_ = OpenAIFrontend(lambda messages: "chat", storage=f"sqlite+aiosqlite:///{tmp_path}/f.db", prefix="/v1")
    app_.add_route("/admin/echo", "POST", lambda body: {"got": body})
    with serve(app_) as app, httpx.Client(base_url=app.url, timeout=20) as client:
        for path, valid in (("/v1/chat/completions", {"model": "m", "messages": MESSAGES}), ("/admin/echo", {"a": 1})):
            for depth in (200, 1000, 20_000):
                answer = post(client, path, _nested(valid, depth))
                assert answer.status == 400, (path, depth, answer)
                assert "nested too deeply" in check_error_envelope(answer)["message"]
        assert post(client, "/admin/echo", _nested({"a": 1}, 50)).status == 200
