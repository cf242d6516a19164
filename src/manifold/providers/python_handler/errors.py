"""What a handler raises or returns to answer with a status of its own, and the errors about handlers.

HTTPError             raised by a handler: OpenAI's error envelope with the handler's status and code
Response              returned by a handler: a reply with its own status; a non-2xx one passes through
HandlerReply          (internal) a non-2xx `Response` on its way to the client, untouched
HandlerFailedError    500: the handler raised something else (logged with its traceback)
HandlerContractError  500: the handler's answer or signature does not fit the route (logged)
MissingFieldError     422 (or 400): a field the spec makes mandatory is missing from the request
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from manifold import _json
from manifold.errors import ManifoldError, MissingParameterError

_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


class HTTPError(ManifoldError):
    """Raise it from a handler to answer with `status` and OpenAI's error envelope, e.g.
    `HTTPError(404, "No such completion", code="not_found")` (the SDK raises `NotFoundError`)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not 400 <= status <= 599:
            raise ValueError(f"HTTPError status must be a 4xx or 5xx code, got {status}")
        super().__init__(message, param=param, code=code, headers=headers)
        self._status = status
        self._type = type or _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")

    @property
    def status_code(self) -> int:
        return self._status

    def to_dict(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self._type, "param": self.param, "code": self.code}}


class Response:
    """A handler's reply with a status (and headers) of its own.

    A 2xx body is mapped to the route's contract like any other answer; a non-2xx one passes through untouched
    (an OpenAI error envelope reaches the SDK as its typed error; a body that is not a JSON object becomes the
    message of one). `body` is anything JSON-encodable, or bytes already encoded as JSON."""

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, body: Any = None, status_code: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.body = body
        self.status_code = status_code
        self.headers = dict(headers or {})


class HandlerReply(ManifoldError):
    """A non-2xx reply of the handler, sent as it is (a JSON body untouched; any other body as the message of
    an error envelope, so the SDKs still raise their typed error)."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        try:
            decoded: Any = _json.decode(body) if body else None
        except msgspec.DecodeError:
            decoded = body.decode("utf-8", "replace")
        if not isinstance(decoded, dict):
            text = decoded if isinstance(decoded, str) and decoded else f"The handler answered with status {status}."
            kind = "server_error" if status >= 500 else "invalid_request_error"
            decoded = {"error": {"message": text, "type": kind, "param": None, "code": None}}
            body = _json.encode(decoded)
        error = decoded.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        headers = {k: v for k, v in headers.items() if k != "content-type"}  # the body is JSON now
        super().__init__(str(message) if message is not None else f"status {status}", headers=headers)
        self._status = status
        self._body = body
        self._decoded: dict[str, Any] = decoded

    @property
    def status_code(self) -> int:
        return self._status

    def to_dict(self) -> dict[str, Any]:
        return self._decoded

    def to_json(self) -> bytes:
        return self._body


class HandlerFailedError(ManifoldError):
    default_code = "handler_error"


class HandlerContractError(ManifoldError):
    default_code = "handler_invalid_answer"


class MissingFieldError(MissingParameterError):
    """A field the spec requires is missing. 422 by default, as MLRun's frontend answers (the SDK raises
    `UnprocessableEntityError`); OpenAI itself answers 400, which `mandatory_status=400` selects."""

    def __init__(self, field: str, status: int) -> None:
        super().__init__(f"Missing required parameter: '{field}'.", param=field)
        self._status = status

    @property
    def status_code(self) -> int:
        return self._status


def reply_parts(reply: Any) -> tuple[int, Any, dict[str, str]] | None:
    """(status, body, headers) of a handler's `Response`, or of a Starlette/FastAPI response object it
    returned; None for any other value."""
    if isinstance(reply, Response):
        return reply.status_code, reply.body, _own_headers(reply.headers)
    status = getattr(reply, "status_code", None)
    body = getattr(reply, "body", None)
    if isinstance(status, int) and isinstance(body, bytes | bytearray):
        raw_headers = getattr(reply, "headers", None) or {}
        return status, bytes(body), _own_headers(dict(raw_headers))
    return None


def _own_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The reply's headers, lower-cased, without the framing ones the server sets itself."""
    return {str(k).lower(): str(v) for k, v in headers.items() if str(k).lower() != "content-length"}
