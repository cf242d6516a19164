"""Calling a user's handler: which operations it implements, its keyword arguments, sync/async/generators.

A handler is one of:

- an object (or a class, instantiated once with no arguments) with methods named after operations
  (`create_chat_completion`, `retrieve_chat_completion`, …, see `operations.py`): each method serves its
  operation, every other operation gets the gateway's default;
- a plain callable: it answers `create_chat_completion` (and through it legacy completions and the Responses
  API). With `include_url_info` it is a dispatcher instead: called for every route, with `request_path` and
  `request_method`.

Any method may return `NotImplemented` to leave the request to the default (the store for stored objects).
Sync callables run in the default thread pool, never on the event loop; a sync generator is advanced there too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from typing import Any, NamedTuple

from manifold.api.operations import BY_NAME, Operation
from manifold.errors import InvalidRequestError, ManifoldError
from manifold.providers.python_handler.context import RequestInfo
from manifold.providers.python_handler.errors import HandlerContractError, HandlerFailedError

log = logging.getLogger("manifold.handler")

CHAT = "create_chat_completion"
RESPONSE = "create_response"
_END = object()


class Signature(NamedTuple):
    takes_any: bool  # has **kwargs
    names: frozenset[str]  # parameters that can be passed by keyword
    required: frozenset[str]  # of those, the ones without a default
    positional_only: frozenset[str]  # required, and impossible to pass by keyword


_signatures: dict[Any, Signature | None] = {}


def signature_of(fn: Callable[..., Any]) -> Signature | None:
    """What `fn` accepts, computed once per callable (inspecting costs more than the rest of a call)."""
    try:
        return _signatures[fn]
    except KeyError:
        pass
    except TypeError:  # an unhashable callable object: inspected each time
        return _inspect(fn)
    sig = _signatures[fn] = _inspect(fn)
    if len(_signatures) > 1024:  # callables made per request (lambdas, partials) must not pile up
        _signatures.clear()
    return sig


def _inspect(fn: Callable[..., Any]) -> Signature | None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins and C callables have none: pass everything
        return None
    names, required, positional = set(), set(), set()
    takes_any = False
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            takes_any = True
        elif p.kind is p.VAR_POSITIONAL:
            continue
        elif p.kind is p.POSITIONAL_ONLY:
            if p.default is p.empty:
                positional.add(p.name)
        else:
            names.add(p.name)
            if p.default is p.empty:
                required.add(p.name)
    return Signature(takes_any, frozenset(names), frozenset(required), frozenset(positional))


def describe(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{name}"


def is_stream(value: Any) -> bool:
    """A generator, async generator or other iterator (a list, str or dict is a value, not a stream)."""
    if isinstance(value, str | bytes | bytearray | dict | list | tuple):
        return False
    return hasattr(value, "__anext__") or isinstance(value, Iterator)


def bind(fn: Callable[..., Any], kwargs: dict[str, Any], label: str, what: str) -> dict[str, Any]:
    """The keyword arguments `fn` accepts (all of them when it takes `**kwargs`). A required parameter the
    request does not provide is the handler's mistake: a 500 naming it, logged."""
    sig = signature_of(fn)
    if sig is None:
        return kwargs
    missing = sorted((sig.required - kwargs.keys()) | sig.positional_only)
    if missing:
        provided = ", ".join(sorted(kwargs)) or "nothing"
        message = (
            f"The handler {label} cannot serve {what}: it requires the argument '{missing[0]}', which this "
            f"request does not provide (it provides: {provided})."
        )
        log.error("%s", message)
        raise HandlerContractError(message)
    if sig.takes_any:
        return kwargs
    return {k: v for k, v in kwargs.items() if k in sig.names}


def failed(label: str, what: str, exc: Exception) -> HandlerFailedError:
    log.error("the handler %s failed serving %s", label, what, exc_info=exc)
    return HandlerFailedError(f"The handler failed serving {what} ({type(exc).__name__}); see the server log.")


async def invoke(fn: Callable[..., Any], kwargs: dict[str, Any], label: str, what: str) -> Any:
    """Call `fn`: a coroutine function is awaited, a generator function returns its (unstarted) generator,
    anything else runs in a worker thread. The result may be a stream (see `iterate`)."""
    call_kwargs = bind(fn, kwargs, label, what)
    try:
        if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            return fn(**call_kwargs)
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(getattr(fn, "__call__", None)):  # noqa: B004
            return await fn(**call_kwargs)
        result = await asyncio.to_thread(fn, **call_kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result
    except ManifoldError:
        raise  # HTTPError and the gateway's own errors carry their status
    except Exception as exc:  # user code: logged with its traceback, answered with a 500 envelope
        raise failed(label, what, exc) from exc


async def iterate(stream: Any, label: str, what: str) -> AsyncGenerator[Any, None]:
    """The items of a handler's stream, on the event loop; a sync iterator is advanced in a worker thread. The
    handler's generator is closed when the consumer stops early (a client that left)."""
    try:
        if hasattr(stream, "__anext__"):
            while True:
                try:
                    item = await anext(stream)
                except StopAsyncIteration:
                    return
                yield item
        else:
            while True:
                item = await asyncio.to_thread(next, stream, _END)
                if item is _END:
                    return
                yield item
    except ManifoldError:
        raise
    except Exception as exc:  # user code: logged with its traceback, answered as an error event
        raise failed(label, what, exc) from exc
    finally:
        if hasattr(stream, "aclose"):
            await stream.aclose()
        elif hasattr(stream, "close"):
            try:
                await asyncio.to_thread(stream.close)
            except ValueError:
                # Cancelled while a worker thread is inside `next()`: the generator cannot be closed from here;
                # it is finalized when that step returns and it is collected.
                log.debug("the handler's generator was still running when its consumer left")


class Handler:
    """A user's handler, resolved once: its operations, how it is called, what it is called with."""

    def __init__(self, obj: Any, *, include_url_info: bool = False, label: str | None = None) -> None:
        if isinstance(obj, type):
            obj = obj()
        self.obj = obj
        self.label = label or describe(obj)
        self.include_url_info = include_url_info
        self.methods: dict[str, Callable[..., Any]] = {}
        for name in BY_NAME:
            method = getattr(obj, name, None)
            if callable(method):
                self.methods[name] = method
        if not self.methods and not callable(obj):
            raise TypeError(
                f"handler {self.label} is neither callable nor an object with methods named after operations "
                "(create_chat_completion, retrieve_chat_completion, …)"
            )
        self.dispatcher = not self.methods and include_url_info

    def implements(self, operation: str) -> bool:
        if self.methods:
            return operation in self.methods
        return self.dispatcher or operation == CHAT

    def target(self, operation: str) -> Callable[..., Any]:
        if self.methods:
            return self.methods[operation]
        fn: Callable[..., Any] = self.obj
        return fn

    def arguments(
        self,
        op: Operation,
        body: Mapping[str, Any] | None,
        info: RequestInfo | None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The keyword arguments of one call: the route's documented body fields present in the body, the query
        and path parameters, `body` (the whole JSON body), `extra` (what Manifold adds, e.g. `messages` for
        `create_response`), and with `include_url_info` `request_path` and `request_method`. A name that
        arrives from two places is the client's 400."""
        kwargs: dict[str, Any] = {}
        origin: dict[str, str] = {}

        def put(name: str, value: Any, source: str) -> None:
            if name in kwargs:
                raise InvalidRequestError(
                    f"Parameter name conflict: '{name}' arrives both in the {origin[name]} and in the {source}.",
                    param=name,
                    code="parameter_conflict",
                )
            kwargs[name] = value
            origin[name] = source

        if body is not None:
            for name in op.fields:
                if name in body:
                    put(name, body[name], "request body")
        if info is not None:
            for name, segment in info.path_params.items():
                put(name, segment, "URL path")
            for name, value in info.query.items():
                put(name, value, "query string")
        if body is not None:
            put("body", body, "request body (the whole body)")
        for name, value in (extra or {}).items():
            put(name, value, "arguments Manifold adds")
        if self.include_url_info and info is not None:
            put("request_path", info.path, "URL info")
            put("request_method", info.method, "URL info")
        return kwargs

    async def call(self, operation: str, kwargs: dict[str, Any], what: str) -> Any:
        return await invoke(self.target(operation), kwargs, self.label, what)


def operation(name: str) -> Operation:
    return BY_NAME[name]
