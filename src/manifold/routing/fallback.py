"""Fallback chains: the groups tried, in order, once a model group is exhausted.

Each group has two chains from the config: `fallbacks` (after any retryable failure) and
`context_window_fallbacks` (only when the prompt does not fit). A client may send its own `fallbacks` list in the
request body when the group's `allow_client_fallbacks` is on; it then replaces the configured chain and is
removed from the body before it goes upstream. When it is off, `fallbacks` is an ordinary extra field and is
forwarded like any other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from manifold.errors import InvalidRequestError
from manifold.providers.base import Call

__all__ = ["CLIENT_FALLBACKS_FIELD", "FallbackPlan", "client_fallbacks"]

G = TypeVar("G")
CLIENT_FALLBACKS_FIELD = "fallbacks"
_MAX_CLIENT_FALLBACKS = 10


def client_fallbacks(
    call: Call, resolve: Callable[[str], tuple[G, str | None] | None]
) -> tuple[tuple[tuple[G, str | None], ...], Call]:
    """The chain a client asked for, and the call without the `fallbacks` field (the client's dict untouched)."""
    raw = call.body[CLIENT_FALLBACKS_FIELD]
    if not isinstance(raw, list) or not all(isinstance(name, str) for name in raw):
        raise InvalidRequestError(
            "`fallbacks` must be a list of model names.", param=CLIENT_FALLBACKS_FIELD, code="invalid_type"
        )
    if len(raw) > _MAX_CLIENT_FALLBACKS:
        raise InvalidRequestError(
            f"`fallbacks` may name at most {_MAX_CLIENT_FALLBACKS} models.",
            param=CLIENT_FALLBACKS_FIELD,
            code="array_above_max_length",
        )
    chain = []
    for i, name in enumerate(raw):
        target = resolve(name)
        if target is None:
            raise InvalidRequestError(
                f"The fallback model `{name}` does not exist or you do not have access to it.",
                param=f"{CLIENT_FALLBACKS_FIELD}[{i}]",
                code="model_not_found",
            )
        chain.append(target)
    body = {k: v for k, v in call.body.items() if k != CLIENT_FALLBACKS_FIELD}
    stripped = Call(body, call.public_model, call.request_id, call.stream)
    return tuple(chain), stripped


class FallbackPlan(Generic[G]):
    """Which group a request tries next once one is exhausted. `chain` first; a context-window failure switches
    to the primary group's `context_window_chain` (once: without that chain, the failure is the answer). No
    group is tried twice."""

    __slots__ = ("_chain", "_context_chain", "_done", "_in_context_chain", "_index")

    def __init__(
        self,
        primary: tuple[G, str | None],
        chain: Sequence[tuple[G, str | None]],
        context_window_chain: Sequence[tuple[G, str | None]],
    ) -> None:
        self._chain = chain
        self._context_chain = context_window_chain
        self._done = {primary}
        self._index = 0
        self._in_context_chain = False

    def next(self, context_window: bool) -> tuple[G, str | None] | None:
        """The next target after a group was exhausted (`context_window`: it failed because the prompt does not
        fit); None when nothing is left."""
        if context_window:
            if self._in_context_chain or not self._context_chain:
                return None
            self._chain, self._index, self._in_context_chain = self._context_chain, 0, True
        chain = self._chain
        while self._index < len(chain):
            target = chain[self._index]
            self._index += 1
            if target not in self._done:
                self._done.add(target)
                return target
        return None
