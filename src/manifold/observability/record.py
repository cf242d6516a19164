"""One request's facts, gathered by the layers that know them and read once at its end (the access line, the
request metrics, the server span).

The record of the request being served is in a context variable: the router fills in the model group, the
deployment, the attempts and the tokens without any of it travelling through the endpoint code.
"""

from __future__ import annotations

import contextvars
import time
from typing import Final

import msgspec

__all__ = ["CURRENT", "RequestRecord", "usage_details"]


class RequestRecord(msgspec.Struct):
    """Made per request by the observing layer, then filled in by whoever knows each fact. A struct: its ~30
    defaults are filled in by msgspec's C constructor, where an `__init__` spent ~100 bytecodes a request
    setting them one by one."""

    method: str
    client: str | None
    start: float = msgspec.field(default_factory=time.monotonic)
    wall_start: float = msgspec.field(default_factory=time.time)  # unix seconds (the usage ledger's time)
    end: float = 0.0
    request_id: str | None = None
    route: str | None = None  # the route template, never the raw path
    status: int = 0
    model: str | None = None  # as the client named it (logs only)
    model_label: str = ""  # the group name, or `unknown` (metric labels)
    operation: str | None = None  # gen_ai.operation.name, set when the router ran
    deployment: str | None = None
    attempts: int = 0
    stream: bool = False
    input_tokens: int | None = None
    output_tokens: int | None = None
    usage: object = None  # the answer's `usage`, as the upstream sent it (`cached_tokens` reads it)
    details_: tuple[int | None, int | None] | None = None  # (cached, reasoning), once read or set
    ttft: float | None = None  # seconds from `start`
    upstream_seconds: float = 0.0  # time spent waiting on upstream attempts
    error_type: str | None = None
    cost: float | None = None
    cost_micros: int | None = None  # the same cost in integer micro-dollars (what the ledger stores)
    key_id: str | None = None  # the caller (access.principal), copied in at dispatch
    key_alias: str | None = None
    team_id: str | None = None
    user: str | None = None
    trace_id: str | None = None
    span: object | None = None  # the server span, when tracing
    span_token: object | None = None

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
