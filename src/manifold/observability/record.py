"""One request's facts, gathered by the layers that know them and read once at its end (the access line, the
request metrics, the server span).

The record of the request being served is in a context variable: the router fills in the model group, the
deployment, the attempts and the tokens without any of it travelling through the endpoint code.
"""

from __future__ import annotations

import contextvars
import time
from typing import Final

__all__ = ["CURRENT", "RequestRecord"]


class RequestRecord:
    __slots__ = (
        "attempts",
        "client",
        "cost",
        "deployment",
        "end",
        "error_type",
        "input_tokens",
        "key_alias",
        "method",
        "model",
        "model_label",
        "operation",
        "output_tokens",
        "request_id",
        "route",
        "span",
        "span_token",
        "start",
        "status",
        "stream",
        "trace_id",
        "ttft",
        "upstream_seconds",
    )

    def __init__(self, method: str, client: str | None) -> None:
        self.start = time.monotonic()
        self.end = 0.0
        self.method = method
        self.client = client
        self.request_id: str | None = None
        self.route: str | None = None  # the route template, never the raw path
        self.status = 0
        self.model: str | None = None  # as the client named it (logs only)
        self.model_label = ""  # the group name, or `unknown` (metric labels)
        self.operation: str | None = None  # gen_ai.operation.name, set when the router ran
        self.deployment: str | None = None
        self.attempts = 0
        self.stream = False
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.ttft: float | None = None  # seconds from `start`
        self.upstream_seconds = 0.0  # time spent waiting on upstream attempts
        self.error_type: str | None = None
        self.cost: float | None = None
        self.key_alias: str | None = None
        self.trace_id: str | None = None
        self.span: object | None = None  # the server span, when tracing
        self.span_token: object | None = None


CURRENT: Final[contextvars.ContextVar[RequestRecord | None]] = contextvars.ContextVar(
    "manifold_request_record", default=None
)
