"""Path dispatch: exact paths by dict lookup (the hot path), templates (`{id}`, `{model:path}`) by a short scan.

A template segment `{name}` matches one path segment; `{name:path}` matches the rest of the path, slashes
included (model names such as `org/model:v1`). ASGI paths arrive percent-decoded.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from manifold.errors import MethodNotAllowedError, NotFoundError

Handler = Callable[..., Awaitable[None]]  # (app, request, **path_params)
_PARAM = re.compile(r"\{(\w+)(:path)?\}")


class Route(NamedTuple):
    method: str
    path: str
    handler: Handler
    # Waits on an upstream: a client that disconnects cancels it (and so the upstream request).
    cancellable: bool = False


class PathRouter:
    def __init__(self) -> None:
        self._exact: dict[str, dict[str, Route]] = {}
        self._templates: list[tuple[re.Pattern[str], dict[str, Route]]] = []

    def add(self, route: Route) -> None:
        if "{" not in route.path:
            self._exact.setdefault(route.path, {})[route.method] = route
            return
        pattern = re.compile(
            "^"
            + _PARAM.sub(
                lambda m: f"(?P<{m.group(1)}>.+)" if m.group(2) else f"(?P<{m.group(1)}>[^/]+)",
                re.escape(route.path).replace(r"\{", "{").replace(r"\}", "}"),
            )
            + "$"
        )
        for existing, methods in self._templates:
            if existing.pattern == pattern.pattern:
                methods[route.method] = route
                return
        self._templates.append((pattern, {route.method: route}))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, Any]]:
        methods = self._exact.get(path)
        params: dict[str, Any] = {}
        if methods is None:
            for pattern, candidates in self._templates:
                m = pattern.match(path)
                if m is not None:
                    methods, params = candidates, m.groupdict()
                    break
            else:
                raise NotFoundError(f"Invalid URL ({method} {path})", code="unknown_url")
        route = methods.get(method)
        if route is None:
            raise MethodNotAllowedError(
                f"Method {method} is not allowed for {path}.", headers={"allow": ", ".join(sorted(methods))}
            )
        return route, params
