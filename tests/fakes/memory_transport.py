"""An in-memory `Transport` for tests that need an upstream's answers but no sockets: each request gets the next
scripted answer (status, headers, body pieces), and every request is recorded.

    transport = MemoryTransport([Scripted(200, {"content-type": "application/json"}, [b'{"id": "x"}'])])
    session = UpstreamSession(deployment, transport=transport)
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class Scripted:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)


@dataclass
class Sent:
    method: str
    target: str
    headers: dict[str, str]
    body: bytes | None


class MemoryResponse:
    def __init__(self, answer: Scripted) -> None:
        self.status = answer.status
        self.headers = {k.lower(): v for k, v in answer.headers.items()}
        self.read_timeout: float | None = None
        self.resends = 0
        self._pieces = collections.deque(answer.body)
        self.closed = False
        self.released = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";", 1)[0].strip().lower()

    @property
    def has_buffered(self) -> bool:
        return bool(self._pieces)

    @property
    def complete(self) -> bool:
        return not self._pieces and not self.closed

    async def read(self) -> bytes:
        body = b"".join(self._pieces)
        self._pieces.clear()
        self.released = True
        return body

    async def next_chunk(self) -> bytes | None:
        if self.closed:
            raise RuntimeError("read after close")
        return self._pieces.popleft() if self._pieces else None

    def release(self) -> None:
        self.released = True

    def close(self) -> None:
        self.closed = True


class MemoryTransport:
    def __init__(self, answers: list[Scripted]) -> None:
        self.answers = collections.deque(answers)
        self.sent: list[Sent] = []
        self.responses: list[MemoryResponse] = []
        self.closed = False

    async def request(
        self, method: str, target: str, headers: Mapping[str, str], body: bytes | None = None
    ) -> MemoryResponse:
        self.sent.append(Sent(method, target, dict(headers), body))
        response = MemoryResponse(self.answers.popleft())
        self.responses.append(response)
        return response

    async def aclose(self) -> None:
        self.closed = True
