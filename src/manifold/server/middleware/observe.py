"""The observing layer: a `RequestRecord` per request for the layers inside to fill in, then, when the response
is done, the request's metrics, its access line and its server span (`Observer.readers`)."""

from __future__ import annotations

import time
from collections.abc import Awaitable

from manifold.observability.observer import Observer
from manifold.observability.record import CURRENT, RequestRecord
from manifold.server.asgi import OBSERVED_SEND, Message, Receive, Scope, Send

__all__ = ["ObserveRequests"]

# The status of a request whose client left before any response was started (nginx's convention).
CLIENT_CLOSED = 499


class ObserveRequests:
    __slots__ = ("app", "observer", "readers")

    def __init__(self, app: object, observer: Observer) -> None:
        self.app = app
        self.observer = observer
        self.readers = observer.readers()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # type: ignore[operator]
            return
        client = scope.get("client")
        rec = RequestRecord(scope["method"], client[0] if client else None)
        tracing = self.observer.tracing
        if tracing is not None:
            tracing.start_server_span(rec, scope)
        token = CURRENT.set(rec)

        # A plain function returning `send`'s own awaitable: no coroutine of ours per message (a stream sends many).
        def send_status(message: Message) -> Awaitable[None]:
            if message["type"] == "http.response.start":
                rec.status = message["status"]
            return send(message)

        scope[OBSERVED_SEND] = (send_status, send)  # body messages may skip send_status (asgi.body_send)

        try:
            await self.app(scope, receive, send_status)  # type: ignore[operator]
        except BaseException:
            if not rec.status:
                rec.status = 500
            raise
        finally:
            # The pair holds the server's `send`, whose cycle object holds this scope: a reference cycle that
            # would keep the whole request alive until the cyclic collector ran.
            scope.pop(OBSERVED_SEND, None)
            CURRENT.reset(token)
            if not rec.status:
                rec.status = CLIENT_CLOSED
            rec.end = time.monotonic()
            for read in self.readers:
                read(rec)
