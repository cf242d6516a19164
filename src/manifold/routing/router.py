"""Public model names → deployments: choose one, retry, fail over, cool down (docs/routing.md).

One request, as the router runs it::

    resolve the name (exact group, alias, wildcard)  →  group, then its fallback chain, in order
    per group, up to 1 + num_retries attempts:
        candidates = deployments not cooling down (untried first) → the strategy picks one
        take a concurrency slot (or wait in its bounded queue; full → 429)
        call it; on failure, by verdict (retry.py):
            RETRY           breaker counts it; next attempt: another deployment at once, or the same one after
                            backoff / its Retry-After (longer than max_retry_after: not again)
            SWITCH          breaker opens at once (401/403, logged loudly); another deployment
            CONTEXT_WINDOW  straight to the context-window fallback chain
            FATAL           the client's answer
    nothing left → the last error (or 503 when every deployment was cooling down)

A stream counts as answered once its first chunk arrived: until then a failure is retried like any other (the
client has been sent nothing but keep-alive comments); after it, a failure ends the stream with an error event.

Endpoints call `execute` (one JSON answer) or `execute_stream` with an operation `(provider, call) -> awaitable`,
so every endpoint shares the same machinery; `chat` and `open_chat_stream` are those for chat completions.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, Protocol, TypeVar

from manifold.access import model_access
from manifold.access.principal import CURRENT_PRINCIPAL, Principal
from manifold.config import DeploymentBase, RouterSettings
from manifold.errors import (
    GatewayTimeoutError,
    ManifoldError,
    ModelNotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)
from manifold.observability import metrics as m
from manifold.observability.record import CURRENT
from manifold.observability.record import RequestRecord as RecordT
from manifold.observability.tracing import Tracing
from manifold.providers.base import Call, ChunkStream, Provider
from manifold.providers.registry import create_provider
from manifold.providers.upstream_http import take_resends
from manifold.routing.addressing import NameTable
from manifold.routing.fallback import CLIENT_FALLBACKS_FIELD, FallbackPlan, client_fallbacks
from manifold.routing.group import Member, ModelGroup, Policy
from manifold.routing.health import QueueFullError
from manifold.routing.retry import Verdict, backoff_delay, classify

__all__ = [
    "Admission",
    "Attempt",
    "ModelGroup",
    "Report",
    "Router",
    "StreamAttempt",
    "completions",
    "embeddings",
    "images",
    "open_completions_stream",
]

log = logging.getLogger("manifold.router")

T = TypeVar("T")
Attempt = Callable[[Provider, Call], Awaitable[T]]
StreamAttempt = Callable[[Provider, Call], Awaitable[AsyncIterator[T]]]
Report = Callable[[str, str], None]  # (header name, value): e.g. Request.add_response_header
Target = tuple[ModelGroup, str | None]

DEPLOYMENT_HEADER: Final = "x-manifold-deployment"
ATTEMPTS_HEADER: Final = "x-manifold-attempts"
_ATTEMPTS = tuple(str(i) for i in range(64))
_STATUS_NAMES = {status: str(status) for status in range(400, 600)}
_sleep = asyncio.sleep  # the tests replace it to see the waits
# The deployment that answered a non-streamed request (for its price), set only when there is an admission.
_ANSWERED: Final[contextvars.ContextVar[Member | None]] = contextvars.ContextVar("manifold_answered", default=None)
_background: set[asyncio.Task[None]] = set()


def _in_background(done: Awaitable[None]) -> None:
    task = asyncio.ensure_future(done)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _with_stream_usage(call: Call) -> Call:
    """An admitted stream asks its upstream for the usage chunk (its tokens and cost are counted); the endpoint's
    shaper drops that chunk when the client did not ask for it."""
    body = call.body
    if "messages" not in body and "prompt" not in body:
        return call
    options = body.get("stream_options")
    if isinstance(options, dict) and options.get("include_usage") is True:
        return call
    copy = Call(
        {**body, "stream_options": {**(options if isinstance(options, dict) else {}), "include_usage": True}},
        call.public_model,
        call.request_id,
        call.stream,
    )
    copy.route = call.route
    return copy


def _stream_end(
    admission: Admission, ticket: Any, member: Member, upstream_model: str | None
) -> Callable[[Any], Awaitable[None] | None]:
    dep = member.provider.deployment

    def ended(usage: Any) -> Awaitable[None] | None:
        if ticket is None:  # nothing to release: only the cost, for the record
            admission.price(dep, usage, upstream_model, None)
            return None
        return admission.finish(ticket, dep, usage, upstream_model, None)

    return ended


class Admission(Protocol):
    """The router's admission hook (implemented by access/limits.py, wired by the app): `admit` checks and counts
    the request's limits once its model group is known (raises the 429; returns a ticket, or None when nothing
    is counted); `finish` is called once when it ends, with the deployment that answered and the usage (None
    when it failed), to price it and release what `admit` took; what it returns, when not None, is awaited
    (None: it is done already, nothing to wait for)."""

    def admit(
        self, group: str, body: dict[str, Any], request_id: str, streaming: bool, report: Report | None
    ) -> Awaitable[Any]: ...

    def finish(
        self, ticket: Any, dep: DeploymentBase | None, usage: Any, upstream_model: str | None, report: Report | None
    ) -> Awaitable[None] | None: ...

    def price(self, dep: DeploymentBase | None, usage: Any, upstream_model: str | None, report: Report | None) -> int:
        """Only the cost (header, record) of a request `admit` counted nothing for."""
        ...


class _Nothing:
    pass


_NOTHING: Final = _Nothing()  # an empty stream's "first chunk"


def _chat(provider: Provider, call: Call) -> Awaitable[dict[str, Any]]:
    return provider.chat(call)


def _open_chat_stream(provider: Provider, call: Call) -> Awaitable[ChunkStream]:
    return provider.open_chat_stream(call)


# The operations of the other endpoints, for `execute` / `execute_stream` (module-level: nothing per request).
def completions(provider: Provider, call: Call) -> Awaitable[dict[str, Any]]:
    return provider.completions(call)


def open_completions_stream(provider: Provider, call: Call) -> Awaitable[ChunkStream]:
    return provider.open_completions_stream(call)


def embeddings(provider: Provider, call: Call) -> Awaitable[dict[str, Any]]:
    return provider.embeddings(call)


def images(provider: Provider, call: Call) -> Awaitable[dict[str, Any]]:
    return provider.images(call)


# gen_ai.operation.name of each operation; an operation not listed (the Responses engine's own) counts as chat.
_OPERATION_NAMES: Final[dict[Callable[..., Any], str]] = {
    _chat: m.CHAT,
    _open_chat_stream: m.CHAT,
    completions: m.TEXT_COMPLETION,
    open_completions_stream: m.TEXT_COMPLETION,
    embeddings: m.EMBEDDINGS,
    images: m.GENERATE_CONTENT,
}


class Router:
    """`deployments` are served by the providers `factory` makes of them, or by `providers` when given (one per
    deployment, in order). One provider may serve several deployments (names): it is started, probed and
    closed once."""

    def __init__(
        self,
        deployments: Sequence[DeploymentBase],
        factory: Callable[[DeploymentBase], Provider] = create_provider,
        settings: RouterSettings | None = None,
        rng: random.Random | None = None,
        *,
        providers: Sequence[Provider] | None = None,
        admission: Admission | None = None,
    ) -> None:
        settings = settings if settings is not None else RouterSettings()
        self.admission = admission
        self.settings = settings
        created = int(time.time())
        if providers is None:
            providers = [factory(dep) for dep in deployments]
        elif len(providers) != len(deployments):
            raise ValueError(f"{len(providers)} providers for {len(deployments)} deployments: give one for each")
        by_name: dict[str, list[Provider]] = {}
        for dep, provider in zip(deployments, providers, strict=True):
            by_name.setdefault(dep.model_name, []).append(provider)
        self.providers: list[Provider] = list({id(p): p for p in providers}.values())
        self.groups = {
            name: ModelGroup(name, ps, created, Policy(settings, settings.groups.get(name)), rng)
            for name, ps in by_name.items()
        }
        self.aliases = dict(settings.model_alias)
        self.table: NameTable[ModelGroup] = NameTable(self.groups, self.aliases)
        for group in self.groups.values():
            group.fallbacks = self._chain(group, group.policy.fallbacks)
            group.context_window_fallbacks = self._chain(group, group.policy.context_window_fallbacks)
        self.tracing: Tracing | None = None

    def observe(self, metrics: bool, tracing: Tracing | None = None) -> None:
        """Export each deployment's metrics (docs/observability.md) and trace each upstream attempt."""
        self.tracing = tracing
        if metrics:
            for group in self.groups.values():
                for member in group.members:
                    dep = member.provider.deployment
                    member.attach(m.DeploymentMetrics(member.label, group.name, dep.provider, dep.upstream_model))

    def _chain(self, group: ModelGroup, names: list[str]) -> tuple[Target, ...]:
        """The fallback targets, in order, without the group itself and repeats. A name that resolves to nothing
        is a config problem `manifold.validation.validate` reports (the router does not check it again)."""
        chain: list[Target] = []
        for name in names:
            target = self.table.resolve(name)
            if target is not None and target != (group, None) and target not in chain:
                chain.append(target)
        return tuple(chain)

    # -- names ---------------------------------------------------------------------------------------------------

    def resolve(self, model: str) -> Target:
        """The group (and wildcard rest) for `model`; 404 model_not_found when no group serves it or when the
        request's key may not use it (the same answer: nothing revealed, docs/access.md)."""
        found = self.table.resolve(model)
        if found is None:
            raise _model_not_found(model)
        principal = CURRENT_PRINCIPAL.get()
        if principal is not None and not self.allows(principal, model, found[0].name):
            raise _model_not_found(model)
        return found

    def allows(self, principal: Principal, model: str, group: str) -> bool:
        """Whether `principal` may use the name `model` (of the group named `group`)."""
        if principal.models is None and principal.team_models is None:
            return True
        return model_access.allowed(principal, model, group, self._exact_group)

    def _exact_group(self, name: str) -> str | None:
        found = self.table.resolve(name)
        return found[0].name if found is not None and found[1] is None else None

    def _resolve_allowed(self, model: str) -> Target | None:
        """`table.resolve` for names a client sends besides `model` (client fallbacks): None when not allowed."""
        found = self.table.resolve(model)
        principal = CURRENT_PRINCIPAL.get()
        if found is not None and principal is not None and not self.allows(principal, model, found[0].name):
            return None
        return found

    def group(self, model: str) -> ModelGroup:
        return self.resolve(model)[0]

    def listed_models(self) -> list[tuple[str, ModelGroup]]:
        """What GET /models shows: every group with a plain name, then every alias (wildcard groups are patterns,
        not models: they are found by GET /models/{name} instead)."""
        out = [(name, g) for name, g in self.groups.items() if not g.is_wildcard]
        for alias in self.aliases:
            target = self.table.resolve(alias)
            if target is not None:
                out.append((alias, target[0]))
        principal = CURRENT_PRINCIPAL.get()
        if principal is not None:  # a key lists only the models it may use
            out = [(name, g) for name, g in out if self.allows(principal, name, g.name)]
        return out

    def pick(self, model: str) -> Provider:
        """One deployment for `model`, without retries (prefer `execute`)."""
        group = self.group(model)
        candidates = group.candidates(time.monotonic(), ()) or group.members
        return group.strategy.pick(candidates, False).provider

    # -- running requests ----------------------------------------------------------------------------------------

    def chat(self, call: Call, report: Report | None = None) -> Awaitable[dict[str, Any]]:
        result: Awaitable[dict[str, Any]] = self._run(call, _chat, report, False)
        return result

    def open_chat_stream(self, call: Call, report: Report | None = None) -> Awaitable[ChunkStream]:
        result: Awaitable[ChunkStream] = self._run(call, _open_chat_stream, report, True)
        return result

    def execute(self, call: Call, operation: Attempt[T], report: Report | None = None) -> Awaitable[T]:
        """Run `operation` on a deployment of `call.public_model`, with retries and fallbacks; `report` gets the
        response headers that say which deployment answered after how many attempts."""
        result: Awaitable[T] = self._run(call, operation, report, False)
        return result

    def execute_stream(
        self, call: Call, operation: StreamAttempt[T], report: Report | None = None
    ) -> Awaitable[AsyncIterator[T]]:
        """Like `execute` for an operation that opens a stream; returns once its first item arrived (failures
        until then are retried), as an iterator that starts with that item."""
        result: Awaitable[AsyncIterator[T]] = self._run(call, operation, report, True)
        return result

    async def _run(self, call: Call, operation: Callable[..., Any], report: Report | None, streaming: bool) -> Any:
        # One coroutine for the whole request, on purpose: every `await` level is paid again each time the
        # request resumes (the public methods above are plain functions that return this coroutine).
        rec = CURRENT.get()
        if rec is not None:
            rec.model = call.public_model
            rec.stream = streaming
        group, rest = self.resolve(call.public_model)
        if rec is not None:
            rec.model_label = group.name  # the group asked for, even when a fallback answers
        chain = group.fallbacks
        if CLIENT_FALLBACKS_FIELD in call.body and group.policy.allow_client_fallbacks:
            chain, call = client_fallbacks(call, self._resolve_allowed)
        admission = self.admission
        if admission is None:
            return await self._attempts(call, operation, report, streaming, group, rest, rec, chain, None)
        ticket = await admission.admit(group.name, call.body, call.request_id, streaming, report)
        if ticket is not None and streaming:
            call = _with_stream_usage(call)
        try:
            result = await self._attempts(call, operation, report, streaming, group, rest, rec, chain, ticket)
        except BaseException as exc:
            if ticket is not None:
                done = admission.finish(ticket, None, None, None, None)
                if done is None:
                    pass
                elif isinstance(exc, asyncio.CancelledError):
                    _in_background(done)
                else:
                    await done
            raise
        if not streaming:
            member = _ANSWERED.get()
            dep = None if member is None else member.provider.deployment
            usage = result.get("usage") if isinstance(result, dict) else None
            if ticket is None:
                admission.price(dep, usage, call.upstream_model, report)
            else:
                done = admission.finish(ticket, dep, usage, call.upstream_model, report)
                if done is not None:
                    await done
        return result

    async def _attempts(
        self,
        call: Call,
        operation: Callable[..., Any],
        report: Report | None,
        streaming: bool,
        group: ModelGroup,
        rest: str | None,
        rec: RecordT | None,
        chain: tuple[Target, ...],
        ticket: Any,
    ) -> Any:
        observed = rec is not None or self.tracing is not None or group.members[0].metrics is not None
        op_name = _OPERATION_NAMES.get(operation, m.CHAT) if observed else m.CHAT
        failed: m.DeploymentMetrics | None = None  # the last failed attempt's, until we know what came next
        attempts = 0
        error: ManifoldError | None = None  # the last failure
        last: Member | None = None  # the last deployment tried
        plan: FallbackPlan[ModelGroup] | None = None
        try:
            while True:
                policy = group.policy
                retries: _Retries | None = None  # made on the first failure: the hot path is one attempt
                context_window = False
                for _ in range(policy.num_retries + 1):
                    now = time.monotonic()
                    choice = _choose(group, retries, now, streaming)
                    if choice is None:
                        if error is None:
                            error = _cooling_down(group, now)
                        break
                    member, delay = choice
                    if failed is not None:
                        failed.retried.inc()
                        failed = None
                    if delay > 0:
                        await _sleep(delay)
                        now = time.monotonic()
                    limit = member.limit
                    if limit.has_room():
                        limit.in_flight += 1
                        if limit.gauge is not None:
                            limit.gauge.inc()
                    else:
                        try:
                            await limit.acquire()
                        except QueueFullError as exc:
                            if error is None:
                                error = exc
                            break
                        now = time.monotonic()
                    if member.quota is not None:
                        member.quota.take(now)
                    breaker = member.breaker
                    probe = breaker.begin(now) if breaker.open_until else False
                    call.upstream_model = None if rest is None else member.upstream_model(rest)
                    attempts += 1
                    last = member
                    span = None
                    if observed:
                        if rec is not None:
                            rec.attempts = attempts
                            rec.deployment = member.label
                            rec.operation = op_name
                        if self.tracing is not None:
                            span, span_token = self.tracing.start_attempt(
                                op_name,
                                call.public_model,
                                member.provider.deployment.provider,
                                member.label,
                                attempts - 1,
                                call.body,
                            )
                    try:
                        if streaming:
                            result = await _open_and_prime(operation, member.provider, call)
                        else:
                            result = await operation(member.provider, call)
                    except ManifoldError as exc:
                        limit.release()
                        error = exc
                        if retries is None:
                            retries = _Retries()
                        verdict = retries.failed(member, exc, policy, call.request_id, attempts, now)
                        if observed:
                            failed = _attempt_failed(member, op_name, exc, now, rec, span, self.tracing)
                            if span is not None:
                                self.tracing.detach(span_token)  # type: ignore[union-attr]
                        if verdict is Verdict.RETRY or verdict is Verdict.SWITCH:
                            continue
                        if probe:
                            breaker.success()  # it answered: the request was at fault, not the deployment
                        if verdict is not Verdict.CONTEXT_WINDOW:
                            raise
                        context_window = True
                        break
                    except BaseException as exc:
                        limit.release()
                        if probe:
                            breaker.abandon()
                        if observed:
                            _attempt_failed(member, op_name, exc, now, rec, span, self.tracing)
                            if span is not None:
                                self.tracing.detach(span_token)  # type: ignore[union-attr]
                        raise
                    _succeeded(member, policy, call.request_id, attempts, now, streaming)
                    if report is not None:
                        _report(report, member, attempts)
                    if streaming:
                        relay: _Relay
                        if observed:
                            if span is not None:
                                self.tracing.detach(span_token)  # type: ignore[union-attr]
                            relay = _ObservedRelay(
                                result[0], result[1], member, call.request_id, op_name, now, rec, span, self.tracing
                            )
                        else:
                            relay = _Relay(result[0], result[1], member, call.request_id)
                        if self.admission is not None:
                            relay.on_end = _stream_end(self.admission, ticket, member, call.upstream_model)
                        return relay
                    if self.admission is not None:
                        _ANSWERED.set(member)
                    if member.quota is not None and isinstance(result, dict):
                        member.quota.add_tokens(time.monotonic(), _usage_total(result.get("usage")))
                    if observed:
                        _attempt_answered(member, op_name, now, result, rec, span, self.tracing)
                        if span is not None:
                            self.tracing.detach(span_token)  # type: ignore[union-attr]
                    return result
                if plan is None:
                    plan = FallbackPlan((group, rest), chain, group.context_window_fallbacks)
                target = plan.next(context_window)
                if target is None:
                    assert error is not None
                    raise error
                if failed is not None:
                    failed.failed_over.inc()
                    failed = None
                group, rest = target
                if log.isEnabledFor(logging.INFO):
                    log.info("request %s: falling back to %r", call.request_id, group.name)
        except ManifoldError as exc:
            if failed is not None:
                failed.failed.inc()
            if rec is not None:
                rec.error_type = _error_type(exc)
            if report is not None:
                _report(report, last, attempts)
            raise
        finally:
            # The failure raised carries a traceback through this frame, whose `error` would hold it back: a
            # reference cycle keeping the whole request (its scope, the server's connection state) alive until
            # the cyclic collector ran.
            error = None

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.gather(*(p.start() for p in self.providers))

    async def aclose(self) -> None:
        await asyncio.gather(*(p.aclose() for p in self.providers), return_exceptions=True)

    async def readiness(self, probe_timeout: float = 5.0) -> list[tuple[Provider, bool]]:
        async def probe(p: Provider) -> bool:
            try:
                return await asyncio.wait_for(p.ready(), probe_timeout)
            except TimeoutError:
                return False

        results = await asyncio.gather(*(probe(p) for p in self.providers))
        return list(zip(self.providers, results, strict=True))


class _Retries:
    """One request's failures within one group: which deployments were tried, which not to try again, and when
    each may be retried."""

    __slots__ = ("retry_at", "spent", "tried")

    def __init__(self) -> None:
        self.tried: list[Member] = []
        self.spent: list[Member] = []
        self.retry_at: dict[Member, float] = {}

    def candidates(self, group: ModelGroup, now: float) -> Sequence[Member]:
        candidates = group.candidates(now, self.tried)
        if self.spent:
            candidates = [m for m in candidates if m not in self.spent]
        return candidates

    def earliest(self, candidates: Sequence[Member], now: float) -> tuple[Member, float]:
        member = min(candidates, key=self.retry_at.__getitem__)
        return member, self.retry_at[member] - now

    def failed(
        self, member: Member, exc: ManifoldError, policy: Policy, request_id: str, attempt: int, started: float
    ) -> Verdict:
        at = time.monotonic()
        verdict = classify(exc)
        _log_failure(request_id, attempt, member, exc, verdict, at - started)
        if verdict is Verdict.RETRY:
            breaker = member.breaker
            if breaker.failure(at):
                log.warning(
                    "deployment %s: cooling down for %g s after repeated failures", member.label, breaker.cooldown_time
                )
            wait = exc.retry_after
            if wait is not None and wait > policy.max_retry_after:
                self.spent.append(member)  # it asked for longer than we wait
            else:
                if wait is None:
                    wait = backoff_delay(self.tried.count(member) + 1, policy.retry_backoff, policy.retry_backoff_max)
                self.retry_at[member] = at + wait
            self.tried.append(member)
        elif verdict is Verdict.SWITCH:
            breaker = member.breaker
            if breaker.trip(at):
                log.error(
                    "deployment %s: the upstream refused our credentials (status %d%s); cooling it down for %g s. "
                    "Check this deployment's api_key and headers.",
                    member.label,
                    exc.status_code,
                    f", code {exc.code}" if exc.code else "",
                    breaker.cooldown_time,
                )
            self.spent.append(member)
            self.tried.append(member)
        return verdict


def _choose(group: ModelGroup, retries: _Retries | None, now: float, streaming: bool) -> tuple[Member, float] | None:
    """The deployment for the next attempt and how long to wait before it; None when none can take it."""
    candidates = group.candidates(now, ()) if retries is None else retries.candidates(group, now)
    if not candidates:
        return None
    if group.quotas:
        candidates = _within_quota(group, candidates, now)
    if group.limited:
        candidates = _with_room(candidates)
    if retries is not None and candidates[0] in retries.tried:
        # Everything left was tried already: the one that may be retried first, after its wait.
        return retries.earliest(candidates, now)
    return group.strategy.pick(candidates, streaming), 0.0


def _report(report: Report, member: Member | None, attempts: int) -> None:
    attempts += take_resends()  # a transport that sent the request again on a fresh connection: one more
    if member is not None:
        report(DEPLOYMENT_HEADER, member.label)
    report(ATTEMPTS_HEADER, _ATTEMPTS[attempts] if attempts < len(_ATTEMPTS) else str(attempts))


def _succeeded(member: Member, policy: Policy, request_id: str, attempts: int, started: float, streaming: bool) -> None:
    elapsed = time.monotonic() - started
    if not streaming:
        member.limit.release()  # a stream keeps its slot until it ends (_Relay)
    breaker = member.breaker
    if breaker.open_until or breaker.failures:
        breaker.success()
    if policy.measures_latency:
        member.observe(elapsed, streaming, policy.latency_alpha)
    if attempts > 1:
        if log.isEnabledFor(logging.INFO):
            log.info(
                "request %s: attempt %d on %s succeeded (%.1f ms)",
                request_id,
                attempts,
                member.label,
                elapsed * 1000,
            )
    elif log.isEnabledFor(logging.DEBUG):
        log.debug("request %s: %s answered (%.1f ms)", request_id, member.label, elapsed * 1000)


def _usage_total(usage: Any) -> int:
    given, made = m.usage_tokens(usage)
    return (given or 0) + (made or 0)


def _within_quota(group: ModelGroup, candidates: Sequence[Member], now: float) -> Sequence[Member]:
    """The deployments under their own rpm/tpm; when none is, the 429 (with the wait until one has room)."""
    roomy = [c for c in candidates if c.quota is None or c.quota.has_room(now)]
    if roomy:
        return roomy
    wait = min(c.quota.room_in(now) for c in candidates if c.quota is not None)
    m.count_refusal("quota", "deployment")  # a deployment's own rpm/tpm (model_list)
    raise RateLimitError(
        f"Rate limit reached for the model `{group.name}`: every deployment is at its requests or tokens per "
        f"minute quota. Please try again in {max(1, int(wait + 0.999))}s.",
        headers={"retry-after": str(max(1, int(wait + 0.999)))},
    )


def _with_room(candidates: Sequence[Member]) -> Sequence[Member]:
    """Deployments under their concurrency limit; else those whose queue has a place (else all: the pick's
    acquire answers 429)."""
    roomy = [m for m in candidates if m.limit.has_room()]
    if roomy:
        return candidates if len(roomy) == len(candidates) else roomy
    queued = [m for m in candidates if m.limit.can_queue()]
    return queued or candidates


def _model_not_found(model: str) -> ModelNotFoundError:
    return ModelNotFoundError(f"The model `{model}` does not exist or you do not have access to it.", param="model")


def _cooling_down(group: ModelGroup, now: float) -> ServiceUnavailableError:
    wait = max(1, int(group.retry_in(now) + 0.999))
    return ServiceUnavailableError(
        f"No deployment of the model `{group.name}` can take the request now: all are cooling down after "
        "failures. Please retry later.",
        headers={"retry-after": str(wait)},
    )


async def _open_and_prime(operation: Callable[..., Any], provider: Provider, call: Call) -> tuple[Any, Any]:
    stream = await operation(provider, call)
    try:
        first = await anext(stream)
    except StopAsyncIteration:
        first = _NOTHING
    except BaseException:
        await _aclose(stream)
        raise
    return stream, first


async def _aclose(stream: Any) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def _log_failure(
    request_id: str, attempt: int, member: Member, exc: ManifoldError, verdict: Verdict, elapsed: float
) -> None:
    if not log.isEnabledFor(logging.WARNING):
        return
    status = exc.upstream_status or exc.status_code
    log.warning(
        "request %s: attempt %d on %s failed: %d %s (%.1f ms, %s): %s",
        request_id,
        attempt,
        member.label,
        status,
        exc.code or type(exc).__name__,
        elapsed * 1000,
        verdict.value,
        exc.message,
    )


def _error_type(exc: BaseException) -> str:
    """error.type, from a fixed set: `timeout`, the upstream's HTTP status, Manifold's error type."""
    if isinstance(exc, GatewayTimeoutError):
        return "timeout"
    if isinstance(exc, ManifoldError):
        status = exc.upstream_status
        return exc.type if status is None else _STATUS_NAMES.get(status) or str(status)
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    return type(exc).__name__


def _attempt_failed(
    member: Member,
    operation: str,
    exc: BaseException,
    started: float,
    rec: RecordT | None,
    span: Any,
    tracing: Tracing | None,
) -> m.DeploymentMetrics | None:
    """Count a failed attempt. A timeout or a cancel is counted now; any other failure is returned, to be
    counted once the router knows what came of it (retried, failed over, failed)."""
    elapsed = time.monotonic() - started
    if rec is not None:
        rec.upstream_seconds += elapsed
    error_type = _error_type(exc)
    if span is not None:
        assert tracing is not None
        tracing.end_attempt(span, None, error_type, None)
    mm = member.metrics
    if mm is None:
        return None
    mm.operation(operation).failed(error_type, elapsed)
    mm.sync_breaker(member.breaker)
    if isinstance(exc, GatewayTimeoutError):
        mm.timed_out.inc()
        return None
    if not isinstance(exc, ManifoldError):
        (mm.cancelled if isinstance(exc, asyncio.CancelledError) else mm.failed).inc()
        return None
    return mm


def _attempt_answered(
    member: Member, operation: str, started: float, result: Any, rec: RecordT | None, span: Any, tracing: Tracing | None
) -> None:
    elapsed = time.monotonic() - started
    usage = result.get("usage") if isinstance(result, dict) else None
    if span is not None:
        assert tracing is not None
        tracing.end_attempt(span, usage, None, member.provider.deployment.upstream_model, result)
    given, made = m.usage_tokens(usage)
    mm = member.metrics
    if mm is not None:
        mm.ok.n += 1.0  # Buffered.inc without the call
        ops = mm.ops.get(operation) or mm.operation(operation)
        ops.duration.observe(elapsed)
        if given is not None:
            ops.input_tokens.observe(given)
        if made is not None:
            ops.output_tokens.observe(made)
        if mm.breaker_state:
            mm.sync_breaker(member.breaker)
    if rec is not None:
        rec.upstream_seconds += elapsed
        rec.input_tokens = given
        rec.output_tokens = made
        rec.usage = usage


class _Relay:
    """The stream handed to the endpoint: the primed first item, then the rest. It holds the deployment's
    concurrency slot until the stream ends (or is closed), and a failure after the first item counts against
    the deployment's breaker.

    Iterating it iterates an async generator (`aiter(relay)`), whose per-item step is native code; `buffered`
    is the inner stream's own method. `aclose()` releases the slot even if iteration never began."""

    __slots__ = ("_items", "_member", "_quota", "_request_id", "_stream", "buffered", "on_end")

    def __init__(self, stream: Any, first: Any, member: Member, request_id: str) -> None:
        self._stream = stream
        self._member: Member | None = member
        self._request_id = request_id
        self._quota = member.quota
        # Awaited once with the last item's usage (None without one) when the stream ends: the admission's end
        # (before the stream's end reaches the client, so that its next request sees this one's spend).
        self.on_end: Callable[[Any], Awaitable[None] | None] | None = None
        # Whether the next item has arrived already (the server then batches its writes).
        self.buffered: Callable[[], bool] | None = getattr(stream, "buffered", None)
        self._items = self._relay(first)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._items

    def __anext__(self) -> Awaitable[Any]:
        return self._items.__anext__()

    async def _relay(self, first: Any) -> AsyncGenerator[Any, None]:
        last: Any = None
        try:
            if first is _NOTHING:
                return
            last = first
            yield first
            async for item in self._stream:
                last = item
                yield item
        except ManifoldError as exc:
            self._failed(exc)
            raise
        finally:
            self._finish()
            await self._end(last)

    async def _end(self, last: Any) -> None:
        quota = self._quota
        if quota is not None and isinstance(last, dict):
            self._quota = None
            quota.add_tokens(time.monotonic(), _usage_total(last.get("usage")))
        on_end = self.on_end
        if on_end is not None:
            self.on_end = None
            done = on_end(last.get("usage") if isinstance(last, dict) else None)
            if done is None:
                return
            task = asyncio.ensure_future(done)
            _background.add(task)
            task.add_done_callback(_background.discard)
            await asyncio.shield(task)  # a client that leaves meanwhile does not stop the release

    def _failed(self, exc: ManifoldError) -> None:
        member = self._member
        if member is None:
            return
        self._finish()
        if classify(exc) is Verdict.RETRY and member.breaker.failure(time.monotonic()):
            log.warning("deployment %s: cooling down after repeated failures", member.label)
        log.warning("request %s: the stream from %s failed after its first chunk", self._request_id, member.label)

    def _finish(self) -> None:
        member = self._member
        if member is not None:
            self._member = None
            member.limit.release()

    async def aclose(self) -> None:
        self._finish()
        await self._items.aclose()
        await _aclose(self._stream)
        await self._end(None)  # closed before it was iterated


class _ObservedRelay(_Relay):
    """A `_Relay` that also measures the stream: time to first token (at construction: the first item is
    here), then at its end the outcome, time per output token, tokens per second and the attempt's span. Per
    chunk it only counts (tokens, when the stream sends no usage); the rest is done once, at the end."""

    __slots__ = ("_capture", "_done", "_first_at", "_observed", "_ops", "_rec", "_span", "_started", "_tracing")

    def __init__(
        self,
        stream: Any,
        first: Any,
        member: Member,
        request_id: str,
        operation: str,
        started: float,
        rec: RecordT | None,
        span: Any,
        tracing: Tracing | None,
    ) -> None:
        first_at = time.monotonic()
        ttft = first_at - (rec.start if rec is not None else started)
        if rec is not None:
            rec.ttft = ttft
        self._first_at = first_at
        self._started = started
        self._rec = rec
        self._span = span
        self._tracing = tracing
        self._done = False
        self._capture = None if tracing is None else tracing.capture_stream(span)
        self._observed = member  # `_finish` forgets `_member`; its metrics and breaker are read at the end
        mm = member.metrics
        if mm is None:
            self._ops: m.OperationMetrics | None = None
        else:
            mm.ok.inc()
            self._ops = ops = mm.operation(operation)
            ops.ttft.observe(ttft)
            if mm.breaker_state:
                mm.sync_breaker(member.breaker)
        _Relay.__init__(self, stream, first, member, request_id)

    async def _relay(self, first: Any) -> AsyncGenerator[Any, None]:
        outcome = "client_left"
        error_type: str | None = None
        count = 0
        last: Any = None
        try:
            if first is _NOTHING:
                outcome = "completed"
                return
            count = 1
            last = first
            capture = self._capture
            if capture is None:
                yield first
                async for item in self._stream:
                    count += 1
                    last = item
                    yield item
            else:  # content captured on the attempt's span (tracing.capture_content)
                capture.add(first)
                yield first
                async for item in self._stream:
                    count += 1
                    last = item
                    capture.add(item)
                    yield item
            outcome = "completed"
        except ManifoldError as exc:
            outcome = "upstream_cut"
            error_type = _error_type(exc)
            self._failed(exc)
            raise
        finally:
            self._finish()
            self._ended(outcome, error_type, count, last)
            await self._end(last)

    async def aclose(self) -> None:
        # `_Relay.aclose`'s steps, not a call of it: no second coroutine per stream.
        self._finish()
        await self._items.aclose()
        await _aclose(self._stream)
        await self._end(None)
        if not self._done:  # closed before it was iterated: the generator's `finally` never ran
            self._ended("client_left", None, 0, None)

    def _ended(self, outcome: str, error_type: str | None, count: int, last: Any) -> None:
        self._done = True
        end = time.monotonic()
        usage = last.get("usage") if isinstance(last, dict) else None
        given, made = (None, None) if usage is None else m.usage_tokens(usage)
        took = end - self._started
        rec = self._rec
        if rec is not None:
            rec.upstream_seconds += took
            rec.input_tokens = given
            rec.output_tokens = made
            rec.usage = usage
        member = self._observed
        if self._span is not None:
            assert self._tracing is not None
            capture = self._capture
            result = capture.result() if capture is not None else None
            upstream = member.provider.deployment.upstream_model
            self._tracing.end_attempt(self._span, usage, error_type, upstream, result)
        ops = self._ops
        if ops is None:
            return
        mm = member.metrics
        assert mm is not None
        if error_type is None:
            ops.duration.observe(took)
        else:
            ops.failed(error_type, took)
        if given is not None:
            ops.input_tokens.observe(given)
        if made is not None:
            ops.output_tokens.observe(made)
        if outcome == "completed":
            mm.stream_completed.inc()
            # Without a usage chunk, each chunk after the first counts as one token.
            produced = made if made is not None else count
            streamed = end - self._first_at
            if produced > 1 and streamed > 0:
                ops.tpot.observe(streamed / (produced - 1))
                mm.tokens_per_second.observe((produced - 1) / streamed)
        elif outcome == "upstream_cut":
            mm.stream_upstream_cut.inc()
            mm.sync_breaker(member.breaker)
        else:
            mm.stream_client_left.inc()
