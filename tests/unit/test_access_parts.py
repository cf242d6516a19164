"""Pure parts of access control: prices in integer micro-dollars, OpenAI's reset format, budget periods, and the
in-memory sliding window at its edges."""

from __future__ import annotations

from datetime import UTC, datetime

from manifold.access.limits import WINDOW_S, MemoryCounters, Scope, format_reset, period_start
from manifold.access.pricing import dollars, micros, prices_for
from manifold.config import LocalDeployment, OpenAIDeployment


def test_money_is_exact() -> None:
    assert micros(0.15) == 150_000
    assert micros("2.5") == 2_500_000
    assert micros(0.1) + micros(0.2) == micros(0.3)  # never a binary float sum
    assert dollars(1234) == "0.001234"
    assert dollars(1_000_000) == "1"
    assert dollars(1_500_000) == "1.5"
    assert dollars(0) == "0"


def test_configured_prices_and_rounding_up() -> None:
    dep = OpenAIDeployment(
        model_name="p",
        model="priced",
        input_cost_per_million=0.15,
        output_cost_per_million="0.60",
        cached_input_cost_per_million=0.075,
    )
    prices = prices_for(dep)
    assert (prices.input, prices.output, prices.cached_input, prices.source) == (150_000, 600_000, 75_000, "config")
    usage = {"prompt_tokens": 1000, "completion_tokens": 500, "prompt_tokens_details": {"cached_tokens": 100}}
    # 900 x 0.15 + 100 x 0.075 + 500 x 0.60 = 442.5 micro-dollars: rounded up
    assert prices.cost(usage) == 443
    assert prices.cost({"input_tokens": 1000, "output_tokens": 0}) == 150  # the Responses API's spelling
    assert prices.cost(None) == 0


def test_dataset_prices_and_free_deployments() -> None:
    found = prices_for(OpenAIDeployment(model_name="d", model="gpt-4o-mini"))
    assert found.source == "genai-prices"
    assert found.input > 0 and found.output > found.input
    local = prices_for(LocalDeployment(model_name="l"))
    assert (local.input, local.output, local.source) == (0, 0, "free")
    unknown = prices_for(OpenAIDeployment(model_name="u", model="no-such-model-anywhere"))
    assert unknown.source == "unknown"


def test_reset_format_is_openais() -> None:
    assert format_reset(0) == "0s"
    assert format_reset(0.12) == "120ms"
    assert format_reset(1) == "1s"
    assert format_reset(1.5) == "1.5s"
    assert format_reset(59.481) == "59.481s"
    assert format_reset(360) == "6m0s"
    assert format_reset(3723) == "1h2m3s"


def test_budget_periods() -> None:
    created = int(datetime(2026, 1, 31, 12, tzinfo=UTC).timestamp())
    now = datetime(2026, 3, 15, tzinfo=UTC).timestamp()
    start, _ = period_start("monthly", created, now)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 2, 28, 12, tzinfo=UTC)  # clamped to February
    start, length = period_start("daily", 0, now)
    assert (start, length) == (int(now), 86400)
    start, _ = period_start(None, created, now)
    assert start == 0


def test_memory_window_is_sliding() -> None:
    counters = MemoryCounters()
    scope = [Scope("key k", "k", 2, None, None)]
    t = 1000.0
    assert counters.admit_now(scope, 0, [], "a", t).refused is None
    assert counters.admit_now(scope, 0, [], "b", t + 30).refused is None
    refused = counters.admit_now(scope, 0, [], "c", t + 59)
    assert refused.refused == "requests"
    assert refused.retry_after_s == WINDOW_S - 59  # when the first one leaves the window
    assert counters.admit_now(scope, 0, [], "d", t + WINDOW_S).refused is None  # the first has left
    assert counters.admit_now(scope, 0, [], "e", t + WINDOW_S).refused == "requests"
