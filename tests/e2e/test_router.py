"""The router end to end: a real `manifold serve` in front of the fake upstream, with many deployments per model.

The fault matrix runs each upstream misbehaviour, streaming and not, against a group of one faulty and one healthy
deployment (round robin, so the faulty one is tried first) and against a group with no healthy deployment, and
checks what the client gets, the headers that say who answered after how many attempts, and how many requests
each upstream received. Every fault case has its own groups and its own tagged upstream behaviours
(`status:500@<case>`), so the counts of one case never include another's.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess, free_port
from tests.e2e.test_chat import sse_events
from tests.e2e.test_completions import NULLS
from tests.e2e.test_errors import check_envelope
from tests.fakes.openai_upstream import FakeUpstream

MESSAGES: list[Any] = [{"role": "user", "content": "hello router"}]
ECHO = "echo: hello router"
# A generous bound for any one request: the worst case of the configured timeouts (3 attempts of at most 1 s,
# a Retry-After of 1 s), so that a request that hangs fails the test instead of blocking it.
CLIENT_TIMEOUT = 12.0
FAULTY_TIMEOUTS = {"connect": 1, "first_byte": 1}
HEALTHY_TIMEOUTS = {"connect": 5, "first_byte": 10}

RETRIED, MID_STREAM, SWITCHED = "retried", "mid_stream", "switched"


class Fault(NamedTuple):
    behavior: str | None  # None: nothing listens at the deployment's address
    non_stream: str  # what happens to a non-streamed request
    stream: str  # ... and to a streamed one
    status: int  # what the client gets when no deployment is healthy
    code: str | None = None


FAULTS = {
    "500": Fault("status:500", RETRIED, RETRIED, 502, "upstream_error"),
    "503": Fault("status:503", RETRIED, RETRIED, 502, "upstream_error"),
    "429-retry-after": Fault("status:429", RETRIED, RETRIED, 429, "fake_429"),
    "529": Fault("status:529", RETRIED, RETRIED, 502, "upstream_error"),
    "connection-refused": Fault(None, RETRIED, RETRIED, 502, "upstream_unreachable"),
    "reset-mid-body": Fault("reset", RETRIED, RETRIED, 502, "bad_gateway"),
    "hang-before-headers": Fault("hang", RETRIED, RETRIED, 504, "upstream_timeout"),
    "slow-first-token": Fault("slow_first_token:5", RETRIED, RETRIED, 504, "upstream_timeout"),
    "stream-cut-mid-way": Fault("cut", RETRIED, MID_STREAM, 502, "bad_gateway"),
    "malformed-json": Fault("malformed", RETRIED, MID_STREAM, 502, "bad_gateway"),
    "401": Fault("status:401", SWITCHED, SWITCHED, 401, "fake_401"),
}
MODES = ("json", "stream")
NUM_RETRIES = 2


def case_name(fault: str, mode: str, scenario: str) -> str:
    return f"{fault}-{mode}-{scenario}"


def faulty_base(fake: FakeUpstream, fault: Fault, tag: str) -> str:
    if fault.behavior is None:
        return f"http://127.0.0.1:{free_port()}/v1"
    return fake.base(f"{fault.behavior}@{tag}")


def deployment(name: str, id: str, api_base: str, timeouts: dict[str, float], **extra: Any) -> dict[str, Any]:
    return {
        "model_name": name,
        "id": id,
        "provider": "openai",
        "api_base": api_base,
        "api_key": "sk-router-upstream-secret",
        "timeouts": timeouts,
        **extra,
    }


def healthy(fake: FakeUpstream, name: str, id: str, behavior: str = "echo", **extra: Any) -> dict[str, Any]:
    return deployment(name, id, fake.base(f"{behavior}@{id}"), HEALTHY_TIMEOUTS, **extra)


def router_config(fake: FakeUpstream) -> dict[str, Any]:
    deployments: list[dict[str, Any]] = []
    groups: dict[str, Any] = {}
    for fault_name, fault in FAULTS.items():
        for mode in MODES:
            mixed = case_name(fault_name, mode, "mixed")
            deployments.append(deployment(mixed, f"{mixed}-bad", faulty_base(fake, fault, mixed), FAULTY_TIMEOUTS))
            deployments.append(healthy(fake, mixed, f"{mixed}-ok"))
            groups[mixed] = {"strategy": "round_robin"}
            dead = case_name(fault_name, mode, "dead")
            for side in ("a", "b"):
                tag = f"{dead}-{side}"
                deployments.append(deployment(dead, tag, faulty_base(fake, fault, tag), FAULTY_TIMEOUTS))

    # balancing
    deployments += [healthy(fake, "weighted", "w1", weight=1), healthy(fake, "weighted", "w3", weight=3)]
    deployments += [healthy(fake, "rr", f"rr-{i}") for i in range(3)]
    deployments += [healthy(fake, "least-busy", f"lb-{i}", "slow_headers:2") for i in range(2)]
    deployments += [healthy(fake, "fastest", "ll-slow", "slow_headers:0.4"), healthy(fake, "fastest", "ll-fast")]
    deployments += [
        healthy(fake, "fastest-stream", "lls-slow", "slow_first_token:0.4"),
        healthy(fake, "fastest-stream", "lls-fast"),
    ]
    groups.update(
        {
            "rr": {"strategy": "round_robin"},
            "least-busy": {"strategy": "least_busy"},
            "fastest": {"strategy": "lowest_latency"},
            "fastest-stream": {"strategy": "lowest_latency"},
        }
    )
    # cooldown
    deployments += [
        healthy(fake, "cool", "cool-a", "flaky:2"),
        healthy(fake, "cool", "cool-b"),
        healthy(fake, "reopen", "reopen-a", "status:500"),
        healthy(fake, "reopen", "reopen-b"),
        healthy(fake, "auth", "auth-a", "status:401", api_key="sk-auth-upstream-secret"),
        healthy(fake, "auth", "auth-b"),
    ]
    groups["cool"] = {"strategy": "round_robin", "allowed_fails": 2, "cooldown_time": 1.0}
    groups["reopen"] = {"strategy": "round_robin", "allowed_fails": 1, "cooldown_time": 1.5}
    groups["auth"] = {"strategy": "round_robin"}
    # concurrency
    deployments += [
        healthy(fake, "limited", "limited", "slow_headers:2", max_concurrency=1, max_queue=1, queue_timeout=0.5),
        healthy(fake, "queued", "queued", "slow_headers:0.3", max_concurrency=1, max_queue=4, queue_timeout=10),
    ]
    # names
    deployments += [
        healthy(fake, "gpt-4o", "gpt-4o"),
        healthy(fake, "openai/*", "openai-default"),
        healthy(fake, "anthropic/*", "anthropic-default"),
        healthy(fake, "fireworks/*", "fireworks", model="accounts/fireworks/models/*"),
        {
            "model_name": "azure/*",
            "id": "azure-default",
            "provider": "azure",
            "model": "*",
            "api_version": "2024-10-21",
            "api_base": fake.base("echo@azure-default"),
            "api_key": "azure-key",
        },
    ]
    # fallbacks
    deployments += [
        healthy(fake, "fb-primary", "fb-primary", "status:500"),
        healthy(fake, "fb-second", "fb-second", "status:502"),
        healthy(fake, "fb-backup", "fb-backup"),
        healthy(fake, "cw-primary", "cw-primary", "context_length"),
        healthy(fake, "cw-vllm", "cw-vllm", "context_length:message"),
        healthy(fake, "cw-long", "cw-long"),
        healthy(fake, "client-fb", "client-fb", "status:500"),
        healthy(fake, "plain", "plain"),
    ]
    groups["fb-primary"] = {"fallbacks": ["fb-second", "fb-backup"]}
    groups["cw-primary"] = {"fallbacks": ["fb-backup"], "context_window_fallbacks": ["cw-long"]}
    groups["cw-vllm"] = {"context_window_fallbacks": ["cw-long"]}
    groups["client-fb"] = {"allow_client_fallbacks": True}
    # the SDK as client, and the log
    for name, behavior in (("sdk-hang", "hang"), ("sdk-503", "status:503"), ("logged", "status:500")):
        deployments += [deployment(name, f"{name}-bad", fake.base(f"{behavior}@{name}"), FAULTY_TIMEOUTS)]
        deployments += [healthy(fake, name, f"{name}-ok")]
        groups[name] = {"strategy": "round_robin"}
    deployments += [healthy(fake, "sdk-429", f"sdk-429-{side}", "status:429") for side in "ab"]
    deployments += [healthy(fake, "sdk-cut", "sdk-cut", "cut")]
    # the other endpoints share the machinery
    for name in ("surface", "surface-stream"):
        deployments += [
            deployment(name, f"{name}-bad", fake.base(f"status:503@{name}"), FAULTY_TIMEOUTS),
            healthy(fake, name, f"{name}-ok"),
        ]
        groups[name] = {"strategy": "round_robin", "num_retries": 1}
    # timeouts
    deployments += [
        deployment("idle", "idle", fake.base("stall:5@idle"), {"first_byte": 10, "stream_idle": 0.5}),
        deployment("total", "total-bad", fake.base("slow_headers:5@total"), {"first_byte": 10, "total": 1}),
        healthy(fake, "total", "total-ok"),
    ]
    groups["total"] = {"strategy": "round_robin"}
    return {
        "model_list": deployments,
        "router": {
            "num_retries": NUM_RETRIES,
            "retry_backoff": 0.05,
            "retry_backoff_max": 0.2,
            "max_retry_after": 2,
            "allowed_fails": 3,
            "cooldown_time": 30,
            "model_alias": {"gpt-4": "gpt-4o", "claude": "anthropic/claude-sonnet-4", "mini": "openai/gpt-4o-mini"},
            "groups": groups,
        },
        # keep-alive comments would commit the headers before the router knows who answered; see test_keepalive
        "server": {"keepalive_interval": 30, "log_level": "info"},
    }


@pytest.fixture(scope="module")
def router_gateway(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    proc = ManifoldProcess(router_config(fake), tmp_path_factory.mktemp("router"))
    yield proc
    proc.stop()


@pytest.fixture
def http(router_gateway: ManifoldProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=router_gateway.url, timeout=CLIENT_TIMEOUT) as c:
        yield c


@pytest.fixture
def sdk(router_gateway: ManifoldProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=router_gateway.base_url,
        api_key="sk-client",
        max_retries=0,
        timeout=CLIENT_TIMEOUT,
        _strict_response_validation=True,
    ) as c:
        yield c


def chat(http: httpx.Client, model: str, stream: bool = False, **extra: Any) -> httpx.Response:
    return http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "stream": stream, **extra})


def answer_of(resp: httpx.Response, stream: bool) -> str:
    """The content of a successful answer, every body or chunk checked against OpenAI's schemas."""
    assert resp.status_code == 200, resp.text
    if not stream:
        body = resp.json()
        assert_valid("CreateChatCompletionResponse", body)
        return str(body["choices"][0]["message"]["content"])
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp.text)
    assert events[-1] == "[DONE]", events[-3:]
    for chunk in events[:-1]:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in events[:-1] if c["choices"])


def stream_error_of(resp: httpx.Response) -> dict[str, Any]:
    """A stream that began and then failed: the chunks sent so far, then one error event and no [DONE]. (The
    upstream's first chunk may have been a bare role delta, which the gateway merges into the next one: then
    the error event is all the client got after the 200.)"""
    assert resp.status_code == 200, resp.text
    events = sse_events(resp.text)
    assert "[DONE]" not in events and events
    for chunk in events[:-1]:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert_valid("ErrorResponse", events[-1])
    error: dict[str, Any] = events[-1]["error"]
    return error


def attempts_of(resp: httpx.Response) -> int:
    return int(resp.headers["x-manifold-attempts"])


# -- the fault matrix ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault_name", list(FAULTS))
def test_fault_with_a_healthy_deployment(http: httpx.Client, fake: FakeUpstream, fault_name: str, mode: str) -> None:
    fault = FAULTS[fault_name]
    stream = mode == "stream"
    group = case_name(fault_name, mode, "mixed")
    outcome = fault.stream if stream else fault.non_stream
    resp = chat(http, group, stream)
    if outcome == MID_STREAM:
        # Chunks reached the client before the failure: no retry can undo that; the stream ends with an error.
        error = stream_error_of(resp)
        assert error["code"] == fault.code and "sk-router" not in error["message"]
        assert resp.headers["x-manifold-deployment"] == f"{group}-bad"
        assert attempts_of(resp) == 1 and fake.count(f"echo@{group}-ok") == 0
    else:
        assert answer_of(resp, stream) == ECHO
        assert resp.headers["x-manifold-deployment"] == f"{group}-ok"
        assert attempts_of(resp) == 2
        assert fake.count(f"echo@{group}-ok") == 1
    if fault.behavior is not None:
        assert fake.count(f"{fault.behavior}@{group}") == 1


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fault_name", list(FAULTS))
def test_fault_with_no_healthy_deployment(http: httpx.Client, fake: FakeUpstream, fault_name: str, mode: str) -> None:
    fault = FAULTS[fault_name]
    stream = mode == "stream"
    group = case_name(fault_name, mode, "dead")
    outcome = fault.stream if stream else fault.non_stream
    resp = chat(http, group, stream)
    if outcome == MID_STREAM:
        error = stream_error_of(resp)
        assert error["code"] == fault.code
        expected = 1
    else:
        error = check_envelope(resp, fault.status, code=fault.code)
        expected = 2 if outcome == SWITCHED else NUM_RETRIES + 1  # a 401 is not retried on the same deployment
        assert resp.headers["x-manifold-deployment"] in (f"{group}-a", f"{group}-b")
    assert attempts_of(resp) == expected
    assert "sk-router-upstream-secret" not in resp.text
    if fault.behavior is not None:
        counts = [fake.count(f"{fault.behavior}@{group}-{side}") for side in ("a", "b")]
        assert sum(counts) == expected
        if expected > 1:
            assert min(counts) >= 1  # a retry went to the other deployment
    if fault.status == 429 and outcome != MID_STREAM:
        assert resp.headers["retry-after"] == "1"  # the upstream's, passed on


def test_sdk_sees_the_healthy_answer_and_the_headers(sdk: openai.OpenAI) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model="sdk-hang", messages=MESSAGES)
    assert raw.parse().choices[0].message.content == ECHO
    assert raw.headers["x-manifold-deployment"] == "sdk-hang-ok" and raw.headers["x-manifold-attempts"] == "2"
    raw_stream = sdk.chat.completions.with_raw_response.create(model="sdk-503", messages=MESSAGES, stream=True)
    assert raw_stream.headers["x-manifold-deployment"] == "sdk-503-ok"
    assert "".join(c.choices[0].delta.content or "" for c in raw_stream.parse() if c.choices) == ECHO


def test_sdk_errors_when_nothing_is_healthy(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.chat.completions.create(model="sdk-429", messages=MESSAGES)
    assert limited.value.code == "fake_429"
    assert limited.value.response.headers["x-manifold-attempts"] == "3"
    with pytest.raises(openai.APIError) as mid:
        for _ in sdk.chat.completions.create(model="sdk-cut", messages=MESSAGES, stream=True):
            pass
    assert mid.value.message and "cut the stream" in mid.value.message


def test_each_attempt_is_logged(router_gateway: ManifoldProcess, http: httpx.Client) -> None:
    assert answer_of(chat(http, "logged"), False) == ECHO
    log = router_gateway.log()
    assert "attempt 1 on logged-bad failed: 500 upstream_error (" in log
    assert "attempt 2 on logged-ok succeeded (" in log
    assert "sk-router-upstream-secret" not in log and "Traceback" not in log


# -- balancing -------------------------------------------------------------------------------------------------


def test_weighted_split(http: httpx.Client) -> None:
    n = 400
    labels = [chat(http, "weighted").headers["x-manifold-deployment"] for _ in range(n)]
    heavy = labels.count("w3")
    assert labels.count("w1") + heavy == n
    # Binomial(400, 0.75): mean 300, sd 8.7; ±5 sd fails by chance once in ~3.5 million runs, and catches a
    # router that ignores weights (mean 200).
    assert 257 <= heavy <= 343, heavy


def test_round_robin(http: httpx.Client) -> None:
    labels = [chat(http, "rr").headers["x-manifold-deployment"] for _ in range(6)]
    start = labels[0]
    order = ["rr-0", "rr-1", "rr-2"]
    i = order.index(start)
    assert labels == (order[i:] + order[:i]) * 2


def test_least_busy(router_gateway: ManifoldProcess, fake: FakeUpstream) -> None:
    """Requests that stay in flight (2 s each), sent one after another: each must go to a deployment with the
    fewest requests in flight at that moment."""
    labels = ("lb-0", "lb-1")
    in_flight = dict.fromkeys(labels, 0)

    def arrived() -> int:
        return sum(fake.count(f"slow_headers:2@{label}") for label in labels)

    with ThreadPoolExecutor(8) as pool, httpx.Client(base_url=router_gateway.url, timeout=CLIENT_TIMEOUT) as http:
        futures = []
        for i in range(8):
            before = {label: fake.count(f"slow_headers:2@{label}") for label in labels}
            futures.append(pool.submit(chat, http, "least-busy"))
            deadline = time.monotonic() + 5
            while arrived() < i + 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            chosen = next(label for label in labels if fake.count(f"slow_headers:2@{label}") > before[label])
            assert in_flight[chosen] == min(in_flight.values()), (i, chosen, in_flight)
            in_flight[chosen] += 1
        assert all(f.result().status_code == 200 for f in futures)
    assert in_flight == {"lb-0": 4, "lb-1": 4}


@pytest.mark.parametrize(
    ("group", "slow", "stream"),
    [("fastest", "slow_headers:0.4@ll-slow", False), ("fastest-stream", "slow_first_token:0.4@lls-slow", True)],
)
def test_lowest_latency(http: httpx.Client, fake: FakeUpstream, group: str, slow: str, stream: bool) -> None:
    labels = [chat(http, group, stream).headers["x-manifold-deployment"] for _ in range(12)]
    # Each is measured once (the unmeasured go first), then only the faster one is chosen.
    assert len(set(labels[:2])) == 2
    fast = "ll-fast" if group == "fastest" else "lls-fast"
    assert labels[2:] == [fast] * 10
    assert fake.count(slow) == 1


# -- cooldown --------------------------------------------------------------------------------------------------


def test_cooldown_then_half_open_probe(http: httpx.Client, fake: FakeUpstream) -> None:
    # cool-a fails its first 2 requests; 2 failures open it for 1 s.
    for _ in range(2):
        resp = chat(http, "cool")
        assert answer_of(resp, False) == ECHO and resp.headers["x-manifold-deployment"] == "cool-b"
    assert fake.count("flaky:2@cool-a") == 2
    for _ in range(4):
        resp = chat(http, "cool")
        assert resp.headers["x-manifold-deployment"] == "cool-b" and attempts_of(resp) == 1
    assert fake.count("flaky:2@cool-a") == 2  # skipped while cooling down
    time.sleep(1.2)
    labels = [chat(http, "cool").headers["x-manifold-deployment"] for _ in range(4)]
    assert "cool-a" in labels  # probed, answered, closed: back in the rotation
    assert fake.count("flaky:2@cool-a") >= 3


def test_a_failed_probe_opens_again(http: httpx.Client, fake: FakeUpstream) -> None:
    chat(http, "reopen")
    chat(http, "reopen")
    assert fake.count("status:500@reopen-a") == 1  # one failure opened it (allowed_fails: 1)
    time.sleep(1.6)
    for _ in range(4):
        assert chat(http, "reopen").headers["x-manifold-deployment"] == "reopen-b"
    assert fake.count("status:500@reopen-a") == 2  # exactly one probe, which failed


def test_401_cools_down_and_is_logged_loudly(
    router_gateway: ManifoldProcess, http: httpx.Client, fake: FakeUpstream
) -> None:
    for _ in range(4):
        resp = chat(http, "auth")
        assert answer_of(resp, False) == ECHO and resp.headers["x-manifold-deployment"] == "auth-b"
    assert fake.count("status:401@auth-a") == 1
    log = router_gateway.log()
    assert "ERROR manifold.router deployment auth-a: the upstream refused our credentials (status 401" in log
    assert "sk-auth-upstream-secret" not in log


# -- concurrency -----------------------------------------------------------------------------------------------


def test_concurrency_limit_answers_429_with_retry_after(router_gateway: ManifoldProcess, fake: FakeUpstream) -> None:
    with ThreadPoolExecutor(3) as pool, httpx.Client(base_url=router_gateway.url, timeout=CLIENT_TIMEOUT) as http:
        futures = [pool.submit(chat, http, "limited") for _ in range(3)]
        responses = [f.result() for f in futures]
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 429, 429]  # one in flight, one timed out in the queue, one found the queue full
    for resp in responses:
        if resp.status_code == 429:
            error = check_envelope(resp, 429, code="concurrency_limit_exceeded")
            assert error["type"] == "rate_limit_error"
            assert int(resp.headers["retry-after"]) >= 1
            assert resp.headers["x-manifold-attempts"] == "0"
    assert fake.count("slow_headers:2@limited") == 1


def test_queued_requests_wait_their_turn(router_gateway: ManifoldProcess, fake: FakeUpstream) -> None:
    with ThreadPoolExecutor(3) as pool, httpx.Client(base_url=router_gateway.url, timeout=CLIENT_TIMEOUT) as http:
        responses = list(pool.map(lambda _: chat(http, "queued"), range(3)))
    assert [r.status_code for r in responses] == [200, 200, 200]
    arrivals = sorted(r.received_at for r in fake.requests if r.behavior == "slow_headers:0.3@queued")
    assert len(arrivals) == 3
    assert all(b - a >= 0.29 for a, b in itertools.pairwise(arrivals))  # one at a time


# -- timeouts --------------------------------------------------------------------------------------------------


def test_stream_idle_timeout_is_an_error_event(http: httpx.Client, fake: FakeUpstream) -> None:
    error = stream_error_of(chat(http, "idle", stream=True))
    assert error["code"] == "upstream_timeout" and "stopped sending" in error["message"]
    assert fake.count("stall:5@idle") == 1  # chunks had been sent: not retried


def test_total_timeout_is_a_504_and_retried(http: httpx.Client, fake: FakeUpstream) -> None:
    resp = chat(http, "total")
    assert answer_of(resp, False) == ECHO
    assert resp.headers["x-manifold-deployment"] == "total-ok" and attempts_of(resp) == 2
    assert fake.count("slow_headers:5@total") == 1


def test_keepalive_then_retry_in_the_same_stream(fake: FakeUpstream, tmp_path: Any) -> None:
    config = {
        "model_list": [
            deployment("ka", "ka-bad", fake.base("hang@ka"), {"first_byte": 1}),
            healthy(fake, "ka", "ka-ok"),
        ],
        "router": {"groups": {"ka": {"strategy": "round_robin"}}},
        "server": {"keepalive_interval": 0.2},
    }
    proc = ManifoldProcess(config, tmp_path)
    try:
        with httpx.Client(base_url=proc.url, timeout=CLIENT_TIMEOUT) as http:
            resp = chat(http, "ka", stream=True)
        # The 200 and keep-alive comments went out while the first deployment hung; nothing else had, so the
        # router could still retry, and the stream carries the second deployment's answer.
        assert resp.text.startswith(": keep-alive\n\n")
        assert answer_of(resp, True) == ECHO
        assert fake.count("hang@ka") == 1 and fake.count("echo@ka-ok") == 1
    finally:
        proc.stop()


# -- names -----------------------------------------------------------------------------------------------------


def test_alias(sdk: openai.OpenAI, fake: FakeUpstream) -> None:
    raw = sdk.chat.completions.with_raw_response.create(model="gpt-4", messages=MESSAGES)
    completion = raw.parse()
    assert completion.model == "gpt-4" and raw.headers["x-manifold-deployment"] == "gpt-4o"
    assert fake.requests[-1].behavior == "echo@gpt-4o" and fake.requests[-1].body["model"] == "gpt-4o"


@pytest.mark.parametrize(
    ("model", "deployment_id", "upstream_model"),
    [
        ("openai/gpt-4o-mini", "openai-default", "gpt-4o-mini"),
        ("mini", "openai-default", "gpt-4o-mini"),  # an alias of a wildcard name
        ("anthropic/claude-sonnet-4", "anthropic-default", "claude-sonnet-4"),  # a provider-wide default
        ("claude", "anthropic-default", "claude-sonnet-4"),
        ("fireworks/llama-v3p1-8b", "fireworks", "accounts/fireworks/models/llama-v3p1-8b"),
    ],
)
def test_wildcard_groups_forward_the_rest_of_the_name(
    http: httpx.Client, fake: FakeUpstream, model: str, deployment_id: str, upstream_model: str
) -> None:
    for stream in (False, True):
        resp = chat(http, model, stream)
        assert answer_of(resp, stream) == ECHO
        assert resp.headers["x-manifold-deployment"] == deployment_id
        got = fake.requests[-1]
        assert got.behavior == f"echo@{deployment_id}" and got.body["model"] == upstream_model
        if not stream:
            assert resp.json()["model"] == model  # the client's name, as with any group


def test_azure_wildcard_puts_the_name_in_the_url(http: httpx.Client, fake: FakeUpstream) -> None:
    assert answer_of(chat(http, "azure/my-gpt4o-deployment"), False) == ECHO
    got = fake.requests[-1]
    assert got.path.endswith("/openai/deployments/my-gpt4o-deployment/chat/completions")
    assert got.headers["api-key"] == "azure-key"


def test_models_lists_groups_and_aliases(http: httpx.Client) -> None:
    body = http.get("/v1/models").json()
    assert_valid("ListModelsResponse", body)
    ids = [m["id"] for m in body["data"]]
    assert {"gpt-4o", "gpt-4", "claude", "mini", "weighted"} <= set(ids)
    assert not any(i.endswith("*") for i in ids)  # wildcard groups are patterns, not models
    assert len(ids) == len(set(ids))
    for name in ("gpt-4", "openai/gpt-4o-mini", "anthropic/claude-3-haiku"):
        model = http.get(f"/v1/models/{name}").json()
        assert_valid("Model", model)
        assert model["id"] == name
    check_envelope(http.get("/v1/models/nope"), 404, "model", "model_not_found")
    check_envelope(chat(http, "google/gemini"), 404, "model", "model_not_found")


# -- fallbacks -------------------------------------------------------------------------------------------------


def test_fallbacks_in_order(http: httpx.Client, fake: FakeUpstream) -> None:
    resp = chat(http, "fb-primary")
    assert answer_of(resp, False) == ECHO
    assert resp.headers["x-manifold-deployment"] == "fb-backup"
    assert attempts_of(resp) == 2 * (NUM_RETRIES + 1) + 1
    assert fake.count("status:500@fb-primary") == 3 and fake.count("status:502@fb-second") == 3
    assert resp.json()["model"] == "fb-primary"


@pytest.mark.parametrize("group", ["cw-primary", "cw-vllm"])
def test_context_window_fallbacks(http: httpx.Client, fake: FakeUpstream, group: str) -> None:
    before = fake.count("echo@fb-backup")
    for stream in (False, True):
        resp = chat(http, group, stream)
        assert answer_of(resp, stream) == ECHO
        assert resp.headers["x-manifold-deployment"] == "cw-long" and attempts_of(resp) == 2
    assert fake.count("echo@fb-backup") == before  # the other chain is for other failures


def test_client_fallbacks_when_allowed(sdk: openai.OpenAI, fake: FakeUpstream) -> None:
    raw = sdk.chat.completions.with_raw_response.create(
        model="client-fb", messages=MESSAGES, extra_body={"fallbacks": ["plain"], "top_k": 5}
    )
    assert raw.parse().choices[0].message.content == ECHO
    assert raw.headers["x-manifold-deployment"] == "plain"
    for got in fake.requests[-(NUM_RETRIES + 2) :]:
        assert "fallbacks" not in got.body and got.body["top_k"] == 5
    with pytest.raises(openai.BadRequestError) as bad:
        sdk.chat.completions.create(model="client-fb", messages=MESSAGES, extra_body={"fallbacks": ["nope"]})
    assert bad.value.param == "fallbacks[0]" and bad.value.code == "model_not_found"


def test_client_fallbacks_when_not_allowed_are_forwarded(sdk: openai.OpenAI, fake: FakeUpstream) -> None:
    sdk.chat.completions.create(model="plain", messages=MESSAGES, extra_body={"fallbacks": ["gpt-4o"]})
    assert fake.requests[-1].behavior == "echo@plain" and fake.requests[-1].body["fallbacks"] == ["gpt-4o"]


# -- the other endpoints ---------------------------------------------------------------------------------------


def test_completions_embeddings_and_images_are_retried_too(http: httpx.Client, fake: FakeUpstream) -> None:
    # num_retries 1, round robin from the faulty deployment: each request fails once, then the healthy one answers.
    calls = [
        ("/v1/completions", {"prompt": "hello router"}, "CreateCompletionResponse"),
        ("/v1/embeddings", {"input": "hello router"}, "CreateEmbeddingResponse"),
        ("/v1/images/generations", {"prompt": "a router"}, "ImagesResponse"),
    ]
    for i, (path, body, schema) in enumerate(calls, 1):
        resp = http.post(path, json={"model": "surface", **body})
        assert resp.status_code == 200, resp.text
        assert_valid(schema, resp.json())
        assert resp.headers["x-manifold-deployment"] == "surface-ok" and attempts_of(resp) == 2
        assert fake.count("status:503@surface") == i
    stream = http.post("/v1/completions", json={"model": "surface-stream", "prompt": "hello router", "stream": True})
    events = sse_events(stream.text)
    assert stream.status_code == 200 and events[-1] == "[DONE]"
    for chunk in events[:-1]:
        assert_valid("CreateCompletionResponse", chunk, relaxed=NULLS)  # as OpenAI streams them
    assert "".join(c["choices"][0]["text"] for c in events[:-1] if c["choices"]) == ECHO
    assert stream.headers["x-manifold-deployment"] == "surface-stream-ok" and attempts_of(stream) == 2


# -- concurrent load -------------------------------------------------------------------------------------------


def test_parallel_requests_share_the_state(router_gateway: ManifoldProcess) -> None:
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=router_gateway.url, timeout=CLIENT_TIMEOUT) as http:
            for _ in range(10):
                for stream in (False, True):
                    resp = chat(http, "weighted", stream)
                    if resp.status_code != 200 or answer_of(resp, stream) != ECHO:
                        errors.append(resp.text)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
