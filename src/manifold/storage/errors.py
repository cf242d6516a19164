"""Database failures as the client sees them: 503 in OpenAI's envelope, never a traceback; and in the log, at
most one line per `LOG_INTERVAL_S` (a database that went down fails every request that reads it)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from sqlalchemy.exc import SQLAlchemyError

from manifold.errors import ServiceUnavailableError

log = logging.getLogger("manifold.storage")
LOG_INTERVAL_S = 5.0


class _Throttle:
    __slots__ = ("last", "suppressed")

    def __init__(self) -> None:
        self.last = float("-inf")
        self.suppressed = 0


_throttle = _Throttle()


def log_failure(what: str, exc: BaseException) -> None:
    """Log a database failure, or count it when one was logged less than `LOG_INTERVAL_S` ago."""
    now = time.monotonic()
    if now - _throttle.last < LOG_INTERVAL_S:
        _throttle.suppressed += 1
        return
    more = f" ({_throttle.suppressed} more failure(s) since the last report)" if _throttle.suppressed else ""
    _throttle.last, _throttle.suppressed = now, 0
    log.error("storage: %s: %s: %s%s", what, type(exc).__name__, exc, more)


def unavailable() -> ServiceUnavailableError:
    return ServiceUnavailableError(
        "The storage backend is unavailable; nothing was stored. Try again later.", code="storage_unavailable"
    )


@contextlib.asynccontextmanager
async def storage_errors() -> AsyncIterator[None]:
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        # OSError: a driver that failed to connect (refused, reset) before SQLAlchemy could wrap it.
        log_failure("a read failed", exc)
        raise unavailable() from exc
