"""Database failures as the client sees them: 503 in OpenAI's envelope, never a traceback."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy.exc import SQLAlchemyError

from manifold.errors import ServiceUnavailableError

log = logging.getLogger("manifold.storage")


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
        log.error("storage: %s: %s", type(exc).__name__, exc)
        raise unavailable() from exc
