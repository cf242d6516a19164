"""Background responses in this process: the task running each one and the events it produced, kept in memory
so that streams can follow it (`background` + `stream`) and resume (`GET /responses/{id}?stream=true
&starting_after=N`).

Bounds: a job keeps its last `max_events` events (older ones are dropped; resuming before them answers 400),
and a finished job's events are kept `retention_s` seconds, at most `MAX_FINISHED` finished jobs at once.
Events live in the memory of the process that ran the response: another worker or replica (or this one after a
restart) rebuilds them from the stored response instead (`events.replay`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from manifold.errors import InvalidRequestError

if TYPE_CHECKING:
    from manifold.responses.events import ResponseBuilder

MAX_FINISHED = 1000


class Job:
    __slots__ = ("_waiter", "builder", "done", "events", "first", "max_events", "response_id", "task")

    def __init__(self, response_id: str, max_events: int) -> None:
        self.response_id = response_id
        self.max_events = max_events
        self.events: collections.deque[dict[str, Any]] = collections.deque()
        self.first = 0  # sequence_number of events[0]
        self.done = False
        self.task: asyncio.Task[None] | None = None
        self.builder: ResponseBuilder | None = None  # the response as it grows
        self._waiter = asyncio.Event()

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def extend(self, events: list[dict[str, Any]]) -> None:
        if not events:
            return
        self.events.extend(events)
        while len(self.events) > self.max_events:
            self.events.popleft()
            self.first += 1
        self._wake()

    def close(self) -> None:
        self.done = True
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, asyncio.Event()
        waiter.set()

    def check_resumable(self, starting_after: int) -> None:
        if starting_after + 1 < self.first:
            raise InvalidRequestError(
                f"Events up to sequence number {self.first - 1} of this response are no longer kept; "
                f"resume with starting_after >= {self.first - 1}.",
                param="starting_after",
                code="invalid_value",
            )

    async def follow(self, starting_after: int) -> AsyncIterator[dict[str, Any]]:
        """The events after `starting_after`, then each new one as it comes, until the job ends."""
        following = starting_after + 1
        while True:
            # Re-read the bounds after every yield: the consumer awaited (a socket write) and more may have come.
            following = max(following, self.first)
            while following < self.first + len(self.events):
                yield self.events[following - self.first]
                following = max(following + 1, self.first)
            if self.done:
                return
            await self._waiter.wait()


class Jobs:
    """The background responses this process runs or ran recently."""

    def __init__(self, max_events: int, retention_s: float) -> None:
        self.max_events = max_events
        self.retention_s = retention_s
        self._jobs: dict[str, Job] = {}
        self._finished: collections.OrderedDict[str, None] = collections.OrderedDict()

    def new(self, response_id: str) -> Job:
        job = Job(response_id, self.max_events)
        self._jobs[response_id] = job
        return job

    def get(self, response_id: str) -> Job | None:
        return self._jobs.get(response_id)

    def running(self) -> list[Job]:
        return [job for job in self._jobs.values() if job.running]

    def finished(self, job: Job) -> None:
        """Keep a finished job's events for `retention_s`, then forget it."""
        job.close()
        self._finished[job.response_id] = None
        while len(self._finished) > MAX_FINISHED:
            oldest, _ = self._finished.popitem(last=False)
            self._jobs.pop(oldest, None)
        asyncio.get_running_loop().call_later(self.retention_s, self._forget, job)

    def _forget(self, job: Job) -> None:
        if self._jobs.get(job.response_id) is job:
            del self._jobs[job.response_id]
            self._finished.pop(job.response_id, None)

    def discard(self, response_id: str) -> None:
        self._jobs.pop(response_id, None)
        self._finished.pop(response_id, None)
