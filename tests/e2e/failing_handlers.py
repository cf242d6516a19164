"""Handlers that fail, named by reference in `provider: python` deployments of the tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def fails_mid_stream(messages: list[dict[str, Any]]) -> Iterator[str]:
    """Streams one piece of text, then raises: the error reaches the client after the 200."""
    yield "first words"
    raise RuntimeError("the handler broke")
