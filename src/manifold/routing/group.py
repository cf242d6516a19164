"""A model group (the deployments sharing one `model_name`) and the router's state for each deployment."""

from __future__ import annotations

import random
from collections.abc import Sequence

from manifold.config import GroupSettings, RouterSettings, Strategy
from manifold.observability.metrics import DeploymentMetrics
from manifold.providers.base import Provider
from manifold.routing.addressing import is_wildcard, wildcard_upstream
from manifold.routing.health import CircuitBreaker, ConcurrencyLimit
from manifold.routing.quota import Quota
from manifold.routing.strategies import STRATEGIES, LowestLatency
from manifold.routing.strategies import Strategy as StrategyImpl

__all__ = ["Member", "ModelGroup", "Policy"]


class Policy:
    """The router settings for one group: its `router.groups.<name>` overrides over the router-wide values."""

    __slots__ = (
        "allow_client_fallbacks",
        "allowed_fails",
        "context_window_fallbacks",
        "cooldown_time",
        "fail_window",
        "fallbacks",
        "latency_alpha",
        "latency_buffer",
        "max_retry_after",
        "measures_latency",
        "num_retries",
        "retry_backoff",
        "retry_backoff_max",
        "strategy",
    )

    def __init__(self, defaults: RouterSettings, overrides: GroupSettings | None = None) -> None:
        o = overrides or GroupSettings()
        d = defaults
        self.strategy: Strategy = o.strategy if o.strategy is not None else d.strategy
        self.num_retries: int = o.num_retries if o.num_retries is not None else d.num_retries
        self.retry_backoff: float = o.retry_backoff if o.retry_backoff is not None else d.retry_backoff
        self.retry_backoff_max: float = o.retry_backoff_max if o.retry_backoff_max is not None else d.retry_backoff_max
        self.max_retry_after: float = o.max_retry_after if o.max_retry_after is not None else d.max_retry_after
        self.allowed_fails: int = o.allowed_fails if o.allowed_fails is not None else d.allowed_fails
        self.fail_window: float = o.fail_window if o.fail_window is not None else d.fail_window
        self.cooldown_time: float = o.cooldown_time if o.cooldown_time is not None else d.cooldown_time
        self.fallbacks: list[str] = o.fallbacks if o.fallbacks is not None else d.fallbacks
        self.context_window_fallbacks: list[str] = (
            o.context_window_fallbacks if o.context_window_fallbacks is not None else d.context_window_fallbacks
        )
        self.allow_client_fallbacks: bool = (
            o.allow_client_fallbacks if o.allow_client_fallbacks is not None else d.allow_client_fallbacks
        )
        self.latency_alpha: float = o.latency_alpha if o.latency_alpha is not None else d.latency_alpha
        self.latency_buffer: float = o.latency_buffer if o.latency_buffer is not None else d.latency_buffer
        self.measures_latency = self.strategy == "lowest_latency"  # else nothing reads the averages


class Member:
    """One deployment as the router sees it: its provider, breaker, in-flight count and recent latencies."""

    __slots__ = (
        "breaker",
        "label",
        "latency",
        "limit",
        "metrics",
        "model_pattern",
        "provider",
        "quota",
        "ttft",
        "weight",
    )

    def __init__(self, provider: Provider, label: str, policy: Policy) -> None:
        dep = provider.deployment
        self.provider = provider
        self.label = label  # names it in headers and logs; never its URL or key
        self.weight = dep.weight
        self.model_pattern = dep.model
        self.breaker = CircuitBreaker(policy.allowed_fails, policy.fail_window, policy.cooldown_time)
        self.limit = ConcurrencyLimit(repr(label), provider.concurrency_limit, dep.max_queue, dep.queue_timeout)
        self.latency: float | None = None  # moving averages, seconds
        self.ttft: float | None = None
        self.metrics: DeploymentMetrics | None = None  # set by Router.observe
        # The upstream's own rpm/tpm (routing/quota.py); None: none set.
        self.quota = None if dep.rpm is None and dep.tpm is None else Quota(dep.rpm, dep.tpm)

    def attach(self, metrics: DeploymentMetrics) -> None:
        self.metrics = metrics
        limit = self.limit
        if metrics.multiprocess:
            # Each worker's gauges are files that a scrape sums: they must be kept up to date as they change.
            limit.gauge = metrics.in_flight
            limit.queued_gauge = metrics.queued
        else:
            # One process: read at scrape time, nothing per request.
            metrics.in_flight.set_function(lambda: limit.in_flight)
            metrics.queued.set_function(lambda: len(limit.waiters))

    def observe(self, seconds: float, stream: bool, alpha: float) -> None:
        if stream:
            prev = self.ttft
            self.ttft = seconds if prev is None else prev + alpha * (seconds - prev)
        else:
            prev = self.latency
            self.latency = seconds if prev is None else prev + alpha * (seconds - prev)

    def upstream_model(self, rest: str) -> str:
        return wildcard_upstream(self.model_pattern, rest)

    def __repr__(self) -> str:
        return f"<Member {self.label}>"


class ModelGroup:
    __slots__ = (
        "context_window_fallbacks",
        "created",
        "fallbacks",
        "is_wildcard",
        "limited",
        "members",
        "name",
        "owned_by",
        "policy",
        "providers",
        "quotas",
        "strategy",
    )

    def __init__(
        self, name: str, providers: list[Provider], created: int, policy: Policy, rng: random.Random | None = None
    ) -> None:
        self.name = name
        self.providers = providers
        self.created = created
        self.policy = policy
        self.is_wildcard = is_wildcard(name)
        first = providers[0].deployment
        self.owned_by = first.owned_by or first.provider
        self.members = [Member(p, p.deployment.id or f"{name}#{i}", policy) for i, p in enumerate(providers)]
        self.limited = any(m.limit.limit is not None for m in self.members)
        self.quotas = any(m.quota is not None for m in self.members)
        self.strategy: StrategyImpl
        if policy.strategy == "lowest_latency":
            self.strategy = LowestLatency(self.members, rng, policy.latency_buffer)
        else:
            self.strategy = STRATEGIES[policy.strategy](self.members, rng)
        # Filled in by the router once every group exists: (group, rest) targets.
        self.fallbacks: tuple[tuple[ModelGroup, str | None], ...] = ()
        self.context_window_fallbacks: tuple[tuple[ModelGroup, str | None], ...] = ()

    def candidates(self, now: float, tried: Sequence[Member]) -> Sequence[Member]:
        """The deployments that may take the next attempt: not cooling down, and not tried yet by this request
        when another one is left (then the tried ones, for a retry on the same deployment)."""
        members = self.members
        if not tried:
            for m in members:
                if m.breaker.open_until:
                    break
            else:
                return members  # the hot path: everything healthy, first attempt
        available = [m for m in members if m.breaker.available(now)]
        if tried and available:
            fresh = [m for m in available if m not in tried]
            if fresh:
                return fresh
        return available

    def retry_in(self, now: float) -> float:
        """Seconds until the first cooling-down deployment of this group may be probed."""
        return min((m.breaker.retry_in(now) for m in self.members), default=0.0)
