"""The request-id layer: names each request once, before any layer inside it can refuse it, so that every answer
(a refusal too) and every log line of the request carry the same id. The id is the client's `x-request-id` when
it is safe to echo (letters, digits, `._:-`, at most 128), else a new `req_…`; it is put in the ASGI scope under
`manifold.request_id` (`request_id(scope)` reads it) and in the request's observability record."""

from __future__ import annotations

import os
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from manifold.observability.record import CURRENT

if TYPE_CHECKING:
    from manifold.server.asgi import Receive, Scope, Send

__all__ = ["SCOPE_KEY", "new_request_id", "request_id", "request_ids"]

SCOPE_KEY = "manifold.request_id"
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


def new_request_id(headers: Any) -> str:
    """The client's `x-request-id` (from ASGI `headers`) when safe to echo, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            if _SAFE_REQUEST_ID.match(value):
                return value.decode()  # type: ignore[no-any-return]
            break
    return "req_" + os.urandom(12).hex()


def request_id(scope: Scope) -> str:
    """The id of the request `scope` belongs to (named now if no request-id layer ran outside)."""
    rid: str | None = scope.get(SCOPE_KEY)
    if rid is None:
        rid = scope[SCOPE_KEY] = new_request_id(scope["headers"])
    return rid


def request_ids(app: Any) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """The layer around `app`."""
    current = CURRENT

    # A plain function returning the inner app's awaitable: no coroutine of its own per request.
    def name_request(scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        if scope["type"] == "http":
            rid = scope[SCOPE_KEY] = new_request_id(scope["headers"])
            rec = current.get()
            if rec is not None:
                rec.request_id = rid
        return app(scope, receive, send)  # type: ignore[no-any-return]

    return name_request
