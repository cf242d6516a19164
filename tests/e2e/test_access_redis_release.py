"""The end of a request in Redis (access/redis_counters.py): its release (in-flight slot, token correction, cost)
is written to Redis before `Admission.finish` returns and is not waited for, so a request waits on Redis once.
Checked against the real Redis at `MANIFOLD_TEST_REDIS_URL` (127.0.0.1:6379): what another connection reads
right after `finish` returns already includes the release; a Redis that lost its scripts between a request's
admission and its end still gets the release; a release that fails is counted and logged; closing waits for
the releases written."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Iterator

import pytest
import redis

from manifold.access.limits import Admission
from manifold.access.principal import CURRENT_PRINCIPAL, Limits, Principal
from manifold.access.redis_counters import RedisCounters
from manifold.config import OpenAIDeployment

REDIS_URL = os.environ.get("MANIFOLD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
USAGE = {"prompt_tokens": 10, "completion_tokens": 20, "total_tokens": 30}
DEP = OpenAIDeployment(model_name="m", model="priced", input_cost_per_million=1, output_cost_per_million=2)
COST = 10 * 1 + 20 * 2  # micro-dollars


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"test-release-{uuid.uuid4().hex[:8]}:"
    yield name
    r = redis.Redis.from_url(REDIS_URL)
    keys = r.keys(f"{name}*")
    if keys:
        r.delete(*keys)


def _principal() -> Principal:
    limits = Limits(tpm=1_000_000, max_parallel_requests=3, max_budget_micros=10**9, budget_duration="daily")
    return Principal(key_id="k1", key_alias="a", key_limits=limits, created_at=0)


async def test_a_release_is_in_redis_when_finish_returns(prefix: str) -> None:
    counters = RedisCounters(REDIS_URL, 5.0, prefix)
    admission = Admission(counters)
    other = redis.Redis.from_url(REDIS_URL)  # another client, as another replica's admission would be
    token = CURRENT_PRINCIPAL.set(_principal())
    try:
        for i in range(1, 41):
            ticket = await admission.admit("m", {"messages": [], "max_tokens": 50}, f"req_{i}", False, None)
            assert ticket is not None
            assert admission.finish(ticket, DEP, USAGE, None, None) is None  # nothing to wait for
            # Read at once, before this event loop has run again (the release's reply is not read yet).
            (spend_key,) = other.keys(f"{prefix}budget:*")
            assert int(other.get(spend_key) or 0) == COST * i
            assert other.zcard(f"{prefix}rl:k:k1:p") == 0  # the slot is free
            tokens = other.hgetall(f"{prefix}rl:k:k1:t")
            assert sum(int(v) for v in tokens.values()) == 30 * i  # the reservation corrected to the real usage
        assert counters.round_trips == 80  # an admission and a release each
        protocol = counters.connection.ready()
        assert protocol is not None and protocol.waiting  # the last release's reply has not been read yet
    finally:
        CURRENT_PRINCIPAL.reset(token)
        await admission.aclose()
    assert not protocol.waiting  # closing waited for the last replies
    assert admission.errors == 0


async def test_a_release_after_redis_lost_its_scripts_is_sent_again(prefix: str) -> None:
    counters = RedisCounters(REDIS_URL, 5.0, prefix)
    admission = Admission(counters)
    other = redis.Redis.from_url(REDIS_URL)
    token = CURRENT_PRINCIPAL.set(_principal())
    try:
        ticket = await admission.admit("m", {"messages": [], "max_tokens": 50}, "req_1", False, None)
        other.script_flush()  # as a Redis restarted since the admission would be
        assert admission.finish(ticket, DEP, USAGE, None, None) is None
        for _ in range(100):
            await asyncio.sleep(0.02)
            if other.zcard(f"{prefix}rl:k:k1:p") == 0:
                break
        (spend_key,) = other.keys(f"{prefix}budget:*")
        assert int(other.get(spend_key) or 0) == COST
        assert other.zcard(f"{prefix}rl:k:k1:p") == 0
    finally:
        CURRENT_PRINCIPAL.reset(token)
        await admission.aclose()
    assert admission.errors == 0


async def test_a_release_that_fails_is_counted_and_logged(prefix: str, caplog: pytest.LogCaptureFixture) -> None:
    counters = RedisCounters(REDIS_URL, 5.0, prefix)
    admission = Admission(counters)
    token = CURRENT_PRINCIPAL.set(_principal())
    try:
        ticket = await admission.admit("m", {"messages": [], "max_tokens": 50}, "req_gone", False, None)
        protocol = counters.connection.ready()
        assert protocol is not None
        with caplog.at_level(logging.ERROR, logger="manifold.access"):
            assert admission.finish(ticket, DEP, USAGE, None, None) is None
            protocol.connection_lost(None)  # the connection drops before the reply comes
            await asyncio.sleep(0)
        assert admission.errors == 1
        assert "request req_gone: releasing its limits failed (ConnectionError)" in caplog.text
        # The next request connects again.
        again = await admission.admit("m", {"messages": [], "max_tokens": 50}, "req_next", False, None)
        assert again is not None and admission.finish(again, DEP, USAGE, None, None) is None
    finally:
        CURRENT_PRINCIPAL.reset(token)
        await admission.aclose()
