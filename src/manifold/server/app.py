"""The ASGI application: prefix mounts, dispatch, request ids, the error envelope, lifespan, disconnects.

It is a plain ASGI callable (mountable in Starlette or FastAPI). Dispatch is a dict lookup on the exact path:
every request pays for routing, so no per-route regex scan.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from manifold.config import Config, ServerSettings
from manifold.errors import ManifoldError, MethodNotAllowedError, NotFoundError
from manifold.routing.router import Router
from manifold.server.endpoints import chat, health, models
from manifold.server.http import Message, Receive, Request, Scope, Send

log = logging.getLogger("manifold.server")

Handler = Callable[["ManifoldApp", Request], Awaitable[None]]
# Endpoints that may wait on an upstream: a client that leaves cancels them.
_CANCELLABLE = frozenset({chat.create_chat_completion})


class ManifoldApp:
    def __init__(self, config: Config, router: Router | None = None) -> None:
        self.config = config
        self.settings: ServerSettings = config.server
        self.router = router if router is not None else Router(config.model_list)
        self._routes: dict[str, dict[str, Handler]] = {}
        self._model_prefixes: list[str] = []
        for prefix in self.settings.prefixes:
            p = "" if prefix == "/" else prefix
            self._add(f"{p}/chat/completions", "POST", chat.create_chat_completion)
            self._add(f"{p}/models", "GET", models.list_models)
            self._model_prefixes.append(f"{p}/models/")
        self._add("/health", "GET", health.alive)
        self._add("/health/ready", "GET", health.ready)
        self._started = False

    def _add(self, path: str, method: str, handler: Handler) -> None:
        self._routes.setdefault(path, {})[method] = handler

    async def startup(self) -> None:
        if not self._started:
            self._started = True
            await self.router.start()

    async def shutdown(self) -> None:
        if self._started:
            self._started = False
            await self.router.aclose()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive, send)
        if not self._started:
            # Mounted without lifespan support (some hosts): start on first use.
            await self.startup()
        try:
            methods = self._routes.get(request.path)
            if methods is not None:
                handler = methods.get(request.method)
                if handler is None:
                    raise MethodNotAllowedError(
                        f"Method {request.method} is not allowed for {request.path}.",
                        headers={"allow": ", ".join(sorted(methods))},
                    )
                if handler in _CANCELLABLE:
                    await self._cancel_on_disconnect(handler, request)
                else:
                    await handler(self, request)
                return
            for prefix in self._model_prefixes:
                if request.path.startswith(prefix) and len(request.path) > len(prefix):
                    if request.method != "GET":
                        raise MethodNotAllowedError(
                            f"Method {request.method} is not allowed for {request.path}.",
                            headers={"allow": "GET"},
                        )
                    await models.retrieve_model(self, request, request.path[len(prefix) :])
                    return
            raise NotFoundError(f"Invalid URL ({request.method} {request.path})", code="unknown_url")
        except ManifoldError as exc:
            await request.send_error(exc)
        except asyncio.CancelledError:
            if not request.disconnected:
                raise
        except Exception:
            log.exception("request %s failed", request.request_id)
            with contextlib.suppress(Exception):
                await request.send_error(ManifoldError("The server had an error processing your request."))

    async def _cancel_on_disconnect(self, handler: Handler, request: Request) -> None:
        """Run the handler; if the client disconnects first, cancel it (which cancels the upstream request)."""
        task = asyncio.current_task()
        assert task is not None
        body_read = asyncio.Event()
        original_receive = request.receive

        async def receive_then_mark() -> Message:
            message = await original_receive()
            if not message.get("more_body", False):
                body_read.set()
            return message

        async def watch() -> None:
            await body_read.wait()
            while True:
                message = await original_receive()
                if message["type"] == "http.disconnect":
                    request.disconnected = True
                    task.cancel()
                    return

        request.receive = receive_then_mark
        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await handler(self, request)
        except asyncio.CancelledError:
            if request.disconnected:
                task.uncancel()
                log.info("request %s: client disconnected; upstream request cancelled", request.request_id)
                return
            raise
        finally:
            watcher.cancel()


def build_app(config: Config, router: Router | None = None) -> ManifoldApp:
    return ManifoldApp(config, router)
