"""What happens when a request ends: its metrics, its access line, its server span. The server's
`ObserveRequests` layer makes the record and calls each of `readers` with it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from manifold.observability.logging import AccessLog
from manifold.observability.metrics import UNMATCHED, RequestMetrics
from manifold.observability.record import RequestRecord
from manifold.observability.tracing import Tracing

__all__ = ["UNMATCHED", "Observer"]


class Observer:
    """`sinks`: further readers of each finished record (the usage ledger), called last."""

    __slots__ = ("access_log", "metrics", "sinks", "tracing")

    def __init__(
        self,
        metrics: bool,
        access_log: bool,
        tracing: Tracing | None,
        sinks: Sequence[Callable[[RequestRecord], None]] = (),
    ) -> None:
        self.metrics = RequestMetrics() if metrics else None
        self.access_log = AccessLog() if access_log else None
        self.tracing = tracing
        self.sinks = tuple(sinks)

    def readers(self) -> tuple[Callable[[RequestRecord], None], ...]:
        """What reads each finished record, in order (metrics, the server span, the access line, the sinks),
        as a tuple the observing layer calls each of: no checks per request."""
        out: list[Callable[[RequestRecord], None]] = []
        if self.metrics is not None:
            out.append(self.metrics.finished)
        if self.tracing is not None:
            out.append(self._end_span)
        if self.access_log is not None:
            out.append(self.access_log.write)
        return (*out, *self.sinks)

    def _end_span(self, rec: RequestRecord) -> None:
        if rec.span is not None:
            assert self.tracing is not None
            self.tracing.end_server_span(rec)
