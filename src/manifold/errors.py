"""Manifold's error hierarchy, mapped to HTTP once.

::

    ManifoldError                   any error that reaches a client as OpenAI's error envelope
    ├── InvalidRequestError         400 invalid_request_error (a bad value; `param` names it)
    │   ├── MissingParameterError   400, code missing_required_parameter
    │   └── UnsupportedError        400, the backend cannot do what was asked
    ├── AuthenticationError         401
    ├── NotFoundError               404 (unknown path, unknown object)
    │   └── ModelNotFoundError      404, code model_not_found
    ├── MethodNotAllowedError       405
    ├── PayloadTooLargeError        413
    ├── RateLimitError              429
    ├── UpstreamError               an upstream's own 4xx error, passed through with its status
    ├── BadGatewayError             502: upstream 5xx, connection refused/reset, malformed reply
    ├── ServiceUnavailableError     503: no deployment can take the request now
    │   └── UpstreamOverloadedError 503: the upstream is overloaded (Anthropic's 529); retry later
    └── GatewayTimeoutError         504: an upstream timeout (connect, first byte, total)

    ConfigError                     a bad configuration; never reaches a client (raised before serving)

Each error renders as ``{"error": {"message", "type", "param", "code"}}``, the shape both official SDKs parse.
"""

from __future__ import annotations

from typing import Any, ClassVar

from manifold import _json
from manifold.observability.redaction import redact


class ManifoldError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    default_code: ClassVar[str | None] = None
    # Set on errors an upstream caused: its HTTP status, and the wait it asked for (Retry-After, in seconds).
    upstream_status: int | None = None
    retry_after: float | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.headers = headers or {}

    @property
    def status_code(self) -> int:
        return self.status

    def to_dict(self) -> dict[str, Any]:
        # An upstream's message may quote the key it was sent: never pass a configured secret on to a client.
        return {"error": {"message": redact(self.message), "type": self.type, "param": self.param, "code": self.code}}

    def to_json(self) -> bytes:
        return _json.encode(self.to_dict())


class InvalidRequestError(ManifoldError):
    status = 400
    type = "invalid_request_error"


class MissingParameterError(InvalidRequestError):
    default_code = "missing_required_parameter"


class UnsupportedError(InvalidRequestError):
    default_code = "unsupported_parameter"


class AuthenticationError(ManifoldError):
    status = 401
    type = "authentication_error"
    default_code = "invalid_api_key"


class NotFoundError(ManifoldError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"


class ModelNotFoundError(NotFoundError):
    default_code = "model_not_found"


class MethodNotAllowedError(ManifoldError):
    status = 405
    type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLargeError(ManifoldError):
    status = 413
    type = "invalid_request_error"
    default_code = "request_too_large"


class RateLimitError(ManifoldError):
    status = 429
    type = "rate_limit_error"
    default_code = "rate_limit_exceeded"


class UpstreamError(ManifoldError):
    """An upstream's own error reply (4xx), passed to the client with the upstream's status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code, headers=headers)
        self._status = status
        self._type = type

    @property
    def status_code(self) -> int:
        return self._status

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": redact(self.message), "type": self._type, "param": self.param, "code": self.code}}


class BadGatewayError(ManifoldError):
    status = 502
    type = "upstream_error"
    default_code = "bad_gateway"


class ServiceUnavailableError(ManifoldError):
    status = 503
    type = "server_error"
    default_code = "service_unavailable"


class UpstreamOverloadedError(ServiceUnavailableError):
    """The upstream answered that it is overloaded (Anthropic's 529 `overloaded_error`). A 503, so clients
    (the official SDKs retry every 5xx) and the router treat it as retryable."""

    default_code = "upstream_overloaded"


class GatewayTimeoutError(ManifoldError):
    status = 504
    type = "timeout_error"
    default_code = "upstream_timeout"


class ConfigError(Exception):
    """A configuration problem; `problems` lists each one with its location (`model_list[0].provider`)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
