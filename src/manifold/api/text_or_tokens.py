"""The one field shape that legacy completions' `prompt` and embeddings' `input` share: a string, an array of
strings, an array of token ids, or an array of token arrays. msgspec cannot tell the four apart, so the request
types take a loose list and these check it, naming the item at fault (`prompt[2][0]`)."""

from __future__ import annotations

from typing import Any


def is_token(value: Any) -> bool:
    return type(value) is int  # JSON true/false decode to bool, a subclass of int: not a token


def array_problems(name: str, value: list[Any], *, non_empty_strings: bool) -> tuple[str, str] | None:
    """(param, message) when the non-empty array `value` (the field `name`) is not all strings (non-empty ones
    with `non_empty_strings`), all token ids, or all non-empty token arrays, as its first item says."""
    first = value[0]
    if isinstance(first, str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return f"{name}[{i}]", f"Invalid type for '{name}[{i}]': expected a string (as '{name}[0]' is)."
            if non_empty_strings and not item:
                return f"{name}[{i}]", f"Invalid '{name}[{i}]': string too short. Expected a non-empty string."
        return None
    if is_token(first):
        for i, item in enumerate(value):
            if not is_token(item):
                return f"{name}[{i}]", f"Invalid type for '{name}[{i}]': expected a token id (an integer)."
        return None
    if isinstance(first, list):
        for i, item in enumerate(value):
            if not isinstance(item, list):
                return f"{name}[{i}]", f"Invalid type for '{name}[{i}]': expected an array of token ids."
            if not item:
                return f"{name}[{i}]", f"Invalid '{name}[{i}]': empty array. Expected at least one token id."
            for j, token in enumerate(item):
                if not is_token(token):
                    return f"{name}[{i}][{j}]", f"Invalid type for '{name}[{i}][{j}]': expected a token id."
        return None
    return f"{name}[0]", f"Invalid type for '{name}[0]': expected a string, a token id or an array of token ids."


def split(value: str | list[Any]) -> list[str | list[int]]:
    """The items of a (valid) value, each a string or a token array."""
    if isinstance(value, str):
        return [value]
    if is_token(value[0]):
        return [list(value)]
    return list(value)
