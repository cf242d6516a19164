"""A deployment's own quota (`rpm`, `tpm` on a `model_list` entry: the upstream's limits), so that the router
sends each deployment no more than it accepts: deployments with room are preferred, and only when every one of
a group is at its quota does the request get a 429 (docs/access.md "rate limits").

Sliding windows of 60 s in this process's memory: requests count when an attempt starts, tokens when its answer
(or its stream's end) reports usage. With several workers or replicas each counts its own share: divide the
upstream's quota among them.
"""

from __future__ import annotations

from collections import deque
from typing import Final

__all__ = ["Quota"]

WINDOW_S: Final = 60.0


class Quota:
    __slots__ = ("_requests", "_tokens", "rpm", "tokens_used", "tpm")

    def __init__(self, rpm: int | None, tpm: int | None) -> None:
        self.rpm = rpm
        self.tpm = tpm
        self._requests: deque[float] = deque()
        self._tokens: deque[tuple[float, int]] = deque()
        self.tokens_used = 0

    def _expire(self, now: float) -> None:
        floor = now - WINDOW_S
        requests = self._requests
        while requests and requests[0] <= floor:
            requests.popleft()
        tokens = self._tokens
        while tokens and tokens[0][0] <= floor:
            self.tokens_used -= tokens.popleft()[1]

    def has_room(self, now: float) -> bool:
        self._expire(now)
        if self.rpm is not None and len(self._requests) >= self.rpm:
            return False
        return self.tpm is None or self.tokens_used < self.tpm

    def take(self, now: float) -> None:
        self._requests.append(now)

    def add_tokens(self, now: float, tokens: int) -> None:
        if self.tpm is not None and tokens > 0:
            self._tokens.append((now, tokens))
            self.tokens_used += tokens

    def room_in(self, now: float) -> float:
        """Seconds until this deployment has room again."""
        self._expire(now)
        wait = 0.0
        if self.rpm is not None and len(self._requests) >= self.rpm:
            wait = self._requests[len(self._requests) - self.rpm] + WINDOW_S - now
        if self.tpm is not None and self.tokens_used >= self.tpm:
            freed = 0
            for at, n in self._tokens:
                freed += n
                if self.tokens_used - freed < self.tpm:
                    wait = max(wait, at + WINDOW_S - now)
                    break
        return max(0.0, wait)
