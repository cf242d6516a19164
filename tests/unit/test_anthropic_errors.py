"""Anthropic's error replies become OpenAI's envelope with the right status (https://docs.claude.com/en/api/errors)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from multidict import CIMultiDict

from manifold.config import Deployment
from manifold.errors import BadGatewayError, GatewayTimeoutError, ManifoldError, UpstreamError, UpstreamOverloadedError
from manifold.providers.anthropic.provider import AnthropicSession
from tests.conformance.schema import assert_valid

DEPLOYMENT = msgspec.convert(
    {"model_name": "claude", "provider": "anthropic", "model": "claude-sonnet-4-5"}, Deployment
)
SESSION = AnthropicSession(DEPLOYMENT, base_url="https://api.anthropic.com")


def anthropic_body(etype: str, message: str) -> bytes:
    # The shape of every Anthropic error reply (the errors page's example).
    return json.dumps(
        {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_011CSHoEeqs5C35K2UUqR7Fy"}
    ).encode()


def envelope(err: ManifoldError) -> dict[str, Any]:
    body = err.to_dict()
    assert_valid("ErrorResponse", body)
    inner: dict[str, Any] = body["error"]
    return inner


@pytest.mark.parametrize(
    ("status", "etype", "want_status", "want_type", "want_code"),
    [
        (400, "invalid_request_error", 400, "invalid_request_error", "invalid_request_error"),
        (401, "authentication_error", 401, "authentication_error", "authentication_error"),
        (402, "billing_error", 402, "billing_error", "billing_error"),
        (403, "permission_error", 403, "permission_error", "permission_error"),
        (404, "not_found_error", 404, "not_found_error", "not_found_error"),
        (413, "request_too_large", 413, "invalid_request_error", "request_too_large"),
        (429, "rate_limit_error", 429, "rate_limit_error", "rate_limit_error"),
        (500, "api_error", 502, "upstream_error", "upstream_error"),
        (504, "timeout_error", 504, "timeout_error", "upstream_timeout"),
        (529, "overloaded_error", 503, "server_error", "upstream_overloaded"),
    ],
)
def test_each_documented_error_type(status: int, etype: str, want_status: int, want_type: str, want_code: str) -> None:
    err = SESSION.error_for_status(status, anthropic_body(etype, "upstream says no"), CIMultiDict())
    assert err.status_code == want_status
    inner = envelope(err)
    assert inner["type"] == want_type
    assert inner["code"] == want_code
    assert "upstream says no" in inner["message"]
    assert "http" not in inner["message"]  # never the upstream URL


def test_overloaded_is_retryable_and_keeps_retry_after() -> None:
    headers = CIMultiDict({"retry-after": "3", "x-should-not-pass": "1"})
    err = SESSION.error_for_status(529, anthropic_body("overloaded_error", "Overloaded"), headers)
    assert isinstance(err, UpstreamOverloadedError)
    assert err.status_code == 503  # the official SDKs retry every 5xx
    assert err.headers == {"retry-after": "3"}


def test_rate_limit_keeps_retry_after() -> None:
    err = SESSION.error_for_status(
        429, anthropic_body("rate_limit_error", "slow down"), CIMultiDict({"retry-after": "7"})
    )
    assert isinstance(err, UpstreamError)
    assert err.headers == {"retry-after": "7"}


def test_credentials_errors_say_they_are_the_deployments() -> None:
    err = SESSION.error_for_status(401, anthropic_body("authentication_error", "invalid x-api-key"), CIMultiDict())
    assert "refused the deployment's credentials" in err.message


@pytest.mark.parametrize(
    ("status", "body", "cls", "want"),
    [
        (529, b"", UpstreamOverloadedError, 503),
        (500, b"<html>oops</html>", BadGatewayError, 502),
        (504, b"", GatewayTimeoutError, 504),
        (418, b'{"unexpected": true}', UpstreamError, 418),
        (400, b"plain text reason", UpstreamError, 400),
    ],
)
def test_non_anthropic_bodies_map_by_status(status: int, body: bytes, cls: type[ManifoldError], want: int) -> None:
    err = SESSION.error_for_status(status, body, CIMultiDict())
    assert isinstance(err, cls)
    assert err.status_code == want
    envelope(err)
    if body == b"plain text reason":
        assert err.message == "plain text reason"
