"""One request's facts, gathered by the layers that know them and read once at its end (the access line, the
request metrics, the server span).

The record of the request being served is in a context variable: the router fills in the model group, the
deployment, the attempts and the tokens without any of it travelling through the endpoint code.
"""

from __future__ import annotations

import contextvars
import time
from typing import Final

__all__ = ["CURRENT", "RequestRecord", "usage_details"]

_monotonic = time.monotonic
_time = time.time


class RequestRecord:
    """Made per request by the observing layer, then filled in by whoever knows each fact. A plain class with
    slots: its attributes are read and written by the interpreter's specialised slot instructions, where a
    msgspec struct's (its own `__setattr__`) took ~120 machine instructions a write, a dozen writes a request;
    `__init__` sets every field, so a read never misses."""

    __slots__ = (
        "attempts",
        "client",
        "cost",
        "cost_micros",
        "deployment",
        "details_",
        "end",
        "error_type",
        "input_tokens",
        "key_alias",
        "key_id",
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
        "team_id",
        "trace_id",
        "ttft",
        "upstream_seconds",
        "usage",
        "user",
        "wall_start",
    )

    def __init__(self, method: str, client: str | None) -> None:
        self.method = method
        self.client = client
        self.start: float = _monotonic()
        self.wall_start: float = _time()  # unix seconds (the usage ledger's time)
        self.end = 0.0
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
        self.usage: object = None  # the answer's `usage`, as the upstream sent it (`cached_tokens` reads it)
        self.details_: tuple[int | None, int | None] | None = None  # (cached, reasoning), once read or set
        self.ttft: float | None = None  # seconds from `start`
        self.upstream_seconds = 0.0  # time spent waiting on upstream attempts
        self.error_type: str | None = None
        self.cost: float | None = None
        self.cost_micros: int | None = None  # the same cost in integer micro-dollars (what the ledger stores)
        self.key_id: str | None = None  # the caller (access.principal), copied in at dispatch
        self.key_alias: str | None = None
        self.team_id: str | None = None
        self.user: str | None = None
        self.trace_id: str | None = None
        self.span: object | None = None  # the server span, when tracing
        self.span_token: object | None = None

    # Read by the usage ledger only, once the request is done: worked out from `usage` when first read, not on
    # every request.

    def _usage_details(self) -> tuple[int | None, int | None]:
        details = self.details_
        if details is None:
            details = self.details_ = usage_details(self.usage)
        return details

    @property
    def cached_tokens(self) -> int | None:
        """Of the input: `prompt_tokens_details.cached_tokens` (or the Responses spelling)."""
        return self._usage_details()[0]

    @cached_tokens.setter
    def cached_tokens(self, value: int | None) -> None:
        self.details_ = (value, self.reasoning_tokens)

    @property
    def reasoning_tokens(self) -> int | None:
        """Of the output: `completion_tokens_details.reasoning_tokens` (or the Responses spelling)."""
        return self._usage_details()[1]

    @reasoning_tokens.setter
    def reasoning_tokens(self, value: int | None) -> None:
        self.details_ = (self.cached_tokens, value)


CURRENT: Final[contextvars.ContextVar[RequestRecord | None]] = contextvars.ContextVar(
    "manifold_request_record", default=None
)


_NO_DETAILS: Final = (None, None)


def usage_details(usage: object) -> tuple[int | None, int | None]:
    """(cached input, reasoning output) tokens of an OpenAI `usage` object: `prompt_tokens_details.cached_tokens`
    and `completion_tokens_details.reasoning_tokens`, or the Responses spelling (`input_tokens_details`,
    `output_tokens_details`). None where the upstream did not say (or sent something else than an integer)."""
    if type(usage) is not dict:
        return _NO_DETAILS
    given = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    made = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    cached = given.get("cached_tokens") if type(given) is dict else None
    reasoning = made.get("reasoning_tokens") if type(made) is dict else None
    # `type(...) is int`: an integer, not a bool (a subclass of int).
    return (cached if type(cached) is int else None), (reasoning if type(reasoning) is int else None)
