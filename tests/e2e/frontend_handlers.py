"""Handlers the frontend tests name by reference (`provider: python`, `manifold serve --handler`)."""

from __future__ import annotations

from typing import Any

from manifold.frontend import HTTPError


def shout(messages: list[dict[str, Any]], model: str) -> str:
    """Beside a remote upstream in one config: answers in capitals, names the public model."""
    return f"{model}: {messages[-1]['content'].upper()}"


def dispatch(request_path: str, request_method: str, **kwargs: Any) -> Any:
    """One function for every route (`--include-url-info`): chat is answered, a completion id starting with
    `missing` is a 404, the rest is left to the gateway (the store)."""
    if request_method == "POST" and request_path.endswith("/chat/completions"):
        return f"{request_method} {request_path}"
    completion_id = kwargs.get("completion_id")
    if isinstance(completion_id, str) and completion_id.startswith("missing"):
        raise HTTPError(404, f"No chat completion {completion_id} here.", code="not_found")
    return NotImplemented


class NotAHandler:
    """Neither callable nor with operation methods."""


not_a_handler = NotAHandler()
