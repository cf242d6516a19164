"""The ASGI application: prefix mounts, dispatch, request ids, the error envelope, lifespan, disconnects.

It is a plain ASGI callable (mountable in Starlette or FastAPI). Its routes come from the one route table
(`manifold.api.operations`, served by `manifold.server.handlers`); a handler takes `(services, request,
**path_params)`, `services` holding exactly what endpoints use (`manifold.server.services`). Around the dispatch
sit the request layers, composed in one place (`ManifoldApp.compose`): each is `layer(inner) -> ASGI app`,
outermost first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any

from manifold.access.auth import Authenticator, AuthLayer
from manifold.access.ledger import Ledger
from manifold.access.principal import CURRENT_PRINCIPAL
from manifold.access.wiring import build_admission
from manifold.api.operations import ROOT_OPERATIONS
from manifold.config import Config, ServerSettings, secrets_of
from manifold.errors import ManifoldError
from manifold.mcp.gateway import McpGateway
from manifold.mcp.manager import McpManager
from manifold.observability import tracing as tracing_setup
from manifold.observability.metrics import flush_periodically, multiprocess_dir
from manifold.observability.observer import Observer
from manifold.observability.record import CURRENT
from manifold.observability.redaction import add_secrets
from manifold.responses.engine import ResponsesEngine
from manifold.routing.router import Router
from manifold.server.asgi import Message, Receive, Request, Scope, Send
from manifold.server.endpoints import metrics
from manifold.server.handlers import default_routes
from manifold.server.middleware.observe import ObserveRequests
from manifold.server.middleware.request_id import request_ids
from manifold.server.routes import Handler, PathRouter, Route
from manifold.server.services import Services
from manifold.storage import Store

log = logging.getLogger("manifold.server")

ASGIApp = Callable[[Scope, Receive, Send], Any]
# A request layer: wraps the app inside it (a pure ASGI app around another; docs/library.md).
Layer = Callable[[ASGIApp], ASGIApp]


class ManifoldApp:
    """The gateway as an ASGI app.

    `router`: the router to serve (default: one built from `config.model_list`). `routes`: the routes to mount
    (default: those `config` asks for, `manifold.server.handlers.default_routes`); more can be mounted later with
    `add_route`. `layers`: a library user's own request layers, inside Manifold's observing and request-id
    layers (so that their refusals are counted, logged and carry the request's id); the first is outermost.
    """

    def __init__(
        self,
        config: Config,
        router: Router | None = None,
        layers: Sequence[Layer] = (),
        *,
        routes: Iterable[Route] | None = None,
    ) -> None:
        self.config = config
        self.settings: ServerSettings = config.server
        # Limits, budgets and prices (docs/access.md): the router's admission hook.
        self.admission = build_admission(config)
        if router is None:
            router = Router(config.model_list, settings=config.router, admission=self.admission)
        elif router.admission is None:
            router.admission = self.admission
        self.router = router
        add_secrets(secrets_of(config))  # error messages and logs never show them (observability.redaction)
        self.tracing = tracing_setup.setup(config.tracing.enabled, config.tracing.capture_content, secrets_of(config))
        self.router.observe(config.metrics.enabled, self.tracing)
        self.store = Store(config.storage)
        # The usage ledger reads each request's record: with it on there is a record even with no other observer.
        ignored = [op.path for op in ROOT_OPERATIONS] + [config.metrics.path]
        self.ledger = Ledger(self.store, config.ledger, ignored) if config.ledger_on else None
        sinks = () if self.ledger is None else (self.ledger.record,)
        observing = config.metrics.enabled or self.settings.access_log or self.tracing is not None or bool(sinks)
        self.observer = (
            Observer(config.metrics.enabled, self.settings.access_log, self.tracing, sinks) if observing else None
        )
        self.mcp = McpManager(config.mcp_servers, config.mcp)
        self.mcp_gateway = McpGateway(self.mcp)
        self.responses = ResponsesEngine(self.router, self.store, config.responses, self.mcp)
        self.auth = Authenticator(config.auth, self.store, config.redis, host=self.settings.host)
        self.services = Services(
            self.router,
            self.store,
            self.responses,
            self.settings,
            config,
            self.auth,
            mcp=self.mcp,
            mcp_gateway=self.mcp_gateway,
        )
        # What needs no key (docs/access.md): health, and the metrics scrape when served on this port.
        self.open_paths = [op.path for op in ROOT_OPERATIONS]
        if config.metrics.enabled and config.metrics.port is None:
            self.open_paths.append(config.metrics.path)
        self._paths = PathRouter()
        self._routes: dict[tuple[str, str], Route] = {}
        for route in default_routes(config) if routes is None else routes:
            self.add_route(route)
        self._started = False
        self._flusher: asyncio.Task[None] | None = None
        self.layers: tuple[Layer, ...] = ()
        self.handle: ASGIApp = self.compose(layers)

    def add_route(self, route: Route) -> None:
        """Mount `route`; one already at its method and path is replaced."""
        self._routes[(route.method, route.path)] = route
        self._paths.add(route)

    @property
    def routes(self) -> list[Route]:
        """Every mounted route, in the order first mounted."""
        return list(self._routes.values())

    def compose(self, extra: Sequence[Layer]) -> ASGIApp:
        """The request layers around the dispatch, outermost first: observing (metrics, access log, server
        span), the request id, authentication (its refusals observed and carrying the id), then `extra`.
        `self.layers` lists them."""
        layers: list[Layer] = []
        if self.observer is not None:
            layers.append(partial(ObserveRequests, observer=self.observer))
        layers.append(request_ids)
        layers.append(partial(AuthLayer, auth=self.auth, open_paths=self.open_paths))
        layers.extend(extra)
        self.layers = tuple(layers)
        app: ASGIApp = self._http
        for layer in reversed(layers):
            app = layer(app)
        return app

    async def startup(self) -> None:
        if not self._started:
            self._started = True
            self.store.start()  # in the background: nothing waits for it but what stores (and, once, auth)
            self.auth.start()
            if self.ledger is not None:
                self.ledger.start()
            await self.router.start()
            self.responses.start()
            self.mcp.start()  # in the background: the server is ready without its MCP servers
            settings = self.config.metrics
            if settings.enabled:
                self._flusher = asyncio.get_running_loop().create_task(flush_periodically())
            # With several workers `manifold serve` serves the port itself (the sum of all workers).
            if settings.enabled and settings.port is not None and multiprocess_dir() is None:
                metrics.serve_on_port(settings.port, self.settings.host, settings.path)

    async def shutdown(self) -> None:
        if self._started:
            self._started = False
            await self.responses.aclose()
            await self.auth.aclose()
            await self.mcp_gateway.aclose()
            await self.mcp.aclose()
            await self.router.aclose()
            await self.admission.aclose()
            if self.ledger is not None:
                await self.ledger.aclose()  # the buffered usage rows, before the store closes
            await self.store.aclose()
            if self._flusher is not None:
                self._flusher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._flusher
                self._flusher = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self.handle(scope, receive, send)
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
        rec = CURRENT.get()
        if rec is not None:
            principal = CURRENT_PRINCIPAL.get()  # set by the authentication layer, inside the observing one
            if principal is not None:
                rec.key_id = principal.key_id
                rec.key_alias = principal.key_alias
                rec.team_id = principal.team_id
                rec.user = principal.user
        try:
            route, params = self._paths.match(request.method, request.path)
            if rec is not None:
                rec.route = route.path
            if route.cancellable:
                await self._cancel_on_disconnect(route.handler, request, params)
            else:
                await route.handler(self.services, request, **params)
        except ManifoldError as exc:
            await request.send_error(exc)
        except asyncio.CancelledError:
            if not request.disconnected:
                raise
        except Exception:
            log.exception("request %s failed", request.request_id)
            with contextlib.suppress(Exception):
                await request.send_error(ManifoldError("The server had an error processing your request."))

    async def _cancel_on_disconnect(self, handler: Handler, request: Request, params: dict[str, str]) -> None:
        """Run the handler; if the client disconnects first, cancel it (which cancels the upstream request)."""
        task = asyncio.current_task()
        assert task is not None
        # The task's loop and a bare future, not `get_running_loop()` and an `asyncio.Event`: on CPython 3.11
        # each of those looks the running loop up again, a getpid system call.
        loop = task.get_loop()
        body_read: asyncio.Future[None] = loop.create_future()
        original_receive = request.receive

        async def receive_then_mark() -> Message:
            message = await original_receive()
            if not message.get("more_body", False) and not body_read.done():
                body_read.set_result(None)
            return message

        async def watch() -> None:
            await body_read
            while True:
                message = await original_receive()
                if message["type"] == "http.disconnect":
                    request.disconnected = True
                    task.cancel()
                    return

        request.receive = receive_then_mark
        watcher = loop.create_task(watch())
        try:
            await handler(self.services, request, **params)
        except asyncio.CancelledError:
            if request.disconnected:
                task.uncancel()
                log.info("request %s: client disconnected; upstream request cancelled", request.request_id)
                return
            raise
        finally:
            watcher.cancel()


def build_app(
    config: Config, router: Router | None = None, layers: Sequence[Layer] = (), *, routes: Iterable[Route] | None = None
) -> ManifoldApp:
    return ManifoldApp(config, router, layers, routes=routes)
