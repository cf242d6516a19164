"""Key invalidation across replicas through Redis pub/sub (docs/access.md).

A replica (or `manifold keys …`) that changes a key or a team publishes one message on `CHANNEL`; every replica
subscribes and, on any message, empties its key cache, so a revoked or blocked key is refused everywhere within
the time a message takes (milliseconds; the guarantee is 1 s). A subscription that drops may have missed
messages: on reconnecting the cache is emptied too. Without Redis, replicas forget a key within
`auth.key_cache_ttl_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Final

from manifold.config import RedisSettings
from manifold.errors import ConfigError

__all__ = ["CHANNEL", "Invalidation", "publish_sync"]

log = logging.getLogger("manifold.auth")
CHANNEL: Final = "manifold:access:invalidate"
_RECONNECT_S: Final = 0.2


def _redis_asyncio() -> Any:
    try:
        import redis.asyncio as redis_asyncio
    except ImportError:  # the extra is part of `dev`
        raise ConfigError(["redis.url: the Redis client is not installed (pip install 'manifold[redis]')"]) from None
    return redis_asyncio


class Invalidation:
    def __init__(self, settings: RedisSettings, on_message: Callable[[str], None]) -> None:
        assert settings.url is not None
        _redis_asyncio()  # a clear config error now, not a failing task later
        self._url = settings.url
        self._timeout = settings.timeout_s
        self._on_message = on_message
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self.subscribed = asyncio.Event()

    def _connect(self) -> Any:
        if self._client is None:
            self._client = _redis_asyncio().from_url(
                self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout
            )
        return self._client

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._listen())

    async def publish(self, reason: str) -> None:
        try:
            await self._connect().publish(CHANNEL, reason)
        except Exception as exc:  # noqa: BLE001 - the other replicas still forget within the cache TTL
            log.error(
                "auth: cannot publish a key change to Redis (%s: %s); other replicas see it within the key cache TTL",
                type(exc).__name__,
                exc,
            )

    async def _listen(self) -> None:
        failed = False
        while True:
            pubsub = client = None
            try:
                # No socket timeout on the subscription: it waits for messages as long as there are none.
                client = _redis_asyncio().from_url(self._url, socket_connect_timeout=self._timeout)
                pubsub = client.pubsub(ignore_subscribe_messages=True)
                await pubsub.subscribe(CHANNEL)
                if failed:
                    log.info("auth: subscribed to key changes in Redis again")
                    self._on_message("")  # messages may have been missed meanwhile
                failed = False
                self.subscribed.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        data = message.get("data")
                        self._on_message(data.decode() if isinstance(data, bytes) else str(data))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged once per outage, retried
                self.subscribed.clear()
                if not failed:
                    log.error(
                        "auth: the Redis subscription to key changes failed (%s: %s); retrying", type(exc).__name__, exc
                    )
                    self._on_message("")
                failed = True
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()
                if client is not None:
                    with contextlib.suppress(Exception):
                        await client.aclose()
            await asyncio.sleep(_RECONNECT_S)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._client = None


def publish_sync(settings: RedisSettings, reason: str) -> bool:
    """Publish a change from outside a server (the CLI); False when Redis could not be reached."""
    if not settings.url:
        return False
    try:
        import redis
    except ImportError:
        return False
    try:
        client = redis.Redis.from_url(settings.url, socket_timeout=settings.timeout_s)
        try:
            client.publish(CHANNEL, reason)
        finally:
            client.close()
    except Exception:  # noqa: BLE001 - the caller says the replicas see it within the cache TTL
        return False
    return True
