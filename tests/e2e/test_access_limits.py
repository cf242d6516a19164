"""Rate limits and budgets across replicas: two `manifold serve` processes sharing the real Redis (and a
PostgreSQL database), static keys from the config, an upstream that counts what reaches it."""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import redis

from tests.databases import storage_settings
from tests.e2e.conftest import ManifoldProcess
from tests.fakes.counting_upstream import COMPLETION_TOKENS, PROMPT_TOKENS, CountingUpstream

REDIS_URL = "redis://127.0.0.1:6379/0"
KEY = "sk-static-limits-0123456789abcdef"
RESET = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


@pytest.fixture(scope="module")
def upstream() -> Iterator[CountingUpstream]:
    up = CountingUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def prefix() -> Iterator[str]:
    """This test's own Redis keys (deleted afterwards: nothing else in the shared Redis is touched)."""
    p = f"manifold-test-{uuid.uuid4().hex[:12]}:"
    yield p
    r = redis.Redis.from_url(REDIS_URL)
    for key in r.scan_iter(match=p + "*"):
        r.delete(key)
    r.close()


def _config(upstream: CountingUpstream, name: str, key: dict[str, Any], prefix: str, **dep: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": "m",
                "provider": "openai",
                "model": "gpt-test",
                "api_base": upstream.base(name),
                "api_key": "sk-upstream-limits-secret",
                "input_cost_per_million": 1.0,
                "output_cost_per_million": 2.0,
                **dep,
            }
        ],
        "auth": {"keys": [{"key": "${LIMITS_KEY}", "alias": "my-alias", **key}]},
        # closed: a Redis failure (a timeout under this load, say) would show as 503s, never as silent passes
        "redis": {"url": REDIS_URL, "key_prefix": prefix, "timeout_s": 10, "on_redis_error": "closed"},
        "server": {"access_log": False},
    }


class Replicas:
    def __init__(self, config: dict[str, Any], workdir: Path, storage: dict[str, str]) -> None:
        config = {**config, "storage": storage}
        self.procs = [ManifoldProcess(config, workdir, env={"LIMITS_KEY": KEY}) for _ in range(2)]

    def stop(self) -> None:
        for p in self.procs:
            p.stop()

    def logs(self) -> str:
        return "\n".join(p.log() for p in self.procs)


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Any]:
    started: list[Replicas] = []
    with storage_settings("postgres", tmp_path / "data") as storage:

        def start(config: dict[str, Any]) -> Replicas:
            r = Replicas(config, tmp_path, storage)
            started.append(r)
            return r

        try:
            yield start
        finally:
            for r in started:
                r.stop()
    for r in started:
        assert KEY not in r.logs()


async def _post_many(urls: list[str], n: int, stream: bool = False) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": stream}
        headers = {"authorization": f"Bearer {KEY}"}
        return list(
            await asyncio.gather(
                *(
                    client.post(urls[i % len(urls)] + "/v1/chat/completions", json=body, headers=headers)
                    for i in range(n)
                )
            )
        )


def test_rpm_is_exact_across_two_replicas(upstream: CountingUpstream, replicas: Any, prefix: str) -> None:
    name = f"rpm-{prefix}"
    group = replicas(_config(upstream, name, {"rpm": 100}, prefix))
    answers = asyncio.run(_post_many([p.url for p in group.procs], 400))
    ok = [a for a in answers if a.status_code == 200]
    refused = [a for a in answers if a.status_code == 429]
    assert len(ok) == 100
    assert len(refused) == 300
    assert upstream.count(name) == 100
    for a in ok:
        assert a.headers["x-ratelimit-limit-requests"] == "100"
        assert 0 <= int(a.headers["x-ratelimit-remaining-requests"]) < 100
        assert RESET.match(a.headers["x-ratelimit-reset-requests"])
        assert a.headers["x-manifold-cost"] == "0.00002"  # 10 tokens at $1/M + 5 at $2/M
    remaining = sorted(int(a.headers["x-ratelimit-remaining-requests"]) for a in ok)
    assert remaining == list(range(100))  # each admission saw every earlier one, on either replica
    for a in refused:
        error = a.json()["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert error["type"] == "requests"
        assert error["message"].startswith(
            "Rate limit reached for requests per minute (key my-alias): Limit 100, Used 100, Requested 1."
        )
        assert int(a.headers["retry-after"]) >= 1
        assert a.headers["x-ratelimit-limit-requests"] == "100"
        assert a.headers["x-ratelimit-remaining-requests"] == "0"
        assert RESET.match(a.headers["x-ratelimit-reset-requests"])
    # The official SDK reads the refusal as its typed error, with the code.
    with (
        openai.OpenAI(base_url=group.procs[0].base_url, api_key=KEY, max_retries=0) as client,
        pytest.raises(openai.RateLimitError) as caught,
    ):
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "rate_limit_exceeded"


def test_parallel_requests_never_exceed_the_limit(upstream: CountingUpstream, replicas: Any, prefix: str) -> None:
    name = f"slow-{prefix}@0.5"
    group = replicas(_config(upstream, name, {"max_parallel_requests": 5}, prefix))
    urls = [p.url for p in group.procs]
    upstream.reset()
    for stream in (False, True):
        answers = asyncio.run(_post_many(urls, 30, stream))
        ok = [a for a in answers if a.status_code == 200]
        assert 5 <= len(ok) < 30
        assert upstream.max_in_flight <= 5
        for a in answers:
            if a.status_code == 429:
                assert a.json()["error"]["message"].startswith(
                    "Rate limit reached for requests in flight (key my-alias): Limit 5, Used 5, Requested 1."
                )
                assert a.headers["retry-after"] == "1"
    # Every slot was given back: five at once pass again.
    answers = asyncio.run(_post_many(urls, 5))
    assert [a.status_code for a in answers] == [200] * 5


def test_budget_admits_exactly_ten_requests(upstream: CountingUpstream, replicas: Any, prefix: str) -> None:
    name = f"budget-{prefix}"
    per_request = PROMPT_TOKENS * 1 + COMPLETION_TOKENS * 2  # micro-dollars at $1/M in, $2/M out
    budget = f"{per_request * 10 / 1_000_000:.6f}"
    group = replicas(_config(upstream, name, {"max_budget": budget, "budget_duration": "daily"}, prefix))
    accepted = 0
    with (
        openai.OpenAI(base_url=group.procs[0].base_url, api_key=KEY, max_retries=0) as one,
        openai.OpenAI(base_url=group.procs[1].base_url, api_key=KEY, max_retries=0) as two,
    ):
        for i in range(14):
            client = one if i % 2 else two
            try:
                if i % 3 == 0:  # streamed, without asking for usage: its cost counts all the same
                    chunks = list(
                        client.chat.completions.create(
                            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
                        )
                    )
                    assert all(c.usage is None for c in chunks)
                else:
                    client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
                accepted += 1
            except openai.RateLimitError as exc:
                assert i >= 10
                assert exc.code == "insufficient_quota"
                assert exc.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert accepted == 10
    assert upstream.count(name) == 10


def test_a_budget_that_never_resets_is_kept(upstream: CountingUpstream, replicas: Any, prefix: str) -> None:
    """A `max_budget` without `budget_duration`: its spend is kept for good (the counter in Redis does not
    expire for a century), so the budget refuses on every replica, also after a while. Before: it was counted in
    a period that had ended in 1980, its counter expired a second after each request, and it never refused."""
    name = f"forever-{prefix}"
    per_request = PROMPT_TOKENS * 1 + COMPLETION_TOKENS * 2
    group = replicas(_config(upstream, name, {"max_budget": f"{per_request * 2 / 1_000_000:.6f}"}, prefix))
    message = [{"role": "user", "content": "hi"}]
    with (
        openai.OpenAI(base_url=group.procs[0].base_url, api_key=KEY, max_retries=0) as one,
        openai.OpenAI(base_url=group.procs[1].base_url, api_key=KEY, max_retries=0) as two,
    ):
        one.chat.completions.create(model="m", messages=message)  # type: ignore[arg-type]
        two.chat.completions.create(model="m", messages=message)  # type: ignore[arg-type]
        time.sleep(1.5)
        for client in (one, two):
            with pytest.raises(openai.RateLimitError) as refused:
                client.chat.completions.create(model="m", messages=message)  # type: ignore[arg-type]
            assert refused.value.code == "insufficient_quota"
    (counter,) = redis.Redis.from_url(REDIS_URL).keys(f"{prefix}budget:*")
    assert redis.Redis.from_url(REDIS_URL).ttl(counter) > 100 * 365 * 86400
    assert upstream.count(name) == 2
