"""`OpenAIFrontend`: the OpenAI API in front of a user's Python handler, as an ASGI app.

The handler is a backend: the frontend builds a `ManifoldApp` whose router sends every model name to one
`python` provider wrapping the handler, so chat (streamed or not), stored completions, legacy completions,
embeddings, images, models and the Responses API are the gateway's own routes, with its validation, ids, SSE
and storage. On top of them the frontend mounts only the chosen endpoint groups (under `prefix`), checks the
fields the spec makes mandatory (422), builds the handler's keyword arguments (body fields, path and query
parameters, URL info), and lets a handler that implements a stored-object operation answer it itself (else the
store does). Custom routes sit beside them.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from http import HTTPMethod
from typing import Any
from urllib.parse import parse_qs

import msgspec

from manifold import _json
from manifold.api.operations import API_OPERATIONS, GROUPS, ROOT_OPERATIONS, Operation
from manifold.api.validation import BAD_JSON_MESSAGE, decode_json_object, nesting_error
from manifold.config import (
    Config,
    MetricsSettings,
    PythonDeployment,
    ResponsesSettings,
    RouterSettings,
    ServerSettings,
    StorageSettings,
    TracingSettings,
)
from manifold.errors import InvalidRequestError, NotFoundError
from manifold.providers.python_handler import contracts
from manifold.providers.python_handler.calling import describe, invoke, is_stream
from manifold.providers.python_handler.context import CURRENT_REQUEST, RequestInfo
from manifold.providers.python_handler.errors import MissingFieldError, reply_parts
from manifold.providers.python_handler.loading import HandlerNotFound
from manifold.providers.python_handler.loading import resolve as load_handler
from manifold.providers.python_handler.provider import PythonHandlerProvider
from manifold.routing.router import Router
from manifold.server.app import Layer, ManifoldApp
from manifold.server.asgi import Message, Receive, Request, Scope, Send
from manifold.server.endpoints import metrics as metrics_endpoint
from manifold.server.handlers import HANDLERS, route
from manifold.server.routes import Handler, Route
from manifold.server.services import Services

log = logging.getLogger("manifold.frontend")

__all__ = ["Endpoint", "HandlerNotFound", "OpenAIFrontend", "check_prefix", "load_handler"]


class Endpoint(enum.StrEnum):
    """The endpoint groups an `OpenAIFrontend` can mount."""

    CHAT_COMPLETIONS = "chat_completions"  # POST create, GET list, GET/POST/DELETE by id, GET messages
    RESPONSES = "responses"  # POST create, GET/DELETE by id, input_items, input_tokens, cancel, compact
    COMPLETIONS = "completions"  # POST /completions (legacy)
    EMBEDDINGS = "embeddings"  # POST /embeddings
    IMAGES = "images"  # POST /images/generations
    MODELS = "models"  # GET /models, GET /models/{model}


if tuple(e.value for e in Endpoint) != GROUPS:  # the route table's groups (manifold.api.operations)
    raise RuntimeError(f"Endpoint {[e.value for e in Endpoint]} differs from the route table's groups {GROUPS}")

_METHODS = frozenset(m.value for m in HTTPMethod)
_CUSTOM = Operation("custom", "", "", "")


def check_prefix(prefix: str | None) -> str:
    """The prefix as routes are joined to it ("" for none); a malformed one is a ValueError now."""
    if prefix is None or prefix == "/":
        return ""
    if not isinstance(prefix, str) or not prefix.startswith("/"):
        raise ValueError(f"OpenAI API prefix must start with '/' (e.g. '/v1'): {prefix!r}")
    if prefix.endswith("/"):
        raise ValueError(f"OpenAI API prefix must not end with '/': {prefix!r}")
    return prefix


def _groups(endpoints: Iterable[Endpoint | str] | None) -> list[Endpoint]:
    if endpoints is None:
        return list(Endpoint)
    if isinstance(endpoints, str):
        endpoints = [endpoints]
    out = []
    for e in endpoints:
        try:
            out.append(Endpoint(e))
        except ValueError:
            allowed = ", ".join(m.value for m in Endpoint)
            raise ValueError(f"unknown endpoint group {e!r} (expected one of: {allowed})") from None
    return out


class _HandlerRouter(Router):
    """Every model name reaches the handler, unless `models` names the ones it serves.

    The names are groups of the one handler deployment; "any name" is a wildcard group `*` (unlisted, as
    wildcard groups are). A handler is called once per request: no retries, no cooldown (its failures are the
    handler author's to see, not an upstream's to route around)."""

    def __init__(self, provider: PythonHandlerProvider, names: Sequence[str], accept_any: bool) -> None:
        deployments = [msgspec.structs.replace(provider.deployment, model_name=name) for name in names]
        if accept_any:
            deployments.append(msgspec.structs.replace(provider.deployment, model_name="*"))
        settings = RouterSettings(num_retries=0, cooldown_time=0)
        super().__init__(deployments, settings=settings, providers=[provider] * len(deployments))
        self.created = int(time.time())


def _query(query_string: bytes) -> dict[str, str | list[str]]:
    parsed = parse_qs(query_string.decode("latin-1"), keep_blank_values=True)
    return {k: v[0] if len(v) == 1 else v for k, v in parsed.items()}


def _replay(body: bytes, receive: Receive) -> Receive:
    """`receive` that hands the body already read to the gateway's route once, then goes on as before."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class OpenAIFrontend:
    """An ASGI app serving the OpenAI API from `handler` (see docs/frontend.md).

    `handler`: a function answering chat completions (sync or async, returning a string, a dict, a Struct or
    pydantic object, or yielding deltas to stream), or an object (or class) with methods named after the
    operations it serves (`create_chat_completion`, `retrieve_chat_completion`, `create_embedding`, …).
    `endpoints`: the groups to mount (default: all). `prefix`: e.g. "/v1"; None mounts them at the root.
    `include_url_info`: the handler also gets `request_path` and `request_method`; a plain function is then
    called for every route (a dispatcher; `NotImplemented` leaves a route to the default).
    `models`: the model names served and listed (default: any name is served; the handler's name is listed).
    `mandatory_status`: the status of a request missing a field the spec requires (422, or 400 as OpenAI).
    `storage`: where stored completions and responses live (a `StorageSettings` or a database URL; default
    SQLite in ./data). `settings`: body limit, keep-alive interval (its `prefixes` are not used).
    `responses`: the Responses engine's settings (compaction key, background leases; docs/responses.md).
    `layers`: your own request layers, as `ManifoldApp` takes them (docs/library.md).
    `metrics`, `tracing`: Prometheus metrics (`/metrics`, on by default) and OpenTelemetry traces, as the
    gateway's (docs/observability.md).
    """

    def __init__(
        self,
        handler: Any,
        endpoints: Iterable[Endpoint | str] | None = None,
        prefix: str | None = None,
        *,
        include_url_info: bool = False,
        models: Sequence[str] | None = None,
        mandatory_status: int = 422,
        storage: StorageSettings | str | None = None,
        settings: ServerSettings | None = None,
        responses: ResponsesSettings | None = None,
        layers: Sequence[Layer] = (),
        metrics: MetricsSettings | None = None,
        tracing: TracingSettings | None = None,
    ) -> None:
        first_prefix = check_prefix(prefix)
        if mandatory_status not in (400, 422):
            raise ValueError(f"mandatory_status must be 422 or 400, got {mandatory_status!r}")
        if models is not None and (isinstance(models, str) or not models):
            raise ValueError("models must be a non-empty list of model names (or None to serve any name)")
        self.mandatory_status = mandatory_status
        names = list(models) if models is not None else [_short_name(handler)]
        deployment = PythonDeployment(model_name=names[0], owned_by="manifold")
        self.provider = PythonHandlerProvider(deployment, handler, include_url_info=include_url_info)
        self.handler = self.provider.handler
        if isinstance(storage, str):
            storage = StorageSettings(url=storage)
        config = Config(
            server=settings or ServerSettings(),
            storage=storage or StorageSettings(),
            responses=responses or ResponsesSettings(),
            metrics=metrics or MetricsSettings(),
            tracing=tracing or TracingSettings(),
        )
        self.router = _HandlerRouter(self.provider, names, accept_any=models is None)
        routes = [route(op) for op in ROOT_OPERATIONS]
        if config.metrics.enabled and config.metrics.port is None:
            routes.append(Route("GET", config.metrics.path, metrics_endpoint.scrape))
        self.app = ManifoldApp(config, self.router, layers, routes=routes)
        self.settings = self.app.settings
        self._operations: dict[tuple[str, str], str] = {}
        self.prefix = first_prefix
        self.add_endpoints(endpoints)

    # -- configuration (additive: each call merges into what is there) ---------------------------------------------

    def add_endpoints(self, endpoints: Iterable[Endpoint | str] | None = None, prefix: str | None = None) -> None:
        """Mount more endpoint groups (default: all) beside those already mounted, under `prefix` (default: the
        frontend's own prefix; "/" for the root)."""
        p = self.prefix if prefix is None else check_prefix(prefix)
        groups = set(_groups(endpoints))
        for op in API_OPERATIONS:
            if op.group in groups:
                self._put(self._operation_route(op, p + op.path), op.name)

    def add_route(self, path: str, method: str | HTTPMethod, fn: Callable[..., Any]) -> None:
        """Serve `fn` at `path` (taken as it is: no prefix; `{name}` segments arrive as keyword arguments, as
        do the query parameters and `body`, the decoded JSON body when there is one). `fn` returns what is
        sent as JSON, or a `Response` (sent as it is, whatever its status)."""
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValueError(f"route path must start with '/': {path!r}")
        verb = str(method).upper()
        if verb not in _METHODS:
            raise ValueError(f"unknown HTTP method {method!r}")
        if not callable(fn):
            raise TypeError(f"route handler for {verb} {path} is not callable")
        self._put(Route(verb, path, self._custom_route(fn, describe(fn))), "custom")

    def _put(self, route: Route, operation: str) -> None:
        key = (route.method, route.path)
        held = self._operations.get(key)
        if held is not None and (held != operation or operation == "custom"):
            log.warning("%s %s was served by %s; now by %s", route.method, route.path, held, operation)
        self.app.add_route(route)
        self._operations[key] = operation

    @property
    def routes(self) -> list[tuple[str, str]]:
        """(method, path) of every mounted route."""
        return [(r.method, r.path) for r in self.app.routes]

    # -- ASGI ---------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # Mounted inside Starlette/FastAPI: `path` still holds the mount point, `root_path` names it.
            root = scope.get("root_path") or ""
            path: str = scope["path"]
            if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
                scope = {**scope, "path": path[len(root) :] or "/"}
        await self.app(scope, receive, send)

    async def startup(self) -> None:
        """Start now (a host that does not forward ASGI lifespan events starts it on the first request)."""
        await self.app.startup()

    async def shutdown(self) -> None:
        await self.app.shutdown()

    # -- the routes ---------------------------------------------------------------------------------------------

    def _operation_route(self, op: Operation, path: str) -> Route:
        default = HANDLERS.get(op.name)

        async def serve(services: Services, request: Request, **path_params: str) -> None:
            await self._serve(op, default, services, request, path_params)

        return Route(op.method, path, serve, cancellable=op.cancellable)

    async def _serve(
        self,
        op: Operation,
        default: Handler | None,
        services: Services,
        request: Request,
        path_params: dict[str, str],
    ) -> None:
        raw = b""
        body: dict[str, Any] | None = None
        if op.has_body:
            raw = await request.body(self.settings.max_body_size)
            # An update without a body is a missing `metadata`, as the gateway's own route sees it.
            body = decode_json_object(raw) if raw.strip() or op.through_backend else {}
            for field in op.mandatory:
                if field not in body:
                    raise MissingFieldError(field, self.mandatory_status)
        info = RequestInfo(op.name, request.method, request.path, path_params, _query(request.query_string), body)
        kwargs = self.handler.arguments(op, body, info)
        what = f"{request.method} {request.path}"
        token = CURRENT_REQUEST.set(info)
        try:
            if not op.through_backend and self.handler.implements(op.name):
                result = await self.handler.call(op.name, kwargs, what)
                if result is not NotImplemented:
                    await self._send_direct(request, op, result, path_params, what)
                    return
            if default is None:
                raise NotFoundError(
                    f"{what} is not served here: the handler does not implement {op.name} and this version of "
                    "Manifold has no default for it.",
                    code="unknown_url",
                )
            if op.has_body:
                request.receive = _replay(raw, request.receive)
            await default(services, request, **path_params)
        finally:
            CURRENT_REQUEST.reset(token)

    async def _send_direct(
        self, request: Request, op: Operation, result: Any, path_params: dict[str, str], what: str
    ) -> None:
        result = contracts.unwrapped(result)
        if is_stream(result):
            raise contracts.contract_error(what, "is a stream; this route answers at once")
        body = contracts.direct(op.name, result, what, path_params, self.router.created)
        await request.send_json(200, _json.encode(body))

    def _custom_route(self, fn: Callable[..., Any], label: str) -> Callable[..., Any]:
        async def serve(services: Services, request: Request, **path_params: str) -> None:
            raw = await request.body(self.settings.max_body_size)
            try:
                body = _json.decode_request(raw) if raw.strip() else None
            except _json.NestingError:
                raise nesting_error() from None
            except msgspec.DecodeError:
                raise InvalidRequestError(BAD_JSON_MESSAGE, code="invalid_json") from None
            info = RequestInfo("custom", request.method, request.path, path_params, _query(request.query_string))
            kwargs = self.handler.arguments(_CUSTOM, body, info)
            what = f"{request.method} {request.path}"
            result = await invoke(fn, kwargs, label, what)
            parts = reply_parts(result)
            if parts is None:
                await request.send_json(200, _json.encode(contracts.to_plain(result, what)))
                return
            status, reply_body, headers = parts
            content_type = headers.pop("content-type", None)
            data = contracts.encoded_body(reply_body)
            if content_type is None:
                content_type = "application/json"
            extra = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers.items()]
            h = request.base_headers(content_type.encode("latin-1"))
            h.extend(extra)
            h.append((b"content-length", str(len(data)).encode()))
            await request.send({"type": "http.response.start", "status": status, "headers": h})
            await request.send({"type": "http.response.body", "body": data})

        return serve


def _short_name(handler: Any) -> str:
    name = getattr(handler, "__name__", None) or type(handler).__name__
    return str(name)
