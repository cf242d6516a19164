"""The router's parts on their own: error verdicts, backoff, Retry-After, the circuit breaker, the concurrency
limit, the balancing strategies and name resolution. Times are passed in, so nothing here depends on a clock."""

from __future__ import annotations

import asyncio
import email.utils
import random
import time
from typing import Any

import pytest

from manifold.config import OpenAIDeployment, RouterSettings
from manifold.errors import (
    BadGatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    ManifoldError,
    NotFoundError,
    ServiceUnavailableError,
    UpstreamError,
)
from manifold.providers.base import Provider
from manifold.providers.upstream_http import error_from_upstream, retry_after_seconds
from manifold.routing.addressing import NameTable, wildcard_upstream
from manifold.routing.group import Member, Policy
from manifold.routing.health import CircuitBreaker, ConcurrencyLimit, QueueFullError
from manifold.routing.retry import Verdict, backoff_delay, classify, is_context_window_error
from manifold.routing.strategies import LeastBusy, LowestLatency, RoundRobin, Weighted

# -- verdicts --------------------------------------------------------------------------------------------------


def upstream(status: int, message: str = "x", code: str | None = None) -> ManifoldError:
    import json

    body = json.dumps({"error": {"message": message, "type": "t", "param": None, "code": code}}).encode()
    return error_from_upstream(status, body, {}, "'m'")


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (upstream(500), Verdict.RETRY),
        (upstream(502), Verdict.RETRY),
        (upstream(503), Verdict.RETRY),
        (upstream(529), Verdict.RETRY),
        (upstream(429), Verdict.RETRY),
        (upstream(408), Verdict.RETRY),
        (upstream(409), Verdict.RETRY),
        (BadGatewayError("connection refused", code="upstream_unreachable"), Verdict.RETRY),
        (GatewayTimeoutError("slow"), Verdict.RETRY),
        (ServiceUnavailableError("busy"), Verdict.RETRY),
        (upstream(401), Verdict.SWITCH),
        (upstream(403), Verdict.SWITCH),
        (upstream(400), Verdict.FATAL),
        (upstream(404), Verdict.FATAL),
        (upstream(413), Verdict.FATAL),
        (upstream(422), Verdict.FATAL),
        (InvalidRequestError("bad", param="temperature"), Verdict.FATAL),
        (NotFoundError("no"), Verdict.FATAL),
        (upstream(400, "whatever", "context_length_exceeded"), Verdict.CONTEXT_WINDOW),
    ],
)
def test_verdicts(error: ManifoldError, verdict: Verdict) -> None:
    assert classify(error) is verdict


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens.",
        "prompt is too long: 210000 tokens > 200000 maximum",
        "the request exceeds the available context size, try increasing it",
        "Prompt contains 40000 tokens and 0 draft tokens, too large for model with 32768 maximum context length",
        "The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).",
        "Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 + 200",
        "Your input exceeds the context window of this model.",
    ],
)
def test_context_window_messages(message: str) -> None:
    assert is_context_window_error(upstream(400, message))
    assert classify(upstream(400, message)) is Verdict.CONTEXT_WINDOW
    assert not is_context_window_error(upstream(500, message))  # a 5xx is retried, whatever it says


def test_not_context_window() -> None:
    assert not is_context_window_error(upstream(400, "temperature must be at most 2"))
    assert not is_context_window_error(upstream(400, "x", "invalid_value"))


def test_a_401_of_our_own_is_not_a_deployment_fault() -> None:
    from manifold.errors import AuthenticationError

    assert classify(AuthenticationError("bad client key")) is Verdict.FATAL


def test_upstream_errors_carry_status_and_retry_after() -> None:
    err = error_from_upstream(503, b"{}", {"retry-after": "2"}, "'m'")
    assert isinstance(err, BadGatewayError) and err.upstream_status == 503 and err.retry_after == 2.0
    assert err.headers == {}  # the client's 502 does not pass a 5xx's Retry-After on
    err = error_from_upstream(429, b"{}", {"retry-after-ms": "250", "retry-after": "1"}, "'m'")
    assert isinstance(err, UpstreamError) and err.retry_after == 0.25
    assert err.headers == {"retry-after": "1", "retry-after-ms": "250"}
    assert error_from_upstream(400, b"{}", {}, "'m'").retry_after is None


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({}, None),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500"}, 1.5),
        ({"retry-after-ms": "nonsense", "retry-after": "4"}, 4.0),
        ({"retry-after": "-1"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # in the past
    ],
)
def test_retry_after_seconds(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(headers) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    value = retry_after_seconds({"retry-after": when})
    assert value is not None and 25 <= value <= 31


def test_backoff_doubles_with_jitter_and_caps() -> None:
    assert backoff_delay(1, 0.5, 8, rand=0.0) == 0.25
    assert backoff_delay(1, 0.5, 8, rand=1.0) == 0.5
    assert backoff_delay(2, 0.5, 8, rand=1.0) == 1.0
    assert backoff_delay(3, 0.5, 8, rand=1.0) == 2.0
    assert backoff_delay(10, 0.5, 8, rand=1.0) == 8.0
    assert backoff_delay(1000, 0.5, 8, rand=0.5) == 6.0
    assert backoff_delay(3, 0.0, 8) == 0.0
    draws = {backoff_delay(2, 0.5, 8) for _ in range(50)}
    assert all(0.5 <= d <= 1.0 for d in draws) and len(draws) > 1


# -- circuit breaker -------------------------------------------------------------------------------------------


def test_breaker_opens_after_allowed_fails_within_the_window() -> None:
    b = CircuitBreaker(allowed_fails=3, fail_window=10, cooldown_time=30)
    assert not b.failure(100) and not b.failure(105)
    assert not b.failure(111)  # the one at 100 fell out of the window
    assert b.is_closed() and b.available(111)
    assert b.failure(112)
    assert not b.available(112) and not b.available(141.9) and b.retry_in(132) == pytest.approx(10)


def test_breaker_half_open_lets_one_probe_through() -> None:
    b = CircuitBreaker(allowed_fails=1, fail_window=10, cooldown_time=30)
    assert b.failure(0)
    assert b.available(30)
    assert b.begin(30) is True  # this request is the probe
    assert not b.available(30.1)  # the others keep skipping it
    b.success()
    assert b.is_closed() and b.available(31) and b.begin(31) is False


def test_breaker_failed_probe_reopens_and_an_abandoned_probe_frees_the_slot() -> None:
    b = CircuitBreaker(allowed_fails=1, fail_window=10, cooldown_time=30)
    b.failure(0)
    b.begin(30)
    assert b.failure(31)  # the probe failed: a full cooldown again
    assert not b.available(60) and b.available(61)
    b.begin(61)
    b.abandon()
    assert b.available(61.5)


def test_breaker_trip_opens_at_once() -> None:
    b = CircuitBreaker(allowed_fails=5, fail_window=10, cooldown_time=20)
    assert b.trip(0) is True
    assert not b.available(19) and b.available(20)
    assert b.trip(1) is False  # already open: not reported twice


def test_breaker_disabled_with_zero_cooldown() -> None:
    b = CircuitBreaker(allowed_fails=1, fail_window=10, cooldown_time=0)
    assert not b.failure(0) and not b.trip(0)
    assert b.available(0)


# -- concurrency limit -----------------------------------------------------------------------------------------


async def test_limit_queues_in_order_and_hands_slots_over() -> None:
    limit = ConcurrencyLimit("'d'", 1, max_queue=2, queue_timeout=5)
    await limit.acquire()
    order: list[int] = []

    async def wait(i: int) -> None:
        await limit.acquire()
        order.append(i)

    tasks = [asyncio.create_task(wait(i)) for i in (1, 2)]
    await asyncio.sleep(0)
    assert len(limit.waiters) == 2 and not limit.has_room()
    with pytest.raises(QueueFullError) as full:
        await limit.acquire()
    assert full.value.status_code == 429 and full.value.headers["retry-after"] == "5"
    assert full.value.code == "concurrency_limit_exceeded"
    limit.release()
    await asyncio.sleep(0)
    assert order == [1] and limit.in_flight == 1
    limit.release()
    await asyncio.gather(*tasks)
    assert order == [1, 2]
    limit.release()
    assert limit.in_flight == 0 and limit.has_room()


async def test_limit_wait_times_out_with_429() -> None:
    limit = ConcurrencyLimit("'d'", 1, max_queue=5, queue_timeout=0.05)
    await limit.acquire()
    with pytest.raises(QueueFullError) as info:
        await limit.acquire()
    assert "0.05 s" in info.value.message and info.value.headers == {"retry-after": "1"}
    assert not limit.waiters and limit.in_flight == 1


async def test_limit_cancelled_waiter_leaves_the_queue() -> None:
    limit = ConcurrencyLimit("'d'", 1, max_queue=5, queue_timeout=5)
    await limit.acquire()
    task = asyncio.create_task(limit.acquire())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not limit.waiters
    limit.release()
    assert limit.in_flight == 0


async def test_unlimited_counts_in_flight() -> None:
    limit = ConcurrencyLimit("'d'", None, max_queue=0, queue_timeout=1)
    for _ in range(100):
        await limit.acquire()
    assert limit.in_flight == 100 and limit.has_room()


# -- strategies ------------------------------------------------------------------------------------------------


class _Provider(Provider):
    pass


def members(*weights: float) -> list[Member]:
    policy = Policy(RouterSettings())
    out = []
    for i, w in enumerate(weights):
        dep = OpenAIDeployment(model_name="m", api_base="http://127.0.0.1:1/v1", weight=w)
        out.append(Member(_Provider(dep), f"m#{i}", policy))
    return out


def test_weighted_split_follows_the_weights() -> None:
    ms = members(1, 3)
    strategy = Weighted(ms, random.Random(7))
    n = 4000
    picks = [strategy.pick(ms, False) for _ in range(n)]
    share = picks.count(ms[1]) / n
    assert 0.72 <= share <= 0.78  # 0.75 expected; seeded, so exact run to run
    equal = members(1, 1, 1)
    counts = [0, 0, 0]
    s = Weighted(equal, random.Random(1))
    for _ in range(3000):
        counts[equal.index(s.pick(equal, False))] += 1
    assert all(900 <= c <= 1100 for c in counts)


def test_weighted_on_a_subset() -> None:
    ms = members(1, 1, 10)
    strategy = Weighted(ms, random.Random(3))
    subset = [ms[0], ms[2]]
    picks = [strategy.pick(subset, False) for _ in range(1100)]
    assert set(picks) <= set(subset) and picks.count(ms[2]) > 900


def test_round_robin_in_order_and_skips_unavailable() -> None:
    ms = members(1, 1, 1)
    rr = RoundRobin(ms)
    assert [rr.pick(ms, False) for _ in range(6)] == ms + ms
    assert rr.pick([ms[1], ms[2]], False) is ms[1]
    assert rr.pick([ms[0], ms[2]], False) is ms[2]
    assert rr.pick(ms, False) is ms[0]


def test_least_busy_picks_the_fewest_in_flight() -> None:
    ms = members(1, 1, 1)
    ms[0].limit.in_flight, ms[1].limit.in_flight, ms[2].limit.in_flight = 3, 0, 1
    lb = LeastBusy(ms)
    assert {lb.pick(ms, False) for _ in range(10)} == {ms[1]}
    ms[1].limit.in_flight = 1
    assert {lb.pick(ms, False) for _ in range(10)} == {ms[1], ms[2]}  # ties taken in turn


def test_lowest_latency_measures_each_then_prefers_the_fastest() -> None:
    ms = members(1, 1)
    ll = LowestLatency(ms, random.Random(0))
    first = ll.pick(ms, False)
    first.observe(0.5, False, 0.3)
    assert ll.pick(ms, False) is not first  # the unmeasured one goes next
    other = ms[1] if first is ms[0] else ms[0]
    other.observe(0.1, False, 0.3)
    assert {ll.pick(ms, False) for _ in range(10)} == {other}
    # streams are judged on time to first chunk, separately
    ms[0].observe(0.05, True, 0.3)
    ms[1].observe(0.9, True, 0.3)
    assert {ll.pick(ms, True) for _ in range(10)} == {ms[0]}


def test_lowest_latency_moving_average_and_buffer() -> None:
    ms = members(1, 1)
    ms[0].observe(1.0, False, 0.5)
    ms[0].observe(0.0, False, 0.5)
    assert ms[0].latency == pytest.approx(0.5)
    ms[1].observe(0.45, False, 0.5)
    assert LowestLatency(ms, random.Random(0)).pick(ms, False) is ms[1]
    buffered = LowestLatency(ms, random.Random(0), buffer=0.5)
    assert {buffered.pick(ms, False) for _ in range(50)} == {ms[0], ms[1]}


# -- names -----------------------------------------------------------------------------------------------------


def test_name_table() -> None:
    groups: dict[str, Any] = {"gpt-4o": "G", "openai/*": "OPENAI", "openai/o1-*": "O1", "*": "ANY"}
    table = NameTable(groups, {"gpt-4": "gpt-4o", "claude": "anthropic/claude-sonnet-4", "fast": "openai/gpt-4o-mini"})
    assert table.resolve("gpt-4o") == ("G", None)
    assert table.resolve("gpt-4") == ("G", None)
    assert table.resolve("openai/gpt-4o") == ("OPENAI", "gpt-4o")
    assert table.resolve("openai/o1-mini") == ("O1", "mini")  # the longest prefix wins
    assert table.resolve("fast") == ("OPENAI", "gpt-4o-mini")
    assert table.resolve("claude") == ("ANY", "anthropic/claude-sonnet-4")
    assert table.resolve("openai/") == ("ANY", "openai/")  # `*` matches at least one character
    assert NameTable({"a": 1}, {}).resolve("b") is None


def test_wildcard_upstream() -> None:
    assert wildcard_upstream(None, "gpt-4o") == "gpt-4o"
    assert wildcard_upstream("*", "gpt-4o") == "gpt-4o"
    assert wildcard_upstream("accounts/acme/models/*", "llama") == "accounts/acme/models/llama"


# -- fallback plan ---------------------------------------------------------------------------------------------


def test_fallback_plan_goes_down_the_chain_once() -> None:
    from manifold.routing.fallback import FallbackPlan

    primary = ("big", None)
    plan = FallbackPlan(primary, [("small", None), primary, ("small", None), ("tiny", None)], [("long", None)])
    assert plan.next(False) == ("small", None)
    assert plan.next(False) == ("tiny", None)  # the primary and repeats are skipped
    assert plan.next(False) is None


def test_fallback_plan_switches_to_the_context_window_chain_once() -> None:
    from manifold.routing.fallback import FallbackPlan

    plan = FallbackPlan(("big", None), [("small", None)], [("long", None), ("longer", None)])
    assert plan.next(False) == ("small", None)
    assert plan.next(True) == ("long", None)
    assert plan.next(False) == ("longer", None)
    assert plan.next(True) is None  # already in that chain
    no_chain = FallbackPlan(("big", None), [("small", None)], [])
    assert no_chain.next(True) is None
