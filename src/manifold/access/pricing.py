"""The cost of a request, in integer micro-dollars (1 USD = 1_000_000), from its usage.

Prices are per million tokens: a deployment's own (`input_cost_per_million`, `output_cost_per_million`,
`cached_input_cost_per_million`, in dollars), else those of the `genai-prices` dataset (pydantic's maintained
price list, shipped inside the package as a snapshot: nothing is fetched at run time; a newer Manifold or
`pip install -U genai-prices` updates it). Local and python-handler deployments cost 0 unless configured.

Prices are read once per deployment and upstream model and kept as integer pico-dollars per token (a price per
million tokens in micro-dollars is exactly that), so a request's cost is integer arithmetic: no float sums.
Tiered prices (some models charge more past a context length) are taken at their first tier.
"""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any, Final

from manifold.config import DeploymentBase
from manifold.observability.metrics import usage_tokens
from manifold.observability.record import usage_details

__all__ = ["Prices", "cost_micros", "dollars", "micros", "prices_for"]

log = logging.getLogger("manifold.access")

_MILLION: Final = Decimal(1_000_000)
FREE_PROVIDERS: Final = frozenset({"local", "local_embedding", "python"})
# Manifold's provider kinds that genai-prices knows by another id (None: match by the model name alone).
_DATASET_PROVIDER: Final = {"openai": "openai", "azure": "azure", "anthropic": "anthropic"}


def micros(dollars: float | str | Decimal) -> int:
    """Dollars (a number, its text or a Decimal) as integer micro-dollars, read from the decimal text exactly."""
    return int((Decimal(str(dollars)) * _MILLION).to_integral_value())


def dollars(micro: int) -> str:
    """Micro-dollars as a decimal text of dollars (`1234` → `0.001234`): what `x-manifold-cost` carries."""
    if micro < 0:
        return "-" + dollars(-micro)
    whole, frac = divmod(micro, 1_000_000)
    return f"{whole}.{frac:06d}".rstrip("0") if frac else str(whole)


class Prices:
    """Per-token prices in pico-dollars (micro-dollars per million tokens): integers."""

    __slots__ = ("cached_input", "input", "output", "source")

    def __init__(self, input: int, output: int, cached_input: int, source: str) -> None:
        self.input = input
        self.output = output
        self.cached_input = cached_input
        self.source = source  # "config", "genai-prices", "free" or "unknown"

    def cost(self, usage: dict[str, Any] | None) -> int:
        """Micro-dollars for an OpenAI-shaped `usage` (chat: prompt/completion tokens with details; Responses
        API: input/output tokens), rounded up to the micro-dollar."""
        if not usage:
            return 0
        given, made = usage_tokens(usage)  # reasoning tokens are part of the output tokens
        return self.cost_of(given or 0, made or 0, usage_details(usage)[0])

    def cost_of(self, given: int, made: int, cached: int | None) -> int:
        """Micro-dollars for `given` input tokens (of which `cached` read from the provider's cache) and `made`
        output tokens, rounded up."""
        cached = min(cached, given) if cached is not None and cached > 0 else 0
        pico = (given - cached) * self.input + cached * self.cached_input + made * self.output
        return -(-pico // 1_000_000)


FREE: Final = Prices(0, 0, 0, "free")
_cache: dict[tuple[str, str, str | None], Prices] = {}


def prices_for(dep: DeploymentBase, upstream_model: str | None = None) -> Prices:
    """The prices of a deployment (for a wildcard group, of the upstream model the request named)."""
    model = upstream_model or dep.upstream_model
    key = (dep.provider, model, dep.id or dep.model_name)
    found = _cache.get(key)
    if found is None:
        found = _cache[key] = _resolve(dep, model)
    return found


def _resolve(dep: DeploymentBase, model: str) -> Prices:
    configured = (dep.input_cost_per_million, dep.output_cost_per_million, dep.cached_input_cost_per_million)
    if any(p is not None for p in configured) or dep.provider in FREE_PROVIDERS:
        inp = micros(dep.input_cost_per_million or 0)
        out = micros(dep.output_cost_per_million or 0)
        cached = inp if dep.cached_input_cost_per_million is None else micros(dep.cached_input_cost_per_million)
        source = "config" if any(p is not None for p in configured) else "free"
        return Prices(inp, out, cached, source)
    dataset = _from_dataset(dep.provider, model)
    if dataset is None:
        log.warning(
            "deployment %s: no price known for model %r (genai-prices has none, no *_cost_per_million set): its "
            "requests cost 0",
            dep.id or dep.model_name,
            model,
        )
        return Prices(0, 0, 0, "unknown")
    return dataset


def _from_dataset(provider: str, model: str) -> Prices | None:
    try:
        from genai_prices import Usage, calc_price
    except ImportError:
        return None

    def per_million(**tokens: int) -> int | None:
        try:
            calc = calc_price(Usage(**tokens), model, provider_id=_DATASET_PROVIDER.get(provider))
        except LookupError:  # a model or provider the dataset does not know
            return None
        return micros(calc.total_price)

    inp = per_million(input_tokens=1_000_000)
    if inp is None:
        return None
    out = per_million(output_tokens=1_000_000) or 0
    cached = per_million(input_tokens=1_000_000, cache_read_tokens=1_000_000)
    return Prices(inp, out, inp if cached is None else cached, "genai-prices")


def cost_micros(dep: DeploymentBase, usage: dict[str, Any] | None, upstream_model: str | None = None) -> int:
    return prices_for(dep, upstream_model).cost(usage)
