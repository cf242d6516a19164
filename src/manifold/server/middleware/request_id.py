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


_POOL_BYTES = 12 * 256  # random bytes read at once: 256 request ids


class _RandomHex:
    """Random hex text for new request ids, from the operating system's generator as `os.urandom(12)` gives it,
    read 3 KiB at a time: an id is a slice of text, where a read per id was a system call (`getrandom`, which
    also released and took back the GIL) and ~1.4 us a request. A forked process starts from a new read, so that
    two workers never hand out the same ids."""

    __slots__ = ("pool", "pos")

    def __init__(self) -> None:
        self.pool = ""
        self.pos = 0

    def take(self, chars: int) -> str:
        pos = self.pos
        end = pos + chars
        if end > len(self.pool):
            self.pool = os.urandom(_POOL_BYTES).hex()
            pos, end = 0, chars
        self.pos = end
        return self.pool[pos:end]

    def forget(self) -> None:
        self.pool = ""
        self.pos = 0


_RANDOM = _RandomHex()
os.register_at_fork(after_in_child=_RANDOM.forget)


def new_request_id(headers: Any) -> str:
    """The client's `x-request-id` (from ASGI `headers`) when safe to echo, else a new one: `req_` and 24 random
    hex digits (96 bits)."""
    for name, value in headers:
        if name == b"x-request-id":
            if _SAFE_REQUEST_ID.match(value):
                return value.decode()  # type: ignore[no-any-return]
            break
    return "req_" + _RANDOM.take(24)


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
