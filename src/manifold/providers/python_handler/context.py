"""What the HTTP side knows about the request being served, for the handler's keyword arguments.

`manifold.frontend` sets it for each request before the gateway's route runs, so that a handler reached through
the router (chat, completions, embeddings, images, Responses through chat) still gets the request's query and
path parameters and, with `include_url_info`, its path and method. Behind a plain gateway (`provider: python` in
a config) nothing sets it and the handler gets the body's fields only.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, NamedTuple


class RequestInfo(NamedTuple):
    operation: str  # the client's operation (`create_response` also when the handler then answers a chat)
    method: str
    path: str  # percent-decoded, without the query string
    path_params: dict[str, str]
    query: dict[str, str | list[str]]  # a repeated parameter arrives as a list
    body: dict[str, Any] | None = None  # the client's JSON body (POST /responses: its Responses fields)


CURRENT_REQUEST: ContextVar[RequestInfo | None] = ContextVar("manifold_handler_request", default=None)
