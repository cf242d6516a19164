"""Anthropic's errors → Manifold's errors (OpenAI's envelope), for HTTP replies and for `error` stream events.

Anthropic answers ``{"type": "error", "error": {"type": "...", "message": "..."}, "request_id": "req_..."}``
with these statuses (https://docs.claude.com/en/api/errors):

================================  ======  =====================================================
Anthropic `error.type`            status  to the client
================================  ======  =====================================================
invalid_request_error             400     400 invalid_request_error
authentication_error              401     401 authentication_error (the deployment's key)
billing_error                     402     402 billing_error
permission_error                  403     403 permission_error
not_found_error                   404     404 not_found_error
request_too_large                 413     413 invalid_request_error, code request_too_large
rate_limit_error                  429     429 rate_limit_error (Retry-After kept)
api_error                         500     502 upstream_error
timeout_error                     504     504 timeout_error
overloaded_error                  529     503 upstream_overloaded (retryable; Retry-After kept)
================================  ======  =====================================================

In a stream the same error arrives after the 200 as ``event: error``; its type decides the mapping.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from manifold import _json
from manifold.errors import (
    BadGatewayError,
    GatewayTimeoutError,
    ManifoldError,
    UpstreamError,
    UpstreamOverloadedError,
)
from manifold.providers.upstream_http import retry_after_seconds

STATUS_BY_TYPE = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
_TYPE_BY_STATUS = {status: etype for etype, status in STATUS_BY_TYPE.items()}
# The OpenAI envelope's `type` for an Anthropic type that has no OpenAI twin.
_OPENAI_TYPE = {"request_too_large": "invalid_request_error"}
_PASSED_HEADERS = ("retry-after", "retry-after-ms")
_CREDENTIALS = frozenset({"authentication_error", "permission_error"})


def parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    """(error.type, error.message) of an Anthropic error reply; (None, text) when it is not one."""
    try:
        data = _json.decode(body) if body else None
    except msgspec.DecodeError:
        text = body.decode("utf-8", "replace").strip()
        return None, text[:1000] or None
    return error_fields(data)


def error_fields(data: Any) -> tuple[str | None, str | None]:
    err = data.get("error") if isinstance(data, dict) else None
    if not isinstance(err, dict):
        return None, None
    etype = err.get("type")
    message = err.get("message")
    return (etype if isinstance(etype, str) else None), (message if isinstance(message, str) else None)


def anthropic_error(
    status: int | None,
    etype: str | None,
    message: str | None,
    label: str,
    headers: Mapping[str, str] | None = None,
) -> ManifoldError:
    """The Manifold error for an Anthropic error: by HTTP status when there is one, else by its type."""
    if status is None:
        status = STATUS_BY_TYPE.get(etype or "", 500)
    error = _mapped(status, etype, message, label, headers)
    # What the router reads: which upstream status it was, and how long the upstream asked us to wait.
    error.upstream_status = status
    error.retry_after = retry_after_seconds(headers) if headers else None
    return error


def _mapped(
    status: int, etype: str | None, message: str | None, label: str, headers: Mapping[str, str] | None
) -> ManifoldError:
    if etype is None:
        etype = _TYPE_BY_STATUS.get(status)
    passed = {k: headers[k] for k in _PASSED_HEADERS if k in headers} if headers else {}
    detail = f": {message}" if message else "."
    if status == 529 or etype == "overloaded_error":
        return UpstreamOverloadedError(f"The upstream for {label} is overloaded{detail}", headers=passed)
    if status == 504 or etype == "timeout_error":
        return GatewayTimeoutError(f"The upstream for {label} timed out{detail}")
    if status >= 500:
        what = etype or f"status {status}"
        return BadGatewayError(f"The upstream for {label} failed ({what}){detail}", code="upstream_error")
    if etype in _CREDENTIALS:
        text = f"The upstream for {label} refused the deployment's credentials{detail}"
    else:
        text = message or f"The upstream for {label} answered with status {status}."
    return UpstreamError(
        status,
        text,
        type=_OPENAI_TYPE.get(etype or "", etype or "invalid_request_error"),
        code=etype,
        headers=passed,
    )
