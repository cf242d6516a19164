"""Small pure-ASGI request/response helpers: body limits, JSON responses, request ids."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from manifold.errors import InvalidRequestError, ManifoldError, PayloadTooLargeError
from manifold.server.middleware.request_id import request_id as _request_id

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Put in the scope by the observing layer (middleware/observe.py): (the `send` it hands inward, which notes the
# status of `http.response.start`, the `send` it was given). `body_send` reads it.
OBSERVED_SEND = "manifold.observed_send"


def body_send(request: Request) -> Send:
    """The `send` for the body messages of a response already started: the one the observing layer was given
    when the request's own `send` is the observing layer's, unwrapped since (it reads nothing in a body
    message, and a stream sends one per chunk); else the request's own (a layer inside may read them)."""
    pair = request.scope.get(OBSERVED_SEND)
    send = request.send
    if pair is not None and pair[0] is send:
        return pair[1]  # type: ignore[no-any-return]
    return send


_HEADER_NAMES: dict[str, bytes] = {}  # a response header's name → its lowercase bytes
_HEADER_NAMES_KEPT = 1024


class Request:
    """The parts of an ASGI request the endpoints use. `request_id` is the client's `x-request-id` when it is
    safe to echo, else a new one (`manifold.server.middleware.request_id`)."""

    __slots__ = (
        "disconnected",
        "method",
        "path",
        "query_string",
        "receive",
        "request_id",
        "response_headers",
        "scope",
        "send",
    )

    def __init__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.query_string: bytes = scope.get("query_string", b"")
        self.disconnected = False
        # Headers every response to this request carries (e.g. which deployment answered).
        self.response_headers: list[tuple[bytes, bytes]] | None = None
        # Named by the request-id layer (server/middleware/request_id.py), or now when none ran.
        self.request_id: str = scope.get("manifold.request_id") or _request_id(scope)

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return value  # type: ignore[no-any-return]
        return None

    async def body(self, limit: int) -> bytes:
        length = self.header(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                raise InvalidRequestError("Invalid Content-Length header.") from None
            if declared > limit:
                raise PayloadTooLargeError(f"Request body too large: {declared} bytes; the limit is {limit} bytes.")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                raise asyncio.CancelledError()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLargeError(f"Request body too large: over the limit of {limit} bytes.")
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def base_headers(self, content_type: bytes = b"application/json") -> list[tuple[bytes, bytes]]:
        headers = [(b"content-type", content_type), (b"x-request-id", self.request_id.encode())]
        if self.response_headers:
            headers.extend(self.response_headers)
        return headers

    def add_response_header(self, name: str, value: str) -> None:
        encoded = _HEADER_NAMES.get(name)
        if encoded is None:  # names come from code, a few dozen: each lowered and encoded once, not per answer
            encoded = name.lower().encode()
            if len(_HEADER_NAMES) < _HEADER_NAMES_KEPT:
                _HEADER_NAMES[name] = encoded
        headers = self.response_headers
        if headers is None:
            headers = self.response_headers = []
        headers.append((encoded, value.encode("latin-1")))

    async def send_json(self, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        h = self.base_headers()
        if headers:
            h.extend(headers)
        h.append((b"content-length", str(len(body)).encode()))
        await self.send({"type": "http.response.start", "status": status, "headers": h})
        await self.send({"type": "http.response.body", "body": body})

    async def send_error(self, error: ManifoldError) -> None:
        extra = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await self.send_json(error.status_code, error.to_json(), extra)
