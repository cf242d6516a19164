"""The one place JSON is encoded and decoded.

msgspec's encoder and decoder are built once; building them per call costs more than the work itself.
"""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()
_any_decoder = msgspec.json.Decoder()

encode = _encoder.encode
DecodeError = msgspec.DecodeError


def decode(data: bytes | str) -> Any:
    """Decode JSON into plain Python objects (dict, list, str, int, float, bool, None)."""
    return _any_decoder.decode(data)


def dumps_text(obj: Any) -> str:
    return _encoder.encode(obj).decode()
