"""Can a deployment take a request now? Its circuit breaker (cooldown after failures) and its concurrency limit.

Circuit breaker, per deployment::

    closed ──(allowed_fails failures within fail_window, or one 401/403)──▶ open (skipped for cooldown_time)
    open ──(cooldown_time passed)──▶ half-open: the next request is the one probe; others still skip it
    half-open ──probe succeeds──▶ closed          half-open ──probe fails──▶ open again

Concurrency limit: at most `max_concurrency` requests in flight; up to `max_queue` more wait (first come, first
served) at most `queue_timeout` seconds for a slot. Both are in-process state (one worker's view).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
from typing import Any

from manifold.errors import RateLimitError

__all__ = ["CircuitBreaker", "ConcurrencyLimit", "QueueFullError"]


class CircuitBreaker:
    __slots__ = ("allowed_fails", "cooldown_time", "fail_window", "failures", "open_until", "probing")

    def __init__(self, allowed_fails: int, fail_window: float, cooldown_time: float) -> None:
        self.allowed_fails = allowed_fails
        self.fail_window = fail_window
        self.cooldown_time = cooldown_time  # 0: never opens
        self.failures: collections.deque[float] = collections.deque()
        self.open_until = 0.0  # 0.0 while closed: one falsy test on the hot path
        self.probing = False

    def is_closed(self) -> bool:
        return not self.open_until

    def available(self, now: float) -> bool:
        """Closed, or half-open with no probe in flight."""
        until = self.open_until
        return not until or (now >= until and not self.probing)

    def retry_in(self, now: float) -> float:
        """Seconds until this deployment can be tried again (0 when it can now)."""
        return max(0.0, self.open_until - now) if self.open_until else 0.0

    def begin(self, now: float) -> bool:
        """A request is sent to this deployment; True when it is the half-open probe."""
        if self.open_until and now >= self.open_until:
            self.probing = True
            return True
        return False

    def success(self) -> None:
        if self.open_until or self.failures:
            self.open_until = 0.0
            self.probing = False
            self.failures.clear()

    def abandon(self) -> None:
        """The probe ended without a verdict (the client left): the next request probes instead."""
        self.probing = False

    def failure(self, now: float) -> bool:
        """Count a failure; True when it opens the circuit (closed → open, or a failed probe)."""
        if self.cooldown_time <= 0:
            return False
        if self.probing or self.open_until:
            self.probing = False
            self.open_until = now + self.cooldown_time
            return True
        failures = self.failures
        failures.append(now)
        horizon = now - self.fail_window
        while failures and failures[0] < horizon:
            failures.popleft()
        if len(failures) >= self.allowed_fails:
            failures.clear()
            self.open_until = now + self.cooldown_time
            return True
        return False

    def trip(self, now: float) -> bool:
        """Open at once (the upstream refused our credentials); True when it was not open already."""
        if self.cooldown_time <= 0:
            return False
        was_open = bool(self.open_until) and not self.probing
        self.probing = False
        self.failures.clear()
        self.open_until = now + self.cooldown_time
        return not was_open


class QueueFullError(RateLimitError):
    """Every slot of a deployment is taken and its queue is full, or the wait for a slot ran out."""


class ConcurrencyLimit:
    """In-flight requests of one deployment; with a `limit`, a bounded FIFO of waiters."""

    __slots__ = ("gauge", "in_flight", "label", "limit", "max_queue", "queue_timeout", "queued_gauge", "waiters")

    def __init__(self, label: str, limit: int | None, max_queue: int, queue_timeout: float) -> None:
        self.label = label
        self.limit = limit
        self.max_queue = max_queue
        self.queue_timeout = queue_timeout
        self.in_flight = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # Metrics (anything with inc/dec): in flight, and waiting in the queue. Whoever takes a slot by
        # `in_flight += 1` bumps `gauge` too.
        self.gauge: Any = None
        self.queued_gauge: Any = None

    def has_room(self) -> bool:
        return self.limit is None or (self.in_flight < self.limit and not self.waiters)

    def can_queue(self) -> bool:
        return len(self.waiters) < self.max_queue

    async def acquire(self) -> None:
        if self.has_room():
            self.in_flight += 1
            if self.gauge is not None:
                self.gauge.inc()
            return
        if not self.can_queue():
            raise self._full(f"its {self.max_queue} queue places are taken")
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        queued = self.queued_gauge
        if queued is not None:
            queued.inc()
        try:
            async with asyncio.timeout(self.queue_timeout):
                await waiter  # release() hands a slot over by setting its result
        except TimeoutError:
            if waiter.done() and not waiter.cancelled():
                return  # the slot came just as the time ran out
            raise self._full(f"no slot freed up within {self.queue_timeout:g} s") from None
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as we were cancelled: pass it on
            raise
        finally:
            if queued is not None:
                queued.dec()
            if not waiter.done() or waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)

    def release(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes to the waiter; in_flight is unchanged
                return
        self.in_flight -= 1
        if self.gauge is not None:
            self.gauge.dec()

    def _full(self, why: str) -> QueueFullError:
        wait = max(1, math.ceil(min(self.queue_timeout, 60.0)))
        return QueueFullError(
            f"The deployment {self.label} is at its limit of {self.limit} concurrent requests and {why}; "
            "please retry shortly.",
            code="concurrency_limit_exceeded",
            headers={"retry-after": str(wait)},
        )
