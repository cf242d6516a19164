"""The ASGI application: prefix mounts, dispatch, request ids, the error envelope, lifespan, disconnects.

It is a plain ASGI callable (mountable in Starlette or FastAPI). Every API route is listed once in `API_ROUTES`
and mounted under each configured prefix. Around the dispatch sit the request layers, composed in one place
(`ManifoldApp.compose`): each is `layer(inner) -> ASGI app`, outermost first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from manifold.access.ledger import Ledger
from manifold.access.principal import CURRENT_PRINCIPAL
from manifold.config import Config, ServerSettings, secrets_of
from manifold.errors import ManifoldError
from manifold.observability import tracing as tracing_setup
from manifold.observability.metrics import flush_periodically, multiprocess_dir
from manifold.observability.observer import Observer
from manifold.observability.record import CURRENT
from manifold.observability.redaction import add_secrets
from manifold.responses.engine import ResponsesEngine
from manifold.routing.router import Router
from manifold.server.asgi import Message, Receive, Request, Scope, Send
from manifold.server.endpoints import (
    admin_usage,
    chat,
    completions,
    embeddings,
    health,
    images,
    kserve_urls,
    metrics,
    models,
    responses_api,
    stored_chat,
)
from manifold.server.middleware.observe import ObserveRequests
from manifold.server.routes import Handler, PathRouter, Route
from manifold.storage import Store

log = logging.getLogger("manifold.server")

ASGIApp = Callable[[Scope, Receive, Send], Any]
# A request layer: wraps the app inside it (issue 11's request id, auth and limits are layers too).
Layer = Callable[[ASGIApp], ASGIApp]

# The OpenAI API, mounted under every prefix. `cancellable`: the handler waits on an upstream.
API_ROUTES = (
    Route("POST", "/chat/completions", chat.create_chat_completion, cancellable=True),
    Route("GET", "/models", models.list_models),
    Route("GET", "/models/{model:path}", models.retrieve_model),
    Route("GET", "/chat/completions", stored_chat.list_chat_completions),
    Route("GET", "/chat/completions/{completion_id}", stored_chat.retrieve_chat_completion),
    Route("POST", "/chat/completions/{completion_id}", stored_chat.update_chat_completion),
    Route("DELETE", "/chat/completions/{completion_id}", stored_chat.delete_chat_completion),
    Route("GET", "/chat/completions/{completion_id}/messages", stored_chat.list_chat_completion_messages),
    Route("POST", "/completions", completions.create_completion, cancellable=True),
    Route("POST", "/embeddings", embeddings.create_embeddings, cancellable=True),
    Route("POST", "/images/generations", images.create_image, cancellable=True),
    # The Responses API (docs/responses.md). A background response runs in its own task: a client that leaves
    # cancels only its foreground work.
    Route("POST", "/responses", responses_api.create_response, cancellable=True),
    Route("POST", "/responses/input_tokens", responses_api.count_input_tokens, cancellable=True),
    Route("POST", "/responses/compact", responses_api.compact_response, cancellable=True),
    Route("GET", "/responses/{response_id}", responses_api.retrieve_response),
    Route("DELETE", "/responses/{response_id}", responses_api.delete_response),
    Route("POST", "/responses/{response_id}/cancel", responses_api.cancel_response),
    Route("GET", "/responses/{response_id}/input_items", responses_api.list_input_items),
)
# Outside the prefixes.
ROOT_ROUTES = (
    Route("GET", "/health", health.alive),
    Route("GET", "/health/ready", health.ready),
)
# KServe-style per-model URLs (Seldon Core 2's OpenAI scheme), outside the prefixes; `server.kserve_urls: false`
# leaves them out.
KSERVE_ROUTES = (
    Route("POST", "/v2/models/{model:path}/infer/chat/completions", kserve_urls.chat_completions, cancellable=True),
    Route(
        "POST",
        "/v2/models/{model:path}/infer_stream/chat/completions",
        kserve_urls.stream_chat_completions,
        cancellable=True,
    ),
    Route("POST", "/v2/models/{model:path}/infer/embeddings", kserve_urls.embeddings, cancellable=True),
    Route("POST", "/v2/models/{model:path}/infer_stream/embeddings", kserve_urls.embeddings, cancellable=True),
    Route("POST", "/v2/models/{model:path}/infer/images/generations", kserve_urls.images_generations, cancellable=True),
    Route(
        "POST",
        "/v2/models/{model:path}/infer_stream/images/generations",
        kserve_urls.images_generations,
        cancellable=True,
    ),
)


class ManifoldApp:
    """`layers`: a library user's own request layers, inside Manifold's observing layer (so that their
    refusals are counted and logged too)."""

    def __init__(self, config: Config, router: Router | None = None, layers: Sequence[Layer] = ()) -> None:
        self.config = config
        self.settings: ServerSettings = config.server
        self.router = router if router is not None else Router(config.model_list, settings=config.router)
        add_secrets(secrets_of(config))  # error messages and logs never show them (observability.redaction)
        self.tracing = tracing_setup.setup(config.tracing.enabled, config.tracing.capture_content, secrets_of(config))
        self.router.observe(config.metrics.enabled, self.tracing)
        self.store = Store(config.storage)
        # The usage ledger reads each request's record: with it on there is a record even with no other observer.
        ignored = [route.path for route in ROOT_ROUTES] + [config.metrics.path]
        self.ledger = Ledger(self.store, config.ledger, ignored) if config.ledger_on else None
        sinks = () if self.ledger is None else (self.ledger.record,)
        observing = config.metrics.enabled or self.settings.access_log or self.tracing is not None or bool(sinks)
        self.observer = (
            Observer(config.metrics.enabled, self.settings.access_log, self.tracing, sinks) if observing else None
        )
        self.responses = ResponsesEngine(self.router, self.store, config.responses)
        self.paths = PathRouter()
        for prefix in self.settings.prefixes:
            p = "" if prefix == "/" else prefix
            for route in API_ROUTES:
                self.paths.add(route._replace(path=p + route.path))
        for route in ROOT_ROUTES:
            self.paths.add(route)
        self.paths.add(Route("GET", "/admin/usage", admin_usage.usage))
        if config.metrics.enabled and config.metrics.port is None:
            self.paths.add(Route("GET", config.metrics.path, metrics.scrape))
        if self.settings.kserve_urls:
            for route in KSERVE_ROUTES:
                self.paths.add(route)
        self._started = False
        self._flusher: asyncio.Task[None] | None = None
        self.handle: ASGIApp = self.compose(layers)

    def compose(self, extra: Sequence[Layer]) -> ASGIApp:
        """The request layers around the dispatch, outermost first: observing (metrics, access log, server
        span), then `extra`."""
        layers: list[Layer] = []
        observer = self.observer
        if observer is not None:
            layers.append(lambda inner: ObserveRequests(inner, observer))
        layers.extend(extra)
        app: ASGIApp = self._http
        for layer in reversed(layers):
            app = layer(app)
        return app

    async def startup(self) -> None:
        if not self._started:
            self._started = True
            self.store.start()  # in the background: nothing waits for it but what stores
            if self.ledger is not None:
                self.ledger.start()
            await self.router.start()
            self.responses.start()
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
            await self.router.aclose()
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
            rec.request_id = request.request_id
            principal = CURRENT_PRINCIPAL.get()  # set by the authentication layer, inside the observing one
            if principal is not None:
                rec.key_id = principal.key_id
                rec.key_alias = principal.key_alias
                rec.team_id = principal.team_id
                rec.user = principal.user
        try:
            route, params = self.paths.match(request.method, request.path)
            if rec is not None:
                rec.route = route.path
            if route.cancellable:
                await self._cancel_on_disconnect(route.handler, request, params)
            else:
                await route.handler(self, request, **params)
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
            await handler(self, request, **params)
        except asyncio.CancelledError:
            if request.disconnected:
                task.uncancel()
                log.info("request %s: client disconnected; upstream request cancelled", request.request_id)
                return
            raise
        finally:
            watcher.cancel()


def build_app(config: Config, router: Router | None = None, layers: Sequence[Layer] = ()) -> ManifoldApp:
    return ManifoldApp(config, router, layers)
