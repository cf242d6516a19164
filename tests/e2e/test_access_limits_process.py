"""Limits in one `manifold serve` without Redis (process memory), per-deployment quotas, token reconciliation,
team and per-model limits, the price header, and Redis failing under both `on_redis_error` modes (a
`redis-server` of the test's own, killed mid-run)."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manifold.config import load_config
from manifold.errors import ConfigError
from tests.e2e.conftest import ManifoldProcess, free_port
from tests.fakes.counting_upstream import CountingUpstream

KEY_A = "sk-static-a-0123456789abcdef"
KEY_B = "sk-static-b-0123456789abcdef"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}


@pytest.fixture(scope="module")
def upstream() -> Iterator[CountingUpstream]:
    up = CountingUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    procs: list[ManifoldProcess] = []

    def start(config: dict[str, Any]) -> ManifoldProcess:
        config.setdefault("server", {})["access_log"] = False
        proc = ManifoldProcess(config, tmp_path, env={"KEY_A": KEY_A, "KEY_B": KEY_B})
        procs.append(proc)
        return proc

    yield start
    for p in procs:
        p.stop()
        assert KEY_A not in p.log()
        assert KEY_B not in p.log()


def _dep(upstream: CountingUpstream, name: str, **extra: Any) -> dict[str, Any]:
    return {"model_name": "m", "provider": "openai", "model": "gpt-4o-mini", "api_base": upstream.base(name), **extra}


def _post(proc: ManifoldProcess, key: str | None, body: dict[str, Any] = BODY) -> httpx.Response:
    headers = {} if key is None else {"authorization": f"Bearer {key}"}
    return httpx.post(proc.base_url + "/chat/completions", json=body, headers=headers, timeout=30)


def test_deployment_quotas_prefer_room_then_429(upstream: CountingUpstream, serve: Any) -> None:
    proc = serve({"model_list": [_dep(upstream, "q1", rpm=3, id="q1"), _dep(upstream, "q2", rpm=3, id="q2")]})
    answers = [_post(proc, None) for _ in range(7)]
    assert [a.status_code for a in answers] == [200] * 6 + [429]
    assert upstream.count("q1") == 3
    assert upstream.count("q2") == 3
    refused = answers[-1]
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Access control off: nothing counted, but every answer with usage is priced (genai-prices: gpt-4o-mini,
    # 10 tokens in at $0.15/M and 5 out at $0.60/M = 4.5 micro-dollars, rounded up).
    assert answers[0].headers["x-manifold-cost"] == "0.000005"
    assert "x-ratelimit-limit-requests" not in answers[0].headers
    from tests.e2e.test_observability import scrape

    figures = scrape(proc.url)
    assert figures.value("manifold_rate_limit_refusals_total", limit="quota", scope="deployment") == 1


def test_tokens_are_reserved_then_reconciled(upstream: CountingUpstream, serve: Any) -> None:
    keys = [{"key": "${KEY_A}", "alias": "a", "tpm": 1000, "rpm": 50}]
    proc = serve({"model_list": [_dep(upstream, "tpm")], "auth": {"keys": keys}})
    first = _post(proc, KEY_A)
    second = _post(proc, KEY_A)
    assert first.status_code == second.status_code == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "1000"
    reserved = 1000 - int(first.headers["x-ratelimit-remaining-tokens"])
    assert reserved > 5  # the prompt's estimate plus max_tokens
    # The first request's reservation was replaced by its real usage (15 tokens) when it ended.
    assert int(second.headers["x-ratelimit-remaining-tokens"]) == 1000 - 15 - reserved
    assert first.headers["x-ratelimit-limit-requests"] == "50"
    assert first.headers["x-ratelimit-remaining-requests"] == "49"
    assert second.headers["x-ratelimit-remaining-requests"] == "48"
    # A request that could never fit is refused with the tokens named.
    big = _post(proc, KEY_A, {**BODY, "max_tokens": 5000})
    assert big.status_code == 429
    error = big.json()["error"]
    assert error["type"] == "tokens"
    assert error["message"].startswith("Rate limit reached for tokens per minute (key a): Limit 1000, Used 30,")


def test_team_and_model_limits(upstream: CountingUpstream, serve: Any) -> None:
    keys = [
        {"key": "${KEY_A}", "alias": "a", "team": "t", "model_limits": {"m": {"rpm": 1}}},
        {"key": "${KEY_B}", "alias": "b", "team": "t"},
    ]
    proc = serve({"model_list": [_dep(upstream, "team")], "auth": {"keys": keys, "teams": {"t": {"rpm": 3}}}})
    assert _post(proc, KEY_A).status_code == 200
    per_model = _post(proc, KEY_A)
    assert per_model.status_code == 429
    assert per_model.json()["error"]["message"].startswith(
        "Rate limit reached for requests per minute (key a, model m): Limit 1, Used 1, Requested 1."
    )
    assert [_post(proc, KEY_B).status_code for _ in range(3)] == [200, 200, 429]
    assert "(team t): Limit 3, Used 3" in _post(proc, KEY_B).json()["error"]["message"]
    missing = _post(proc, None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(proc.url + "/health", timeout=5).status_code == 200


def test_several_workers_need_redis_or_per_process_limits(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("server: {workers: 2}\nauth: {keys: [{key: sk-0123456789, alias: a, rpm: 5}]}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "redis.url is not set" in str(caught.value)
    assert "sk-0123456789" not in str(caught.value)
    path.write_text(
        "server: {workers: 2}\nauth: {keys: [{key: sk-0123456789, alias: a, rpm: 5}]}\n"
        "redis: {limits_per_process: true}\n"
    )
    assert load_config(path).redis.limits_per_process


class OwnRedis:
    """A `redis-server` of this test's own, on a free port, that the test can kill."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.port = free_port() if port is None else port
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=workdir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        import redis

        while True:
            try:
                redis.Redis(port=self.port).ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
@pytest.mark.parametrize("mode", ["open", "closed"])
def test_redis_failure_modes(upstream: CountingUpstream, serve: Any, tmp_path: Path, mode: str) -> None:
    own = OwnRedis(tmp_path)
    try:
        keys = [{"key": "${KEY_A}", "alias": "a", "rpm": 2}]
        redis_settings = {"url": f"redis://127.0.0.1:{own.port}/0", "on_redis_error": mode, "timeout_s": 1}
        proc = serve({"model_list": [_dep(upstream, f"redis-{mode}")], "auth": {"keys": keys}, "redis": redis_settings})
        assert [_post(proc, KEY_A).status_code for _ in range(3)] == [200, 200, 429]
        own.kill()
        answers = [_post(proc, KEY_A) for _ in range(3)]
        if mode == "open":
            assert [a.status_code for a in answers] == [200] * 3  # served without limits, loudly
            assert "served without limits (redis.on_redis_error: open)" in proc.log()
        else:
            assert [a.status_code for a in answers] == [503] * 3
            assert answers[0].headers["retry-after"] == "1"
            assert answers[0].json()["error"]["message"] == "The rate limit service is unavailable. Please retry later."
            assert "refused (redis.on_redis_error: closed)" in proc.log()
        # Redis back (empty: a restart without persistence): the gateway reconnects, loads its scripts again
        # and counts from zero.
        own = OwnRedis(tmp_path, own.port)
        assert [_post(proc, KEY_A).status_code for _ in range(3)] == [200, 200, 429]
    finally:
        own.kill()


@pytest.mark.parametrize("store", ["memory", "redis"])
@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_leaves_gives_its_slot_back(
    upstream: CountingUpstream, serve: Any, store: str, stream: bool
) -> None:
    keys = [{"key": "${KEY_A}", "alias": "a", "max_parallel_requests": 1}]
    config: dict[str, Any] = {"model_list": [_dep(upstream, "leave@1.5")], "auth": {"keys": keys}}
    prefix = f"manifold-test-leave-{free_port()}:"
    if store == "redis":
        config["redis"] = {"url": "redis://127.0.0.1:6379/0", "key_prefix": prefix, "on_redis_error": "closed"}
    proc = serve(config)
    body = {**BODY, "stream": stream}
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up while the upstream still thinks
            httpx.post(
                proc.base_url + "/chat/completions",
                json=body,
                headers={"authorization": f"Bearer {KEY_A}"},
                timeout=0.5,
            )
        # Its slot comes back (the upstream's answer is still on its way when the gateway cancels it).
        deadline = time.monotonic() + 5
        while True:
            answer = _post(proc, KEY_A, body)
            if answer.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert answer.status_code == 200
    finally:
        if store == "redis":
            import redis

            client = redis.Redis()
            for key in client.scan_iter(match=prefix + "*"):
                client.delete(key)
            client.close()


def test_the_sdks_read_both_429s_as_their_typed_errors(upstream: CountingUpstream, serve: Any) -> None:
    """`rate_limit_exceeded` and `insufficient_quota` reach the Python and the Node SDK as RateLimitError, with
    the envelope's code (issue 12: the official SDKs read the 429 answers as their typed errors)."""
    import openai

    from tests.fakes.node_openai import node_missing, run_script

    keys = [
        {"key": "${KEY_A}", "alias": "limited", "rpm": 1},
        # gpt-4o-mini at genai-prices' rates: one answer costs a few micro-dollars, so a budget of one
        # micro-dollar is spent by the first request and refuses the second.
        {"key": "${KEY_B}", "alias": "broke", "max_budget": 0.000001},
    ]
    proc = serve({"model_list": [_dep(upstream, "sdk429")], "auth": {"keys": keys}})
    messages = [{"role": "user", "content": "hello there"}]
    for key, code in ((KEY_A, "rate_limit_exceeded"), (KEY_B, "insufficient_quota")):
        client = openai.OpenAI(base_url=proc.base_url, api_key=key, max_retries=0)
        client.chat.completions.create(model="m", messages=messages, max_tokens=5)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as refused:
            client.chat.completions.create(model="m", messages=messages, max_tokens=5)  # type: ignore[arg-type]
        assert refused.value.code == code
        assert refused.value.status_code == 429
    missing = node_missing()
    if missing is not None:
        pytest.skip(missing)
    script = """
        const messages = [{role: "user", content: "hello there"}];
        return await caught(client.chat.completions.create({model: "m", messages, max_tokens: 5}));
    """
    for key, code in ((KEY_A, "rate_limit_exceeded"), (KEY_B, "insufficient_quota")):
        err = run_script(script, proc.base_url, key)
        assert err is not None and err["name"] == "RateLimitError" and err["isApiError"]
        assert err["status"] == 429 and err["code"] == code


def test_refusals_and_spend_reach_the_metrics(upstream: CountingUpstream, serve: Any) -> None:
    """Issue 13 with access control: `manifold_rate_limit_refusals_total{limit,scope}` counts each refusal by the
    limit that refused it, `manifold_spend_usd_total{key_alias,team,model}` adds every priced answer's cost
    (non-streamed and streamed), scraped with prometheus-client's parser."""
    from tests.e2e.test_observability import scrape

    keys = [
        {"key": "${KEY_A}", "alias": "alice", "team": "research", "rpm": 2},
        {"key": "${KEY_B}", "alias": "bob", "model_limits": {"m": {"rpm": 1}}},
    ]
    dep = _dep(upstream, "metrics", input_cost_per_million=1000, output_cost_per_million=2000)
    config = {
        "model_list": [dep],
        "auth": {"keys": keys, "teams": {"research": {"rpm": 100}}},
        "metrics": {"enabled": True},
    }
    proc = serve(config)
    first = _post(proc, KEY_A)
    streamed = httpx.post(
        proc.base_url + "/chat/completions",
        json={**BODY, "stream": True},
        headers={"authorization": f"Bearer {KEY_A}"},
        timeout=30,
    )
    assert first.status_code == streamed.status_code == 200
    assert streamed.text.rstrip().endswith("data: [DONE]")
    assert _post(proc, KEY_A).status_code == 429  # alice's rpm: 2
    assert _post(proc, KEY_B).status_code == 200
    assert _post(proc, KEY_B).status_code == 429  # bob's rpm for model m: 1
    cost_one = float(first.headers["x-manifold-cost"])
    assert cost_one > 0
    deadline = time.monotonic() + 5
    while True:  # figures are flushed to the registry on scrape; the streamed answer's cost lands at its end
        figures = scrape(proc.url)
        alice = figures.value("manifold_spend_usd_total", key_alias="alice", team="research", model="m")
        if alice >= 2 * cost_one - 1e-9 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert alice == pytest.approx(2 * cost_one)  # the same request twice: once whole, once streamed
    assert figures.value("manifold_spend_usd_total", key_alias="bob", team="", model="m") == pytest.approx(cost_one)
    assert figures.value("manifold_rate_limit_refusals_total", limit="rpm", scope="key") == 1
    assert figures.value("manifold_rate_limit_refusals_total", limit="rpm", scope="key_model") == 1
    assert figures.value("manifold_rate_limit_refusals_total", limit="budget") == 0
