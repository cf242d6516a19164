"""The router in-process, over scripted providers: which deployment each attempt goes to, how many attempts, the
waits between them, fallbacks, cooldowns, limits and streams. The end-to-end twin is tests/e2e/test_router.py."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest

from manifold.config import Deployment, GroupSettings, RouterSettings
from manifold.errors import (
    BadGatewayError,
    GatewayTimeoutError,
    InvalidRequestError,
    ManifoldError,
    ModelNotFoundError,
    RateLimitError,
    ServiceUnavailableError,
)
from manifold.providers.base import Call, Provider
from manifold.providers.upstream_http import error_from_upstream
from manifold.routing import router as router_module
from manifold.routing.router import Router
from manifold.validation import parse_config, validate

Step = Any  # "ok", an exception, or for streams a list of chunks/exceptions


def failed(status: int, retry_after: str | None = None, code: str | None = None) -> ManifoldError:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    body = b'{"error": {"message": "boom", "code": %s}}' % (f'"{code}"'.encode() if code else b"null")
    return error_from_upstream(status, body, headers, "'m'")


class Scripted(Provider):
    """Answers each call with the next step of its script (the last step repeats)."""

    def __init__(self, deployment: Deployment, script: list[Step], log: list[tuple[str, Call]]) -> None:
        super().__init__(deployment)
        self.script = list(script)
        self.log = log
        self.gate: asyncio.Event | None = None

    def _next(self, call: Call) -> Step:
        label = self.deployment.id or ""
        self.log.append((label, call))
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    async def chat(self, call: Call) -> dict[str, Any]:
        step = self._next(call)
        if self.gate is not None:
            await self.gate.wait()
        if isinstance(step, BaseException):
            raise step
        return {"answer": self.deployment.id, "upstream_model": call.upstream_model}

    async def open_chat_stream(self, call: Call) -> AsyncIterator[dict[str, Any]]:
        step = self._next(call)
        if isinstance(step, BaseException):
            raise step
        return _chunks(step if isinstance(step, list) else [{"n": 0}, {"n": 1}])


async def _chunks(items: list[Any]) -> AsyncIterator[dict[str, Any]]:
    for item in items:
        if isinstance(item, BaseException):
            raise item
        yield item


class Setup:
    def __init__(self, scripts: dict[str, list[Step]], deployments: list[dict[str, Any]], **router: Any) -> None:
        self.calls: list[tuple[str, Call]] = []
        self.headers: dict[str, str] = {}
        self.sleeps: list[float] = []
        config = parse_config({"model_list": deployments, "router": {"retry_backoff": 0.01, **router}}, environ={})
        self.providers: dict[str, Scripted] = {}

        def factory(dep: Deployment) -> Provider:
            p = Scripted(dep, scripts.get(dep.id or "", ["ok"]), self.calls)
            self.providers[dep.id or ""] = p
            return p

        self.router = Router(config.model_list, factory, config.router, random.Random(0))

    def report(self, name: str, value: str) -> None:
        self.headers[name] = value

    def call(self, model: str, body: dict[str, Any] | None = None, stream: bool = False) -> Call:
        return Call(body if body is not None else {"model": model, "messages": []}, model, "req_1", stream)

    async def chat(self, model: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        self.headers.clear()
        self.calls.clear()
        return await self.router.chat(self.call(model, body), self.report)

    @property
    def order(self) -> list[str]:
        return [label for label, _ in self.calls]


def dep(model_name: str, id: str, **extra: Any) -> dict[str, Any]:
    return {"model_name": model_name, "provider": "openai", "api_base": "http://127.0.0.1:9/v1", "id": id, **extra}


@pytest.fixture(autouse=True)
def recorded_sleeps(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[float]]:
    sleeps: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay: float) -> None:
        sleeps.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(router_module, "_sleep", sleep)
    yield sleeps


# -- retries ---------------------------------------------------------------------------------------------------


async def test_a_retry_goes_to_another_deployment_at_once(recorded_sleeps: list[float]) -> None:
    s = Setup({"a": [failed(500)]}, [dep("m", "a"), dep("m", "b")], strategy="round_robin")
    assert (await s.chat("m"))["answer"] == "b"
    assert s.order == ["a", "b"] and recorded_sleeps == []
    assert s.headers == {"x-manifold-deployment": "b", "x-manifold-attempts": "2"}


async def test_retries_on_one_deployment_back_off(recorded_sleeps: list[float]) -> None:
    s = Setup({"a": [failed(503), GatewayTimeoutError("slow"), "ok"]}, [dep("m", "a")], retry_backoff=0.2)
    assert (await s.chat("m"))["answer"] == "a"
    assert s.order == ["a", "a", "a"] and s.headers["x-manifold-attempts"] == "3"
    assert len(recorded_sleeps) == 2
    assert 0.09 <= recorded_sleeps[0] <= 0.2 and 0.19 <= recorded_sleeps[1] <= 0.4  # 0.2·2^k, jittered


async def test_retry_after_is_honoured_up_to_max_retry_after(recorded_sleeps: list[float]) -> None:
    s = Setup({"a": [failed(429, "0.7"), "ok"]}, [dep("m", "a")])
    await s.chat("m")
    assert s.order == ["a", "a"] and len(recorded_sleeps) == 1 and 0.6 < recorded_sleeps[0] <= 0.7
    s = Setup({"a": [failed(429, "30"), "ok"]}, [dep("m", "a")], max_retry_after=5)
    with pytest.raises(ManifoldError) as info:
        await s.chat("m")
    assert info.value.status_code == 429 and info.value.headers["retry-after"] == "30"
    assert s.order == ["a"]  # it asked for longer than we wait: not retried


async def test_attempts_are_bounded_by_num_retries() -> None:
    s = Setup({"a": [failed(500)], "b": [failed(502)]}, [dep("m", "a"), dep("m", "b")], num_retries=3)
    with pytest.raises(BadGatewayError):
        await s.chat("m")
    assert len(s.order) == 4 and set(s.order) == {"a", "b"}
    assert s.headers["x-manifold-attempts"] == "4"


@pytest.mark.parametrize("status", [400, 404, 413, 422])
async def test_client_errors_are_not_retried(status: int) -> None:
    s = Setup({"a": [failed(status)]}, [dep("m", "a"), dep("m", "b")], strategy="round_robin")
    with pytest.raises(ManifoldError) as info:
        await s.chat("m")
    assert info.value.status_code == status and s.order == ["a"]
    assert s.headers == {"x-manifold-deployment": "a", "x-manifold-attempts": "1"}


async def test_unknown_model() -> None:
    s = Setup({}, [dep("m", "a")])
    with pytest.raises(ModelNotFoundError):
        await s.chat("nope")
    assert s.headers == {}


# -- cooldown --------------------------------------------------------------------------------------------------


async def test_401_cools_the_deployment_down_and_switches(caplog: pytest.LogCaptureFixture) -> None:
    s = Setup({"a": [failed(401)]}, [dep("m", "a", api_key="sk-very-secret"), dep("m", "b")], strategy="round_robin")
    assert (await s.chat("m"))["answer"] == "b"
    assert s.order == ["a", "b"]
    for _ in range(4):
        assert (await s.chat("m"))["answer"] == "b"
        assert s.order == ["b"]  # skipped while cooling down
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "refused our credentials" in errors[0].getMessage()
    assert "a" in errors[0].getMessage() and "sk-very-secret" not in caplog.text


async def test_every_deployment_cooling_down_is_a_503_with_retry_after() -> None:
    s = Setup({"a": [failed(500)]}, [dep("m", "a")], allowed_fails=2, num_retries=1, cooldown_time=30)
    with pytest.raises(BadGatewayError):
        await s.chat("m")
    with pytest.raises(ServiceUnavailableError) as info:
        await s.chat("m")
    assert s.order == [] and info.value.headers["retry-after"] in ("30", "29")
    assert s.headers == {"x-manifold-attempts": "0"}


async def test_half_open_probe_then_closed() -> None:
    s = Setup({"a": [failed(500), "ok"]}, [dep("m", "a"), dep("m", "b")], allowed_fails=1, cooldown_time=0.05)
    s.router.groups["m"].strategy = _Always("a")
    assert (await s.chat("m"))["answer"] == "b"  # a failed and opened; the retry went to b
    assert (await s.chat("m"))["answer"] == "b"  # a is cooling down
    await asyncio.sleep(0.06)
    assert (await s.chat("m"))["answer"] == "a"  # the probe
    breaker = s.router.groups["m"].members[0].breaker
    assert breaker.is_closed()


async def test_only_one_probe_while_half_open() -> None:
    s = Setup({"a": [failed(500), "ok"]}, [dep("m", "a"), dep("m", "b")], allowed_fails=1, cooldown_time=0.05)
    s.router.groups["m"].strategy = _Always("a")
    await s.chat("m")
    await asyncio.sleep(0.06)
    gate = asyncio.Event()
    s.providers["a"].gate = gate
    probe = asyncio.create_task(s.router.chat(s.call("m"), None))
    await asyncio.sleep(0.01)
    s.providers["a"].gate = None
    assert (await s.router.chat(s.call("m"), None))["answer"] == "b"  # a is being probed
    gate.set()
    assert (await probe)["answer"] == "a"


class _Always:
    """A strategy that prefers one deployment whenever it is a candidate."""

    def __init__(self, label: str) -> None:
        self.label = label

    def pick(self, candidates: Any, stream: bool) -> Any:
        return next((m for m in candidates if m.label == self.label), candidates[0])


# -- fallbacks -------------------------------------------------------------------------------------------------

FALLBACK_DEPLOYMENTS = [dep("big", "big"), dep("small", "small"), dep("long", "long")]


async def test_fallbacks_after_the_group_is_exhausted() -> None:
    s = Setup(
        {"big": [failed(503)]},
        FALLBACK_DEPLOYMENTS,
        num_retries=1,
        groups={"big": {"fallbacks": ["small", "long"]}},
    )
    assert (await s.chat("big"))["answer"] == "small"
    assert s.order == ["big", "big", "small"]
    assert s.headers == {"x-manifold-deployment": "small", "x-manifold-attempts": "3"}
    assert s.calls[-1][1].public_model == "big"


async def test_context_window_goes_to_its_own_chain_without_retry() -> None:
    s = Setup(
        {"big": [failed(400, code="context_length_exceeded")]},
        FALLBACK_DEPLOYMENTS,
        groups={"big": {"fallbacks": ["small"], "context_window_fallbacks": ["long"]}},
    )
    assert (await s.chat("big"))["answer"] == "long"
    assert s.order == ["big", "long"]


async def test_context_window_without_a_chain_is_the_clients_400() -> None:
    s = Setup(
        {"big": [failed(400, code="context_length_exceeded")]},
        FALLBACK_DEPLOYMENTS,
        groups={"big": {"fallbacks": ["small"]}},
    )
    with pytest.raises(ManifoldError) as info:
        await s.chat("big")
    assert info.value.status_code == 400 and info.value.code == "context_length_exceeded"
    assert s.order == ["big"]


async def test_a_fatal_error_in_a_fallback_ends_the_request() -> None:
    s = Setup(
        {"big": [failed(500)], "small": [failed(400)]},
        FALLBACK_DEPLOYMENTS,
        num_retries=0,
        fallbacks=["small", "long"],
    )
    with pytest.raises(ManifoldError) as info:
        await s.chat("big")
    assert info.value.status_code == 400 and s.order == ["big", "small"]


async def test_client_fallbacks_when_allowed_are_not_forwarded() -> None:
    s = Setup({"big": [failed(500)]}, FALLBACK_DEPLOYMENTS, num_retries=0, allow_client_fallbacks=True)
    body = {"model": "big", "messages": [], "fallbacks": ["long"], "top_k": 3}
    assert (await s.chat("big", body))["answer"] == "long"
    assert s.order == ["big", "long"]
    for _, call in s.calls:
        assert "fallbacks" not in call.body and call.body["top_k"] == 3
    assert body["fallbacks"] == ["long"]  # the client's dict is untouched


@pytest.mark.parametrize(
    ("fallbacks", "param", "code"),
    [
        ("long", "fallbacks", "invalid_type"),
        (["long", 3], "fallbacks", "invalid_type"),
        (["nope"], "fallbacks[0]", "model_not_found"),
    ],
)
async def test_bad_client_fallbacks(fallbacks: Any, param: str, code: str) -> None:
    s = Setup({}, FALLBACK_DEPLOYMENTS, allow_client_fallbacks=True)
    with pytest.raises(InvalidRequestError) as info:
        await s.chat("big", {"model": "big", "messages": [], "fallbacks": fallbacks})
    assert (info.value.param, info.value.code) == (param, code) and s.order == []


async def test_client_fallbacks_when_not_allowed_are_an_ordinary_field() -> None:
    s = Setup({"big": [failed(500)]}, FALLBACK_DEPLOYMENTS, num_retries=0)
    with pytest.raises(BadGatewayError):
        await s.chat("big", {"model": "big", "messages": [], "fallbacks": ["long"]})
    assert s.order == ["big"] and s.calls[0][1].body["fallbacks"] == ["long"]


# -- names -----------------------------------------------------------------------------------------------------


async def test_alias_and_wildcards() -> None:
    s = Setup(
        {},
        [
            dep("gpt-4o", "g"),
            dep("openai/*", "oa"),
            dep("fireworks/*", "fw", model="accounts/fireworks/models/*"),
        ],
        model_alias={"gpt-4": "gpt-4o", "mini": "openai/gpt-4o-mini"},
    )
    assert await s.chat("gpt-4") == {"answer": "g", "upstream_model": None}
    assert await s.chat("openai/o3") == {"answer": "oa", "upstream_model": "o3"}
    assert await s.chat("mini") == {"answer": "oa", "upstream_model": "gpt-4o-mini"}
    assert await s.chat("fireworks/llama-v3") == {
        "answer": "fw",
        "upstream_model": "accounts/fireworks/models/llama-v3",
    }
    assert s.headers["x-manifold-deployment"] == "fw"
    assert [name for name, _ in s.router.listed_models()] == ["gpt-4o", "gpt-4", "mini"]


async def test_labels_default_to_name_and_index() -> None:
    s = Setup({}, [{**dep("m", "x"), "id": None}, {**dep("m", "y"), "id": None}], strategy="round_robin")
    await s.chat("m")
    assert s.headers["x-manifold-deployment"] == "m#0"
    await s.chat("m")
    assert s.headers["x-manifold-deployment"] == "m#1"


# -- concurrency -----------------------------------------------------------------------------------------------


async def test_a_full_deployment_is_passed_over_then_429() -> None:
    s = Setup({}, [dep("m", "a", max_concurrency=1, max_queue=0), dep("m", "b", max_concurrency=1, max_queue=0)])
    gate = asyncio.Event()
    for p in s.providers.values():
        p.gate = gate
    first = asyncio.create_task(s.router.chat(s.call("m"), None))
    second = asyncio.create_task(s.router.chat(s.call("m"), None))
    await asyncio.sleep(0.01)
    with pytest.raises(RateLimitError) as info:
        await s.router.chat(s.call("m"), s.report)
    assert info.value.status_code == 429 and info.value.headers["retry-after"]
    assert s.headers == {"x-manifold-attempts": "0"}
    gate.set()
    answers = {(await first)["answer"], (await second)["answer"]}
    assert answers == {"a", "b"}
    assert all(m.limit.in_flight == 0 for m in s.router.groups["m"].members)


async def test_a_queued_request_waits_for_a_slot() -> None:
    s = Setup({}, [dep("m", "a", max_concurrency=1, max_queue=1, queue_timeout=5)])
    gate = asyncio.Event()
    s.providers["a"].gate = gate
    first = asyncio.create_task(s.router.chat(s.call("m"), None))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(s.router.chat(s.call("m"), None))
    await asyncio.sleep(0.01)
    assert len(s.calls) == 1 and len(s.router.groups["m"].members[0].limit.waiters) == 1
    gate.set()
    await first
    await second
    assert len(s.calls) == 2


async def test_cancellation_frees_the_slot() -> None:
    s = Setup({}, [dep("m", "a", max_concurrency=1)])
    s.providers["a"].gate = asyncio.Event()
    task = asyncio.create_task(s.router.chat(s.call("m"), None))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert s.router.groups["m"].members[0].limit.in_flight == 0


# -- streams ---------------------------------------------------------------------------------------------------


async def collect(stream: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in stream]


async def test_a_stream_failing_before_its_first_chunk_is_retried() -> None:
    s = Setup({"a": [[BadGatewayError("cut before anything")]]}, [dep("m", "a"), dep("m", "b")], strategy="round_robin")
    stream = await s.router.open_chat_stream(s.call("m", stream=True), s.report)
    assert await collect(stream) == [{"n": 0}, {"n": 1}]
    assert s.order == ["a", "b"] and s.headers == {"x-manifold-deployment": "b", "x-manifold-attempts": "2"}


async def test_a_stream_failing_after_its_first_chunk_is_not_retried() -> None:
    s = Setup(
        {"a": [[{"n": 0}, BadGatewayError("cut mid-way")]]}, [dep("m", "a"), dep("m", "b")], strategy="round_robin"
    )
    stream = await s.router.open_chat_stream(s.call("m", stream=True), s.report)
    got = []
    with pytest.raises(BadGatewayError):
        async for item in stream:
            got.append(item)
    assert got == [{"n": 0}] and s.order == ["a"]
    assert s.headers == {"x-manifold-deployment": "a", "x-manifold-attempts": "1"}
    assert all(m.limit.in_flight == 0 for m in s.router.groups["m"].members)


async def test_a_stream_holds_its_slot_until_closed() -> None:
    s = Setup({}, [dep("m", "a", max_concurrency=2)], strategy="least_busy")
    member = s.router.groups["m"].members[0]
    stream = await s.router.open_chat_stream(s.call("m", stream=True))
    assert member.limit.in_flight == 1
    await stream.aclose()  # type: ignore[attr-defined]
    assert member.limit.in_flight == 0
    empty = Setup({"a": [[]]}, [dep("m", "a")])
    assert await collect(await empty.router.open_chat_stream(empty.call("m", stream=True))) == []


async def test_streams_measure_time_to_first_chunk() -> None:
    s = Setup({}, [dep("m", "a")], strategy="lowest_latency")
    await collect(await s.router.open_chat_stream(s.call("m", stream=True)))
    member = s.router.groups["m"].members[0]
    assert member.ttft is not None and member.latency is None


# -- construction ----------------------------------------------------------------------------------------------


def test_router_settings_per_group() -> None:
    s = Setup(
        {}, [dep("a", "a"), dep("b", "b")], num_retries=5, groups={"b": {"num_retries": 1, "strategy": "least_busy"}}
    )
    assert s.router.groups["a"].policy.num_retries == 5
    assert s.router.groups["b"].policy.num_retries == 1
    assert s.router.groups["b"].policy.strategy == "least_busy"
    assert s.router.groups["b"].policy.retry_backoff == 0.01  # inherited


def test_unresolvable_fallbacks_are_a_validation_problem_not_the_routers() -> None:
    # Fallback targets are checked once, by the validation step; the router takes what it is given.
    config = parse_config({"model_list": [dep("a", "a")]}, environ={})
    settings = RouterSettings(fallbacks=["nope"], groups={"a": GroupSettings(context_window_fallbacks=["gone"])})
    assert validate(msgspec.structs.replace(config, router=settings)) == [
        "router.fallbacks[0]: 'nope' is not a model name, alias or wildcard match",
        "router.groups.a.context_window_fallbacks[0]: 'gone' is not a model name, alias or wildcard match",
    ]
    router = Router(config.model_list, lambda d: Scripted(d, ["ok"], []), settings)
    assert (router.groups["a"].fallbacks, router.groups["a"].context_window_fallbacks) == ((), ())
