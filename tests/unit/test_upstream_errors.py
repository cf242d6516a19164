"""error_from_upstream: an upstream's error reply becomes OpenAI's envelope with the right status."""

from __future__ import annotations

import json
from typing import Any

import pytest
from multidict import CIMultiDict

from manifold.errors import BadGatewayError, ManifoldError, UpstreamError
from manifold.providers.upstream_http import error_from_upstream

LABEL = "'gpt-4o' (upstream model 'meta/llama-3')"
NO_HEADERS: CIMultiDict[str] = CIMultiDict()


def envelope(err: ManifoldError) -> dict[str, Any]:
    body = json.loads(err.to_json())
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def openai_error(message: str, type: str, param: str | None, code: str | None) -> bytes:
    return json.dumps({"error": {"message": message, "type": type, "param": param, "code": code}}).encode()


def test_400_openai_envelope_passes_through() -> None:
    body = openai_error(
        "Invalid 'messages[1].role': unknown role.", "invalid_request_error", "messages[1].role", "invalid_value"
    )
    err = error_from_upstream(400, body, NO_HEADERS, LABEL)
    assert isinstance(err, UpstreamError)
    assert err.status_code == 400
    assert envelope(err) == {
        "message": "Invalid 'messages[1].role': unknown role.",
        "type": "invalid_request_error",
        "param": "messages[1].role",
        "code": "invalid_value",
    }
    assert err.headers == {}


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422, 429])
def test_4xx_keeps_the_upstream_status(status: int) -> None:
    err = error_from_upstream(status, openai_error("nope", "some_type", None, "c"), NO_HEADERS, LABEL)
    assert isinstance(err, UpstreamError)
    assert err.status_code == status
    assert envelope(err) == {"message": "nope", "type": "some_type", "param": None, "code": "c"}


def test_429_keeps_retry_after_headers() -> None:
    headers = CIMultiDict(
        {
            "Retry-After": "7",
            "retry-after-ms": "7000",
            "Content-Type": "application/json",
            "Set-Cookie": "secret=1",
            "x-ratelimit-remaining-requests": "0",
        }
    )
    body = openai_error("Rate limit reached.", "rate_limit_error", None, "rate_limit_exceeded")
    err = error_from_upstream(429, body, headers, LABEL)
    assert isinstance(err, UpstreamError)
    assert err.status_code == 429
    assert err.headers == {"retry-after": "7", "retry-after-ms": "7000"}
    assert envelope(err) == {
        "message": "Rate limit reached.",
        "type": "rate_limit_error",
        "param": None,
        "code": "rate_limit_exceeded",
    }


def test_429_without_type_is_a_rate_limit_error() -> None:
    err = error_from_upstream(429, b"Too Many Requests", CIMultiDict({"Retry-After": "1"}), LABEL)
    assert err.status_code == 429
    assert envelope(err)["type"] == "rate_limit_error"
    assert envelope(err)["message"] == "Too Many Requests"
    assert err.headers == {"retry-after": "1"}


@pytest.mark.parametrize(
    ("status", "body", "fragment"),
    [
        (500, openai_error("The server had an error.", "server_error", None, None), "The server had an error."),
        (503, b"Service Unavailable", "Service Unavailable"),
        (502, b"<html><body>Bad Gateway</body></html>", "Bad Gateway"),
        (504, b'{"detail": "worker timeout"}', "worker timeout"),
        (500, b"", None),
    ],
)
def test_5xx_becomes_502(status: int, body: bytes, fragment: str | None) -> None:
    err = error_from_upstream(status, body, CIMultiDict({"Retry-After": "5"}), LABEL)
    assert isinstance(err, BadGatewayError)
    assert err.status_code == 502
    env = envelope(err)
    assert env["type"] == "upstream_error"
    assert env["code"] == "upstream_error"
    assert env["param"] is None
    assert str(status) in env["message"]  # the upstream's status is kept in the text
    assert LABEL in env["message"]
    if fragment is not None:
        assert fragment in env["message"]
    else:
        assert env["message"].endswith(f"failed with status {status}.")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"Bad Request: prompt too long", "Bad Request: prompt too long"),
        (b"  model not loaded\n", "model not loaded"),
        (b"\xff\xfeoops", "\ufffd\ufffdoops"),
    ],
)
def test_plain_text_body(body: bytes, message: str) -> None:
    err = error_from_upstream(400, body, NO_HEADERS, LABEL)
    assert isinstance(err, UpstreamError)
    assert err.status_code == 400
    assert envelope(err) == {"message": message, "type": "invalid_request_error", "param": None, "code": None}


def test_long_plain_text_is_truncated() -> None:
    err = error_from_upstream(400, b"x" * 5000, NO_HEADERS, LABEL)
    assert err.message == "x" * 1000


@pytest.mark.parametrize(
    ("body", "message", "code"),
    [
        (b'{"error": "model is loading"}', "model is loading", None),
        (b'{"detail": "Not authenticated"}', "Not authenticated", None),
        (b'{"error": {"detail": "nested detail"}}', "nested detail", None),
        (b'{"error": {"msg": "msg key"}}', "msg key", None),
        # vLLM's flat error object, numeric code
        (
            b'{"object": "error", "message": "vllm says no", "type": "BadRequestError", "code": 400}',
            "vllm says no",
            "400",
        ),
        (b'{"error": {"message": "int code", "code": 400}}', "int code", "400"),
    ],
)
def test_other_json_shapes(body: bytes, message: str, code: str | None) -> None:
    err = error_from_upstream(400, body, NO_HEADERS, LABEL)
    assert isinstance(err, UpstreamError)
    assert err.status_code == 400
    assert err.message == message
    assert err.code == code
    assert isinstance(envelope(err)["type"], str)


def test_detail_list_is_serialized_as_text() -> None:
    body = b'{"detail": [{"loc": ["body", "messages"], "msg": "field required", "type": "missing"}]}'
    err = error_from_upstream(422, body, NO_HEADERS, LABEL)
    assert err.status_code == 422
    assert isinstance(err.message, str)
    assert "field required" in err.message


@pytest.mark.parametrize("body", [b"", b"   ", b"null", b"[]", b"42", b'{"error": null}', b"{}"])
def test_empty_or_useless_body(body: bytes) -> None:
    err = error_from_upstream(400, body, NO_HEADERS, LABEL)
    assert isinstance(err, UpstreamError)
    assert err.status_code == 400
    env = envelope(err)
    assert env["message"] == f"The upstream for {LABEL} answered with status 400."
    assert env["type"] == "invalid_request_error"
    assert env["param"] is None
    assert env["code"] is None


def test_non_string_type_and_param_are_dropped() -> None:
    body = b'{"error": {"message": "m", "type": 5, "param": ["x"]}}'
    env = envelope(error_from_upstream(400, body, NO_HEADERS, LABEL))
    assert env == {"message": "m", "type": "invalid_request_error", "param": None, "code": None}
