"""Building the access pieces from the config: the admission the router gets."""

from __future__ import annotations

from manifold.access.limits import Admission, Counters, MemoryCounters
from manifold.config import Config

__all__ = ["build_admission"]


def build_admission(config: Config) -> Admission:
    """Counters in Redis with `redis.url`, else in process memory."""
    counters: Counters
    r = config.redis
    if r.url is not None:
        from manifold.access.redis_counters import RedisCounters

        counters = RedisCounters(r.url, r.timeout_s, r.key_prefix)
    else:
        counters = MemoryCounters()
    return Admission(counters, r.on_redis_error)
