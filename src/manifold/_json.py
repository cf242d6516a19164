"""The one place JSON is encoded and decoded.

msgspec's encoder and decoder are built once; building them per call costs more than the work itself.

Nesting: msgspec recurses once per level and raises `RecursionError` (not `DecodeError`) near Python's recursion
limit, which depends on how deep the caller's own stack is. Every decode here turns that into `NestingError` (a
`DecodeError`), and a client's body is held to `MAX_REQUEST_DEPTH` levels, far below that limit, so that nothing
that later walks the body (encoding it for the upstream, storing it, a handler) can hit the limit either.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()

encode = _encoder.encode
DecodeError = msgspec.DecodeError

# OpenAI's strict schemas allow 10 levels of schema nesting, about 25 levels of JSON; 128 leaves room for anything
# real while keeping every recursive walk of a body far from Python's recursion limit (1000 frames).
MAX_REQUEST_DEPTH = 128


class NestingError(msgspec.DecodeError):
    """JSON nested deeper than the decoder (or the caller) allows."""


def decode(data: bytes | str) -> Any:
    """Decode JSON into plain Python objects (dict, list, str, int, float, bool, None)."""
    try:
        return _any_decoder.decode(data)
    except RecursionError:
        raise NestingError("JSON nested too deeply") from None


def decode_request(data: bytes) -> Any:
    """Decode a client's body, refusing more than `MAX_REQUEST_DEPTH` levels of nesting with `NestingError`."""
    value = decode(data)
    # A body cannot nest deeper than it has opening brackets: counting them (C speed) clears nearly every body.
    if data.count(b"[") + data.count(b"{") > MAX_REQUEST_DEPTH and nesting_exceeds(data, MAX_REQUEST_DEPTH):
        raise NestingError(f"JSON nested more than {MAX_REQUEST_DEPTH} levels deep")
    return value


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_EMPTY_PAIR = re.compile(rb"\[\]|\{\}")


def nesting_exceeds(data: bytes, limit: int) -> bool:
    """Whether valid JSON `data` nests more than `limit` levels: strings removed, only brackets kept, then one
    level of empty pairs peeled per pass (each pass at C speed: one substitution removes the pairs that are empty
    now, not those it empties)."""
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKET)
    for _ in range(limit):
        if not brackets:
            return False
        brackets = _EMPTY_PAIR.sub(b"", brackets)
    return bool(brackets)


def dumps_text(obj: Any) -> str:
    return _encoder.encode(obj).decode()
