"""Bad input and bad upstreams: each gets its documented status and OpenAI's error envelope, never a 500,
a traceback or a hang; a client that leaves cancels the upstream request."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import UPSTREAM_KEY, ManifoldProcess
from tests.e2e.test_chat import MESSAGES, sse_events
from tests.fakes.openai_upstream import FakeUpstream

OK = {"model": "fake-echo", "messages": MESSAGES}


def check_envelope(resp: httpx.Response, status: int, param: str | None = None, code: str | None = None) -> Any:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    assert resp.headers["x-request-id"]
    body = resp.json()
    assert_valid("ErrorResponse", body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    if param is not None:
        assert body["error"]["param"] == param
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"model": "fake-echo"}, "messages", "missing_required_parameter"),
        ({"messages": MESSAGES}, "model", "missing_required_parameter"),
        ({**OK, "messages": []}, "messages", "empty_array"),
        (
            {**OK, "messages": [MESSAGES[0], {"role": "robot", "content": "x"}]},
            "messages[1].role",
            "invalid_value",
        ),
        ({**OK, "messages": [{"role": "user"}]}, "messages[0].content", "missing_required_parameter"),
        ({**OK, "temperature": 3}, "temperature", "decimal_above_max_value"),
        ({**OK, "top_p": -0.1}, "top_p", "decimal_below_min_value"),
        ({**OK, "presence_penalty": 2.5}, "presence_penalty", "decimal_above_max_value"),
        ({**OK, "n": 0}, "n", "integer_below_min_value"),
        ({**OK, "stop": ["a", "b", "c", "d", "e"]}, "stop", "array_above_max_length"),
        ({**OK, "temperature": "hot"}, "temperature", "invalid_type"),
        ({**OK, "stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
        (
            {**OK, "tools": [{"type": "function", "function": {"name": "bad name"}}]},
            "tools[0].function.name",
            None,
        ),
        ({**OK, "response_format": {"type": "xml"}}, "response_format.type", "invalid_value"),
    ],
)
def test_invalid_request_names_the_parameter(
    http: httpx.Client, fake: FakeUpstream, body: Any, param: str, code: str | None
) -> None:
    before = fake.count()
    check_envelope(http.post("/v1/chat/completions", json=body), 400, param, code)
    assert fake.count() == before  # nothing invalid is forwarded


def test_bad_json_and_non_object(http: httpx.Client) -> None:
    err = check_envelope(http.post("/v1/chat/completions", content=b'{"model": '), 400)
    assert "JSON" in err["message"]
    check_envelope(http.post("/v1/chat/completions", content=b"[1, 2]"), 400)
    check_envelope(http.post("/v1/chat/completions", content=b""), 400)


def test_unknown_model(http: httpx.Client) -> None:
    check_envelope(http.post("/v1/chat/completions", json={**OK, "model": "nope"}), 404, "model", "model_not_found")


def test_oversize_body(http: httpx.Client) -> None:
    big = {**OK, "messages": [{"role": "user", "content": "x" * 70000}]}
    check_envelope(http.post("/v1/chat/completions", json=big), 413)


def test_wrong_method_and_unknown_path(http: httpx.Client) -> None:
    resp = http.put("/v1/chat/completions", json={})  # GET lists stored completions, POST creates
    check_envelope(resp, 405)
    assert resp.headers["allow"] == "GET, POST"
    check_envelope(http.delete("/v1/models/fake-echo"), 405)
    check_envelope(http.post("/v1/nothing/here", json={}), 404)
    check_envelope(http.get("/v2/chat/completions"), 404)


def test_sdk_exceptions_carry_the_envelope(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="fake-echo", messages=[{"role": "user"}])  # type: ignore[list-item]
    assert bad.value.param == "messages[0].content" and bad.value.code == "missing_required_parameter"
    assert bad.value.request_id


# -- upstream failures -----------------------------------------------------------------------------------------


BEFORE_FIRST_BYTE = [
    ("fake-status:400", 400, "fake 400"),
    ("fake-status:401", 401, "fake 401"),
    ("fake-status:429", 429, "fake 429"),
    ("fake-text_error:400", 400, "plain failure"),
    ("fake-status:500", 502, "fake 500"),
    ("fake-status:503", 502, "fake 503"),
    ("fake-refused", 502, "connect"),
]
# A broken body can only be noticed before the 200 when not streaming (mid-stream: see below); a stream whose
# upstream is silent past the keep-alive interval has sent its 200 by the time the timeout fires.
NON_STREAMING_ONLY = [
    ("fake-malformed", 502, "malformed"),
    ("fake-cut", 502, None),
    ("fake-slow-timeout", 504, None),
]


@pytest.mark.parametrize(
    ("model", "status", "message", "stream"),
    [(*case, False) for case in BEFORE_FIRST_BYTE + NON_STREAMING_ONLY] + [(*case, True) for case in BEFORE_FIRST_BYTE],
)
def test_upstream_failure_before_the_first_byte(
    http: httpx.Client, model: str, status: int, message: str | None, stream: bool
) -> None:
    resp = http.post("/v1/chat/completions", json={**OK, "model": model, "stream": stream})
    err = check_envelope(resp, status)
    if message is not None:
        assert message in err["message"]
    assert UPSTREAM_KEY not in resp.text
    if status == 429:
        assert resp.headers["retry-after"] == "1"
        assert err["code"] == "fake_429"


@pytest.mark.parametrize("model", ["fake-cut", "fake-stream_error", "fake-malformed"])
def test_upstream_failure_mid_stream(client: openai.OpenAI, http: httpx.Client, model: str) -> None:
    raw = http.post("/v1/chat/completions", json={**OK, "model": model, "stream": True})
    assert raw.status_code == 200
    events = sse_events(raw.text)
    assert "[DONE]" not in events
    assert "error" in events[-1] and events[-1]["error"]["message"]
    assert_valid("ErrorResponse", events[-1])
    with pytest.raises(openai.APIError):
        for _ in client.chat.completions.create(model=model, messages=MESSAGES, stream=True):
            pass


def test_stream_timeout_after_keepalive_is_an_error_event(http: httpx.Client) -> None:
    resp = http.post("/v1/chat/completions", json={**OK, "model": "fake-slow-timeout", "stream": True})
    assert resp.status_code == 200
    assert resp.text.startswith(": keep-alive\n\n")
    events = sse_events(resp.text)
    assert len(events) == 1 and events[0]["error"]["code"] == "upstream_timeout"
    assert_valid("ErrorResponse", events[0])


def test_keepalive_comments_while_waiting_for_the_first_token(gateway: ManifoldProcess) -> None:
    lines: list[str] = []
    with httpx.stream(
        "POST",
        gateway.url + "/v1/chat/completions",
        json={**OK, "model": "fake-slow_first_token:1.5", "stream": True},
        timeout=20,
    ) as resp:
        assert resp.status_code == 200
        lines.extend(line for line in resp.iter_lines() if line)
    first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
    assert first_data >= 2 and all(line == ": keep-alive" for line in lines[:first_data])
    assert lines[-1] == "data: [DONE]"


# -- cancellation ----------------------------------------------------------------------------------------------


def test_disconnect_cancels_a_non_streaming_upstream_request(gateway: ManifoldProcess, fake: FakeUpstream) -> None:
    fake.clear()
    c = openai.OpenAI(base_url=gateway.base_url, api_key="k", max_retries=0, timeout=1.0)
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        c.chat.completions.create(model="fake-hang", messages=MESSAGES)
    assert fake.wait_cancelled(1, timeout=5.0)
    assert time.monotonic() - started < 6


def test_disconnect_cancels_a_stream(gateway: ManifoldProcess, fake: FakeUpstream) -> None:
    fake.clear()
    body = json.dumps({**OK, "model": "fake-slow_tokens:0.2", "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        assert b"200" in sock.recv(4096)
    assert fake.wait_cancelled(1, timeout=5.0)


def test_no_traceback_or_secret_in_the_log(gateway: ManifoldProcess, http: httpx.Client) -> None:
    for body in (b"{", b"[]", b'{"model": 1, "messages": 2}'):
        http.post("/v1/chat/completions", content=body)
    http.post("/v1/chat/completions", json={**OK, "model": "fake-status:500"})
    log = gateway.log()
    assert "Traceback" not in log
    assert UPSTREAM_KEY not in log and "azure-secret-key" not in log
