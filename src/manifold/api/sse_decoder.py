"""An incremental Server-Sent Events decoder (WHATWG rules) for upstream streams.

Bytes arrive split anywhere: inside a field name, between `\\r` and `\\n`, inside a multi-byte UTF-8 character.
The decoder keeps what is incomplete and only returns whole events. Data stays bytes, so JSON payloads go
straight to the JSON decoder.

Buffering is linear: an incomplete line is kept as a list of pieces and joined once, when its end arrives (a
10 MB line sent in small pieces used to cost quadratic time). A line, or an event's data, longer than
`max_line_bytes` raises `SSELineTooLong`: an upstream that never ends a line must not fill the memory.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_LINE_END = re.compile(rb"\r\n|\r|\n")
DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024


class SSELineTooLong(ValueError):
    """A line (or an event's data) of the stream exceeds the decoder's `max_line_bytes`. `events` holds the whole
    events decoded from the same chunk before it: they were valid and belong to the stream before its error."""

    def __init__(self, message: str, events: list[SSEEvent] | None = None) -> None:
        super().__init__(message)
        self.events: list[SSEEvent] = events or []


class SSEEvent(NamedTuple):
    event: str | None
    data: bytes
    id: str | None = None


def _whole_data_events(chunk: bytes, last_id: str | None) -> list[SSEEvent] | None:
    """The common case, decoded without a line scan: whole `data: <one line>` events ending in a blank line, LF
    only. None when the chunk is anything else (the general path then handles it)."""
    if chunk[-2:] != b"\n\n" or b"\r" in chunk:
        return None
    blocks = chunk[:-2].split(b"\n\n")
    events = []
    for block in blocks:
        if block[:6] != b"data: " or b"\n" in block:
            return None
        events.append(SSEEvent(None, block[6:], last_id))
    return events


class SSEDecoder:
    __slots__ = ("_data", "_data_size", "_event", "_id", "_max", "_pending", "_pending_size", "_skip_lf")

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._pending: list[bytes] = []  # the pieces of an incomplete line
        self._pending_size = 0
        self._data: list[bytes] = []
        self._data_size = 0
        self._event: str | None = None
        self._id: str | None = None
        self._skip_lf = False
        self._max = max_line_bytes

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if (
            not self._pending
            and not self._data
            and not self._skip_lf
            and self._event is None
            and len(chunk) <= self._max
        ):
            fast = _whole_data_events(chunk, self._id)
            if fast is not None:
                return fast
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if self._pending:
            if b"\n" not in chunk and b"\r" not in chunk:
                self._keep(chunk)  # still inside the same line: no join, no rescan
                return []
            self._pending.append(chunk)
            buffer = b"".join(self._pending)
            self._pending = []
            self._pending_size = 0
        else:
            buffer = chunk
        events: list[SSEEvent] = []
        try:
            self._scan(buffer, events)
        except SSELineTooLong as exc:
            exc.events = events
            raise
        return events

    def _scan(self, buffer: bytes, events: list[SSEEvent]) -> None:
        start = 0
        for m in _LINE_END.finditer(buffer):
            line = buffer[start : m.start()]
            start = m.end()
            if m.group() == b"\r" and start == len(buffer):
                # A CR at the end of what we have: a LF may follow in the next chunk; it belongs to this line.
                self._skip_lf = True
            if len(line) > self._max:
                raise SSELineTooLong(f"an SSE line of {len(line)} bytes (the limit is {self._max})")
            event = self._line(line)
            if event is not None:
                events.append(event)
        if start < len(buffer):
            self._keep(buffer[start:])

    def _keep(self, piece: bytes) -> None:
        self._pending_size += len(piece)
        if self._pending_size > self._max:
            raise SSELineTooLong(f"an SSE line longer than {self._max} bytes")
        self._pending.append(piece)

    def flush(self) -> list[SSEEvent]:
        """At end of input: an unterminated last line counts, an undispatched event does not (WHATWG)."""
        if self._pending:
            self._line(b"".join(self._pending))
            self._pending = []
            self._pending_size = 0
        return []

    def _line(self, line: bytes) -> SSEEvent | None:
        if not line:
            if not self._data:
                self._event = None
                return None
            event = SSEEvent(self._event, b"\n".join(self._data), self._id)
            self._data = []
            self._data_size = 0
            self._event = None
            return event
        if line[0] == 0x3A:  # ":" comment, e.g. keep-alive
            return None
        name, sep, value = line.partition(b":")
        if sep and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data_size += len(value) + 1
            if self._data_size > self._max:
                raise SSELineTooLong(f"an SSE event whose data exceeds {self._max} bytes")
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8", "replace")
        elif name == b"id" and b"\0" not in value:
            self._id = value.decode("utf-8", "replace")
        return None
