"""Which of a group's available deployments takes the next attempt.

Each strategy gets the candidates (never empty; deployments that are cooling down, busy or already tried have
been filtered out) and returns one. `weighted` is the default: a random draw in proportion to `weight`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from manifold.routing.group import Member

__all__ = ["STRATEGIES", "LeastBusy", "LowestLatency", "RoundRobin", "Strategy", "Weighted"]


class Strategy(Protocol):
    def pick(self, candidates: Sequence[Member], stream: bool) -> Member: ...


class Weighted:
    """Random in proportion to each deployment's `weight` (uniform when the weights are equal)."""

    __slots__ = ("_all", "_cumulative", "_rng", "_total", "_uniform")

    def __init__(self, members: Sequence[Member], rng: random.Random | None = None) -> None:
        self._all = members
        self._rng = rng or random.Random()
        self._uniform = len({m.weight for m in members}) <= 1
        self._cumulative = list(itertools.accumulate(m.weight for m in members))
        self._total = self._cumulative[-1] if members else 0.0

    def pick(self, candidates: Sequence[Member], stream: bool) -> Member:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        if self._uniform:
            return candidates[int(self._rng.random() * n)]
        if candidates is self._all:
            return candidates[_bisect(self._cumulative, self._rng.random() * self._total)]
        return self._rng.choices(candidates, [m.weight for m in candidates])[0]


def _bisect(cumulative: list[float], x: float) -> int:
    lo, hi = 0, len(cumulative) - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cumulative[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


class RoundRobin:
    """Each deployment in turn, in `model_list` order (deployments that cannot take the attempt are passed)."""

    __slots__ = ("_all", "_next")

    def __init__(self, members: Sequence[Member], rng: random.Random | None = None) -> None:
        self._all = members
        self._next = 0

    def pick(self, candidates: Sequence[Member], stream: bool) -> Member:
        members = self._all
        n = len(members)
        start = self._next
        if candidates is not members:
            for step in range(n):
                member = members[(start + step) % n]
                if member in candidates:
                    self._next = (start + step + 1) % n
                    return member
        self._next = (start + 1) % n
        return members[start % n]


class LeastBusy:
    """The deployment with the fewest requests in flight; ties are taken in turn."""

    __slots__ = ("_turn",)

    def __init__(self, members: Sequence[Member], rng: random.Random | None = None) -> None:
        self._turn = 0

    def pick(self, candidates: Sequence[Member], stream: bool) -> Member:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        self._turn = turn = (self._turn + 1) % n
        best = candidates[turn]
        fewest = best.limit.in_flight
        for i in range(1, n):
            member = candidates[(turn + i) % n]
            if member.limit.in_flight < fewest:
                best, fewest = member, member.limit.in_flight
        return best


class LowestLatency:
    """The deployment with the lowest moving average of recent latencies: time to the first chunk for streams,
    time to the whole answer otherwise. Deployments not measured yet go first (so each gets measured); with
    `latency_buffer` b, a random one among those within (1 + b) times the best."""

    __slots__ = ("_buffer", "_rng", "_turn")

    def __init__(self, members: Sequence[Member], rng: random.Random | None = None, buffer: float = 0.0) -> None:
        self._rng = rng or random.Random()
        self._buffer = buffer
        self._turn = 0

    def pick(self, candidates: Sequence[Member], stream: bool) -> Member:
        n = len(candidates)
        if n == 1:
            return candidates[0]
        scores = [(m.ttft if stream else m.latency) for m in candidates]
        unmeasured = [m for m, s in zip(candidates, scores, strict=True) if s is None]
        if unmeasured:
            self._turn = (self._turn + 1) % len(unmeasured)
            return unmeasured[self._turn]
        best = min(s for s in scores if s is not None)
        limit = best * (1.0 + self._buffer)
        near = [m for m, s in zip(candidates, scores, strict=True) if s is not None and s <= limit]
        return near[0] if len(near) == 1 else near[int(self._rng.random() * len(near))]


STRATEGIES: dict[str, Callable[[Sequence[Member], random.Random | None], Strategy]] = {
    "weighted": Weighted,
    "round_robin": RoundRobin,
    "least_busy": LeastBusy,
    "lowest_latency": LowestLatency,
}
