"""Admission: rate limits (requests and tokens per minute, requests in flight) and budgets, per key, per team and
per key and model, checked and counted before a request reaches an upstream (docs/access.md "rate limits").

The router calls `Admission.admit` once the model name is resolved, and `Ticket.finish` when the request ends (a
stream: when it ends or the client leaves). Without a principal (access control off) nothing is counted.

Windows: a sliding window of 60 one-second buckets. A request counts in the bucket of the second it was admitted
and leaves the window 60 s later; `rpm: 100` admits at most 100 requests in any 60 consecutive (whole) seconds.
Tokens: each request reserves an estimate (its prompt's estimated tokens plus its `max_tokens`, or
`DEFAULT_COMPLETION_RESERVE` when it sets none) in its bucket when admitted; at its end the bucket is corrected
to the real usage (a request that failed gives its reservation back). In flight: a set of request ids, each
with a deadline (`IN_FLIGHT_TTL_S`) so that a replica that dies holding slots cannot hold them forever.
Budgets: the spend of the current period (daily, weekly, monthly from the key's creation; none: for ever),
added at each request's end; a request is admitted while the spend is under the budget (requests in flight at
that moment may take it past: the next one is refused).

State lives in process memory (`MemoryCounters`) or, with `redis.url`, in Redis (`access.redis_counters`): one
script (EVALSHA) per request to check and count everything atomically (waited for), one at its end to release
and reconcile (written before the answer's end goes out, not waited for).
The `limits` library's windows cannot correct a past reservation (tokens are known only after the answer), hence
these counters.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, Protocol

import msgspec

from manifold.access.pricing import dollars, prices_for
from manifold.access.principal import CURRENT_PRINCIPAL, Limits, Principal
from manifold.config import DeploymentBase
from manifold.errors import ManifoldError, ServiceUnavailableError
from manifold.observability.metrics import add_spend, count_refusal
from manifold.observability.record import CURRENT

__all__ = [
    "Admission",
    "BudgetExceededError",
    "Counters",
    "MemoryCounters",
    "RateLimitExceededError",
    "Scope",
    "Ticket",
    "format_reset",
]

log = logging.getLogger("manifold.access")

WINDOW_S: Final = 60
DEFAULT_COMPLETION_RESERVE: Final = 1024  # tokens reserved for the answer when a request sets no max_tokens
NEVER_ENDS: Final = 1 << 36  # seconds: a budget without a duration (its period starts at 0 and ends in 4147)
IN_FLIGHT_TTL_S: Final = 3600  # a slot not released by then (its replica died) is freed
COST_HEADER: Final = "x-manifold-cost"
Report = Callable[[str, str], None]


class RateLimitExceededError(ManifoldError):
    """OpenAI's 429 for a rate limit: `type` is `requests` or `tokens` as OpenAI sends it."""

    status = 429
    default_code = "rate_limit_exceeded"

    def __init__(self, message: str, kind: str, headers: dict[str, str]) -> None:
        super().__init__(message, headers=headers)
        self.kind = kind

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["type"] = self.kind
        return body


class BudgetExceededError(ManifoldError):
    status = 429
    type = "insufficient_quota"
    default_code = "insufficient_quota"


@dataclass(frozen=True, slots=True)
class Scope:
    """One set of counters: `name` for messages (`key my-alias`), `id` for storage."""

    name: str
    id: str
    rpm: int | None
    tpm: int | None
    parallel: int | None


@dataclass(frozen=True, slots=True)
class Budget:
    name: str
    id: str  # includes the period: a new period starts from 0
    max_micros: int
    keep_until: int  # unix seconds: how long the period's counter must be kept (its end, plus a minute)

    def ttl_s(self, now: float) -> int:
        return max(1, int(self.keep_until - now))


class Verdict(msgspec.Struct):
    """What the counters answered: `refused` None when admitted. Header facts for the tightest limits. A struct:
    its thirteen defaults are filled in by msgspec's C constructor (a dataclass's `__init__` ran ~40 bytecodes a
    request)."""

    refused: str | None = None  # "requests", "tokens", "parallel", "budget"
    scope: str = ""
    limit: int = 0
    used: int = 0
    requested: int = 0
    retry_after_s: float = 0.0
    second: int = 0  # the admission's bucket
    req_limit: int | None = None
    req_remaining: int = 0
    req_reset_ms: int = 0
    tok_limit: int | None = None
    tok_remaining: int = 0
    tok_reset_ms: int = 0


class Counters(Protocol):
    """Where the counts live (process memory or Redis)."""

    round_trips: int
    failures: tuple[type[BaseException], ...]  # what a failure of the store raises

    def admit(self, scopes: list[Scope], tokens: int, budgets: list[Budget], request_id: str) -> Awaitable[Verdict]: ...

    def release(
        self, scopes: list[Scope], second: int, token_delta: int, budgets: list[Budget], cost: int, request_id: str
    ) -> Awaitable[None] | None:
        """None when it is done already (nothing to wait for)."""

    async def aclose(self) -> None: ...


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: `1s`, `1.5s`, `6m0s`, `1h2m3s`, `120ms` (a wait under a millisecond: `1ms`)."""
    return format_reset_ms(max(1, round(seconds * 1000)) if seconds > 0 else 0)


# The fraction of a second as `format_reset` writes it, by milliseconds: 0 → "", 500 → ".5", 481 → ".481".
_FRACTIONS: Final = tuple("." + f"{ms:03d}".rstrip("0") if ms else "" for ms in range(1000))


def format_reset_ms(ms: int) -> str:
    """`format_reset` of whole milliseconds (what the counters answer): integer arithmetic and a table, where
    formatting a float to three places and stripping it cost twice as much on every answer's reset headers."""
    if ms <= 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        whole, frac = divmod(ms, 1000)
        return f"{whole}{_FRACTIONS[frac]}s"
    h, rest = divmod((ms + 500) // 1000, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m}m{s}s" if h else f"{m}m{s}s"


class _Window:
    """One sliding window of one-second buckets (process memory)."""

    __slots__ = ("buckets",)

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}

    def used(self, now: int) -> int:
        buckets = self.buckets
        floor = now - WINDOW_S
        old = [s for s in buckets if s <= floor]
        for s in old:
            del buckets[s]
        return sum(buckets.values())

    def frees_in(self, now: float, need: int) -> float:
        """Seconds until `need` units have left the window (oldest first)."""
        freed = 0
        for second in sorted(self.buckets):
            freed += self.buckets[second]
            if freed >= need:
                return max(0.0, second + WINDOW_S - now)
        return 0.0

    def empty_in_ms(self, now: float) -> int:
        """Milliseconds until the window is empty (its newest bucket has left)."""
        return max(0, round((max(self.buckets) + WINDOW_S - now) * 1000)) if self.buckets else 0


class MemoryCounters:
    """The counters in process memory (one process: `redis.url` unset)."""

    def __init__(self) -> None:
        self.round_trips = 0
        self.failures: tuple[type[BaseException], ...] = ()
        self._requests: dict[str, _Window] = {}
        self._tokens: dict[str, _Window] = {}
        self._in_flight: dict[str, dict[str, float]] = {}
        self._spend: dict[str, tuple[int, float]] = {}  # budget id → (micros, expires at)

    async def admit(self, scopes: list[Scope], tokens: int, budgets: list[Budget], request_id: str) -> Verdict:
        return self.admit_now(scopes, tokens, budgets, request_id, time.time())

    def admit_now(
        self, scopes: list[Scope], tokens: int, budgets: list[Budget], request_id: str, now: float
    ) -> Verdict:
        second = int(now)
        v = Verdict(second=second)
        for budget in budgets:
            spent = self._spent(budget.id, now)
            if spent >= budget.max_micros:
                v.refused, v.scope, v.limit, v.used = "budget", budget.name, budget.max_micros, spent
                return v
        used_req: list[int] = []
        used_tok: list[int] = []
        for scope in scopes:
            if scope.parallel is not None:
                slots = self._in_flight.get(scope.id)
                held = 0
                if slots:
                    for rid in [r for r, deadline in slots.items() if deadline <= now]:
                        del slots[rid]
                    held = len(slots)
                if held >= scope.parallel:
                    v.refused, v.scope, v.limit, v.used, v.requested = "parallel", scope.name, scope.parallel, held, 1
                    v.retry_after_s = 1.0
                    return v
            r = 0
            if scope.rpm is not None:
                window = self._requests.get(scope.id)
                r = window.used(second) if window is not None else 0
                if r + 1 > scope.rpm:
                    assert window is not None
                    v.refused, v.scope, v.limit, v.used, v.requested = "requests", scope.name, scope.rpm, r, 1
                    v.retry_after_s = window.frees_in(now, r + 1 - scope.rpm)
                    return v
            used_req.append(r)
            t = 0
            if scope.tpm is not None:
                window = self._tokens.get(scope.id)
                t = window.used(second) if window is not None else 0
                if t + tokens > scope.tpm:
                    v.refused, v.scope, v.limit, v.used, v.requested = "tokens", scope.name, scope.tpm, t, tokens
                    v.retry_after_s = (
                        window.frees_in(now, t + tokens - scope.tpm)
                        if window is not None and tokens <= scope.tpm
                        else float(WINDOW_S)
                    )
                    return v
            used_tok.append(t)
        for scope, r, t in zip(scopes, used_req, used_tok, strict=True):
            if scope.parallel is not None:
                self._in_flight.setdefault(scope.id, {})[request_id] = now + IN_FLIGHT_TTL_S
            if scope.rpm is not None:
                window = self._requests.setdefault(scope.id, _Window())
                window.buckets[second] = window.buckets.get(second, 0) + 1
                remaining = scope.rpm - r - 1
                if v.req_limit is None or remaining < v.req_remaining:
                    v.req_limit, v.req_remaining, v.req_reset_ms = scope.rpm, remaining, window.empty_in_ms(now)
            if scope.tpm is not None:
                window = self._tokens.setdefault(scope.id, _Window())
                window.buckets[second] = window.buckets.get(second, 0) + tokens
                remaining = max(0, scope.tpm - t - tokens)
                if v.tok_limit is None or remaining < v.tok_remaining:
                    v.tok_limit, v.tok_remaining, v.tok_reset_ms = scope.tpm, remaining, window.empty_in_ms(now)
        return v

    def _spent(self, budget_id: str, now: float) -> int:
        found = self._spend.get(budget_id)
        if found is None:
            return 0
        if found[1] <= now:
            del self._spend[budget_id]
            return 0
        return found[0]

    def release(
        self, scopes: list[Scope], second: int, token_delta: int, budgets: list[Budget], cost: int, request_id: str
    ) -> None:
        now = time.time()
        for scope in scopes:
            if scope.parallel is not None:
                slots = self._in_flight.get(scope.id)
                if slots is not None:
                    slots.pop(request_id, None)
            if scope.tpm is not None and token_delta:
                window = self._tokens.get(scope.id)
                if window is not None and second in window.buckets:
                    window.buckets[second] = max(0, window.buckets[second] + token_delta)
        if cost:
            for budget in budgets:
                spent = self._spent(budget.id, now)
                self._spend[budget.id] = (spent + cost, float(budget.keep_until))

    async def aclose(self) -> None:
        return None


def period_start(duration: str | None, created_at: int, now: float) -> tuple[int, int]:
    """The current budget period's start (unix seconds) and length, counted from the key's creation."""
    if duration is None:  # one period, for ever (its end beyond any clock this runs on)
        return 0, NEVER_ENDS
    if duration in ("daily", "weekly"):
        length = 86400 if duration == "daily" else 7 * 86400
        start = created_at + (int(now) - created_at) // length * length
        return start, length
    # monthly: on the creation's day of the month (clamped to the month's last day), at its time of day
    made = datetime.fromtimestamp(created_at, UTC)
    today = datetime.fromtimestamp(now, UTC)
    year, month = today.year, today.month
    for _ in range(2):
        day = min(made.day, calendar.monthrange(year, month)[1])
        start_dt = made.replace(year=year, month=month, day=day)
        if start_dt.timestamp() <= now:
            break
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return int(start_dt.timestamp()), 31 * 86400


_PLANS_KEPT: Final = 4096  # principal and model pairs whose plans are kept (the cache starts over past it)


class _Plan(NamedTuple):
    principal: Principal
    scopes: list[Scope]
    budgets: list[Budget]
    valid_until: float  # the first budget period's end
    counts_tokens: bool  # a scope has a tpm


class Ticket:
    """One admitted request: what to release and reconcile at its end."""

    __slots__ = ("_admission", "budgets", "done", "request_id", "reserved", "scopes", "second")

    def __init__(
        self, admission: Admission, scopes: list[Scope], budgets: list[Budget], reserved: int, second: int, rid: str
    ) -> None:
        self._admission = admission
        self.scopes = scopes
        self.budgets = budgets
        self.reserved = reserved
        self.second = second
        self.request_id = rid
        self.done = False


def _total_tokens(usage: dict[str, Any] | None) -> int:
    if not usage:
        return 0
    total = usage.get("total_tokens")
    if isinstance(total, int):
        return total
    given = usage.get("prompt_tokens", usage.get("input_tokens", 0))
    made = usage.get("completion_tokens", usage.get("output_tokens", 0))
    return (given if isinstance(given, int) else 0) + (made if isinstance(made, int) else 0)


def _estimate(body: dict[str, Any]) -> int:
    """A request's tokens to reserve: its prompt at 4 characters a token (3 more per message, as OpenAI counts
    chat formatting; reconciled with the real usage at the end, so a cheap count is enough) plus its output
    limit, or `DEFAULT_COMPLETION_RESERVE`."""
    messages = body.get("messages")
    if isinstance(messages, list):
        chars = 0
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(str(p.get("text") or "")) for p in content if isinstance(p, dict))
        prompt = 3 + 3 * len(messages) + chars // 4
    else:
        given = body.get("prompt", body.get("input"))
        prompt = len(given if isinstance(given, str) else str(given or "")) // 4
    out = body.get("max_completion_tokens") or body.get("max_tokens") or body.get("max_output_tokens")
    return prompt + (out if isinstance(out, int) and out > 0 else DEFAULT_COMPLETION_RESERVE)


class Admission:
    """The router's admission hook (`Router(admission=…)`): limits and budgets of the request's principal, the
    cost of its answer (`x-manifold-cost`, the record's `cost`, the budgets' spend)."""

    def __init__(self, counters: Counters, on_error: str = "open") -> None:
        self.counters = counters
        self.on_error = on_error
        self.errors = 0  # Redis failures met (served or refused by on_error)
        self._plans: dict[tuple[int, str], _Plan] = {}
        if hasattr(counters, "on_release_failed"):  # Redis: releases are written and not waited for
            counters.on_release_failed = self._release_failed

    def scopes(self, p: Principal, group: str) -> list[Scope]:
        out: list[Scope] = []
        key_name = f"key {p.key_alias or p.key_id}"
        key_id = f"k:{p.key_id}"
        _add(out, key_name, key_id, p.key_limits)
        model = p.key_limits.model_limits.get(group)
        if model is not None:
            _add_model(out, f"{key_name}, model {group}", f"{key_id}:m:{group}", model)
        if p.team_limits is not None and p.team_id is not None:
            _add(out, f"team {p.team_alias or p.team_id}", f"t:{p.team_id}", p.team_limits)
        return out

    def budgets(self, p: Principal, now: float) -> list[Budget]:
        out: list[Budget] = []
        for name, sid, lim in (
            (f"key {p.key_alias or p.key_id}", f"k:{p.key_id}", p.key_limits),
            (f"team {p.team_alias or p.team_id}", f"t:{p.team_id}", p.team_limits),
        ):
            if lim is None or lim.max_budget_micros is None:
                continue
            start, length = period_start(lim.budget_duration, p.created_at, now)
            out.append(Budget(name, f"{sid}:{start}", lim.max_budget_micros, start + length + 60))
        return out

    def plan(self, p: Principal, group: str, now: float) -> _Plan:
        """The scopes and budgets of a principal's request to a model group, made once and kept while the
        principal is the same object (a key's cache entry; a changed key is a new one) and its budget periods
        last: names and ids are strings built per key, and a monthly period's start takes calendar arithmetic."""
        cache = self._plans
        found = cache.get((id(p), group))
        if found is not None and found.principal is p and now < found.valid_until:
            return found
        scopes = self.scopes(p, group)
        budgets = self.budgets(p, now)
        valid_until = min((b.keep_until - 60 for b in budgets), default=float("inf"))
        made = _Plan(p, scopes, budgets, valid_until, any(s.tpm is not None for s in scopes))
        if len(cache) >= _PLANS_KEPT:
            cache.clear()
        cache[(id(p), group)] = made
        return made

    async def admit(self, group: str, body: dict[str, Any], request_id: str, streaming: bool, report: Report | None):  # type: ignore[no-untyped-def]
        """None: nothing to count (no principal, or the master key). Else the ticket to finish; raises the 429."""
        p = CURRENT_PRINCIPAL.get()
        if p is None or p.key_id is None:
            return None
        rec = CURRENT.get()
        if rec is not None and p.key_alias:
            rec.key_alias = p.key_alias
        plan = self.plan(p, group, time.time())
        scopes, budgets = plan.scopes, plan.budgets
        if not scopes and not budgets:
            return None
        tokens = _estimate(body) if plan.counts_tokens else 0
        try:
            v = await self.counters.admit(scopes, tokens, budgets, request_id)
        except self.counters.failures as exc:  # Redis unreachable or failing
            self.errors += 1
            if self.on_error == "closed":
                log.error(
                    "request %s: the limits store failed (%s): refused (redis.on_redis_error: closed)",
                    request_id,
                    type(exc).__name__,
                )
                raise ServiceUnavailableError(
                    "The rate limit service is unavailable. Please retry later.", headers={"retry-after": "1"}
                ) from None
            log.error(
                "request %s: the limits store failed (%s): served without limits (redis.on_redis_error: open)",
                request_id,
                type(exc).__name__,
            )
            return None
        headers = _headers(v)
        if v.refused is not None:
            count_refusal(_LIMIT_LABELS.get(v.refused, v.refused), _scope_label(v.scope))
            raise _refusal(v, headers)
        if report is not None:
            for name, value in headers.items():
                report(name, value)
        return Ticket(self, scopes, budgets, tokens, v.second, request_id)

    def price(self, dep: DeploymentBase | None, usage: Any, upstream_model: str | None, report: Report | None) -> int:
        """The answer's cost in micro-dollars: in `x-manifold-cost` (when `report`) and the request's record. A
        deployment whose price is unknown costs 0 against budgets, and carries no cost (not a cost of 0)."""
        if dep is None or not isinstance(usage, dict):
            return 0
        prices = prices_for(dep, upstream_model)
        if prices.source == "unknown":
            return 0  # no price known: no header, and the record (the ledger, the access line) says unknown
        rec = CURRENT.get()
        if rec is not None and rec.usage is usage:  # its tokens read already (the router's `_attempt_answered`)
            cost = prices.cost_of(rec.input_tokens or 0, rec.output_tokens or 0, rec.cached_tokens)
        else:
            cost = prices.cost(usage)
        if report is not None:
            report(COST_HEADER, dollars(cost))
        if rec is not None:
            rec.cost = cost / 1_000_000
            rec.cost_micros = cost
        p = CURRENT_PRINCIPAL.get()
        group = None if rec is None else rec.model_label or None
        if p is None:
            add_spend(None, None, group, cost)
        else:
            add_spend(p.key_alias or p.key_id, p.team_alias or p.team_id, group, cost)
        return cost

    def finish(
        self,
        ticket: Ticket | None,
        dep: DeploymentBase | None,
        usage: Any,
        upstream_model: str | None,
        report: Report | None,
    ) -> Awaitable[None] | None:
        """The request ended: its cost (header when `report`, record), then release and reconcile. Returns what
        is left to await (the counters' round trip, when Redis had to be connected to first), or None when all
        is done or written (counters in process memory, a release written to Redis, or
        nothing to release): the caller then needs no task and no turn of the event loop."""
        cost = self.price(dep, usage, upstream_model, report)
        if ticket is None or ticket.done:
            return None
        ticket.done = True
        delta = (_total_tokens(usage) if isinstance(usage, dict) else 0) - ticket.reserved
        try:
            pending = self.counters.release(
                ticket.scopes, ticket.second, delta, ticket.budgets, cost, ticket.request_id
            )
        except self.counters.failures as exc:
            self._release_failed(ticket.request_id, exc)
            return None
        return None if pending is None else self._released(pending, ticket.request_id)

    async def _released(self, pending: Awaitable[None], request_id: str) -> None:
        try:
            await pending
        except self.counters.failures as exc:
            self._release_failed(request_id, exc)

    def _release_failed(self, request_id: str, exc: BaseException) -> None:
        self.errors += 1
        log.error("request %s: releasing its limits failed (%s)", request_id, type(exc).__name__)

    async def aclose(self) -> None:
        await self.counters.aclose()


def _add(out: list[Scope], name: str, sid: str, lim: Limits) -> None:
    if lim.rpm is not None or lim.tpm is not None or lim.max_parallel_requests is not None:
        out.append(Scope(name, sid, lim.rpm, lim.tpm, lim.max_parallel_requests))


def _add_model(out: list[Scope], name: str, sid: str, lim: Any) -> None:
    if lim.rpm is not None or lim.tpm is not None or lim.max_parallel_requests is not None:
        out.append(Scope(name, sid, lim.rpm, lim.tpm, lim.max_parallel_requests))


def _headers(v: Verdict) -> dict[str, str]:
    h: dict[str, str] = {}
    reset = None
    if v.req_limit is not None:
        reset = format_reset_ms(v.req_reset_ms)
        h["x-ratelimit-limit-requests"] = str(v.req_limit)
        left = v.req_remaining
        h["x-ratelimit-remaining-requests"] = str(left) if left > 0 else "0"
        h["x-ratelimit-reset-requests"] = reset
    if v.tok_limit is not None:
        h["x-ratelimit-limit-tokens"] = str(v.tok_limit)
        left = v.tok_remaining
        h["x-ratelimit-remaining-tokens"] = str(left) if left > 0 else "0"
        # Both windows are a minute long and counted at the same instant: the two resets are mostly one.
        if reset is None or v.tok_reset_ms != v.req_reset_ms:
            reset = format_reset_ms(v.tok_reset_ms)
        h["x-ratelimit-reset-tokens"] = reset
    return h


# The refusal metric's labels (observability/metrics.py LIMITS, SCOPES).
_LIMIT_LABELS: Final = {"requests": "rpm", "tokens": "tpm", "parallel": "max_parallel_requests", "budget": "budget"}


def _scope_label(name: str) -> str:
    """`key a` → key, `key a, model m` → key_model, `team t` → team."""
    if name.startswith("team "):
        return "team"
    return "key_model" if ", model " in name else "key"


_KINDS: Final = {"requests": "requests per minute", "tokens": "tokens per minute", "parallel": "requests in flight"}


def _refusal(v: Verdict, headers: dict[str, str]) -> ManifoldError:
    if v.refused == "budget":
        return BudgetExceededError(
            f"You exceeded your current quota ({v.scope}: budget ${dollars(v.limit)}, spent ${dollars(v.used)}), "
            "please check your plan and billing details."
        )
    wait = max(1, int(v.retry_after_s + 0.999))
    if v.refused == "requests":
        headers.setdefault("x-ratelimit-limit-requests", str(v.limit))
        headers["x-ratelimit-remaining-requests"] = "0"
        headers["x-ratelimit-reset-requests"] = format_reset(v.retry_after_s)
    elif v.refused == "tokens":
        headers.setdefault("x-ratelimit-limit-tokens", str(v.limit))
        headers["x-ratelimit-remaining-tokens"] = str(max(0, v.limit - v.used))
        headers["x-ratelimit-reset-tokens"] = format_reset(v.retry_after_s)
    headers["retry-after"] = str(wait)
    kind = "tokens" if v.refused == "tokens" else "requests"
    return RateLimitExceededError(
        f"Rate limit reached for {_KINDS[v.refused or 'requests']} ({v.scope}): Limit {v.limit}, Used {v.used}, "
        f"Requested {v.requested}. Please try again in {format_reset(v.retry_after_s)}.",
        kind,
        headers,
    )
