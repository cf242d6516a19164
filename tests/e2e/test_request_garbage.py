"""A served request leaves no reference cycle behind: once it is answered, reference counting alone frees its
scope, the server's per-request object and Manifold's record of it. A cycle would keep the whole request alive
until the cyclic collector ran, and make that collector run more often (issue 13 measured one in the observing
layer costing 29 000 instructions a request in the collector).

The app runs with everything that observes a request on (metrics, the JSON access log), served by uvicorn on a
real socket in this process, so that the collector's findings can be read; the client sends plain and streamed
requests."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manifold.observability.record import RequestRecord
from manifold.server.app import build_app
from manifold.validation import parse_config
from tests.e2e.asgi_server import serve
from tests.fakes.counting_upstream import CountingUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[CountingUpstream]:
    up = CountingUpstream().start()
    yield up
    up.stop()


def _cycle_members(garbage: list[object]) -> list[str]:
    """What of a request the collector found unreachable: the server's per-request objects (uvicorn's
    `RequestResponseCycle`), Manifold's `RequestRecord`, an ASGI scope (a dict with the request id key)."""
    found = []
    for obj in garbage:
        kind = type(obj)
        if kind is RequestRecord or kind.__name__ == "RequestResponseCycle":
            found.append(kind.__name__)
        elif kind is dict and "manifold.request_id" in obj:  # type: ignore[operator]
            found.append("scope")
    return found


def assert_no_cycle(requests: Callable[[], None]) -> None:
    """Run `requests` with the cyclic collector off, then collect: nothing of a request may be among what the
    collector finds unreachable (`gc.DEBUG_SAVEALL` keeps it in `gc.garbage` to be read)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        requests()
        gc.collect()
        found = _cycle_members(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert found == [], f"requests kept alive by reference cycles: {sorted(set(found))} ({len(found)} objects)"


KEY = "sk-garbage-test-0123456789"


@pytest.mark.parametrize("api", ["chat", "responses"])
@pytest.mark.parametrize("access", [False, True], ids=["observed", "observed+access+ledger"])
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_observed_request_leaves_no_cycle(
    upstream: CountingUpstream, stream: bool, access: bool, api: str, tmp_path: Path
) -> None:
    raw: dict[str, Any] = {
        "model_list": [
            {
                "model_name": "m",
                "provider": "openai",
                "api_base": upstream.base("m"),
                "api_key": "sk-up",
                "input_cost_per_million": 1.0,
                "output_cost_per_million": 2.0,
            }
        ],
        "server": {"log_format": "json", "access_log": True},
        "metrics": {"enabled": True},
        "storage": {"data_dir": str(tmp_path)},
    }
    if access:  # a key with every limit and a budget (counted in this process), and the usage ledger
        raw["auth"] = {
            "keys": [
                {
                    "key": KEY,
                    "alias": "garbage",
                    "rpm": 1_000_000,
                    "tpm": 1_000_000_000,
                    "max_parallel_requests": 1000,
                    "max_budget": 1000,
                    "budget_duration": "daily",
                }
            ]
        }
        raw["ledger"] = {"enabled": True}
    app = build_app(parse_config(raw))
    assert app.observer is not None and app.observer.metrics is not None and app.observer.access_log is not None
    if api == "chat":
        path, body = "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    else:  # the Responses API (stored, so that the store's writes are part of the request too)
        path, body = "/v1/responses", {"model": "m", "input": "hi"}
    body["stream"] = stream
    headers = {"Authorization": f"Bearer {KEY}"} if access else {}
    with serve(app) as running, httpx.Client(base_url=running.url, headers=headers) as client:
        for _ in range(3):  # warm: whatever is made once per process is made now
            assert client.post(path, json=body).status_code == 200

        def requests() -> None:
            for _ in range(20):
                resp = client.post(path, json=body)
                assert resp.status_code == 200
                if not stream:
                    assert json.loads(resp.content)["object"] == ("chat.completion" if api == "chat" else "response")

        assert_no_cycle(requests)


TIGHT_KEY = "sk-garbage-tight-0123456789"


def _error_app(upstream: CountingUpstream, tmp_path: Path, observed: bool = True) -> Any:
    return build_app(
        parse_config(
            {
                # Unobserved: no observing layer at all (the router and the SSE writer are the same).
                **({} if observed else {"ledger": {"enabled": False}}),
                "model_list": [
                    {"model_name": "m", "provider": "openai", "api_base": upstream.base("m"), "api_key": "sk-up"},
                    # Nothing listens on port 9: the attempt fails to connect (a 502 after the router's tries).
                    {"model_name": "down", "provider": "openai", "api_base": "http://127.0.0.1:9/v1", "api_key": "x"},
                    {  # answers after 2 s, waited on for 0.05 s: a 504
                        "model_name": "slow",
                        "provider": "openai",
                        "api_base": upstream.base("slow@2"),
                        "api_key": "x",
                        "timeouts": {"first_byte": 0.05},
                    },
                    {  # a path the upstream does not serve: its 404 page, not an OpenAI answer
                        "model_name": "lost",
                        "provider": "openai",
                        "api_base": upstream.url + "/nowhere/v1",
                        "api_key": "x",
                    },
                ],
                "router": {"num_retries": 0, "allowed_fails": 1000},  # no cooldown: every request tries
                "server": {"log_format": "json", "access_log": observed},
                "metrics": {"enabled": observed},
                "storage": {"data_dir": str(tmp_path)},
                "auth": {
                    "keys": [
                        {"key": KEY, "alias": "garbage", "rpm": 1_000_000},
                        {"key": TIGHT_KEY, "alias": "tight", "rpm": 1},  # its first request spends the minute
                    ]
                },
            }
        )
    )


_ERRORS: dict[str, tuple[int | None, str | None, dict[str, Any]]] = {
    # what is wrong: (status, key, body)
    "no key": (401, None, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    "unknown model": (404, KEY, {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
    "bad body": (400, KEY, {"model": "m", "messages": "not a list"}),
    "rate limited": (429, TIGHT_KEY, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
    "upstream down": (502, KEY, {"model": "down", "messages": [{"role": "user", "content": "hi"}]}),
    "upstream down, streamed": (
        502,
        KEY,
        {"model": "down", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ),
    "upstream too slow": (504, KEY, {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}),
    "upstream 404": (None, KEY, {"model": "lost", "messages": [{"role": "user", "content": "hi"}]}),
}


@pytest.mark.parametrize("observed", [True, False], ids=["observed", "unobserved"])
@pytest.mark.parametrize("error", list(_ERRORS))
def test_a_refused_or_failed_request_leaves_no_cycle(
    upstream: CountingUpstream, error: str, observed: bool, tmp_path: Path
) -> None:
    """The error paths (a refusal, bad input, an upstream that fails) are as common as answers under load (a
    rate-limited client retries in a loop): they too are freed by reference counting alone."""
    status, key, body = _ERRORS[error]
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    app = _error_app(upstream, tmp_path, observed)
    assert (app.observer is not None) is observed
    with serve(app) as running, httpx.Client(base_url=running.url, headers=headers) as client:
        for _ in range(3):  # warm (and, rate limited, the one request of the minute spent)
            client.post("/v1/chat/completions", json=body)

        def requests() -> None:
            for _ in range(20):
                resp = client.post("/v1/chat/completions", json=body)
                if status is None:  # whichever error the gateway makes of it
                    assert resp.status_code >= 400, resp.text
                else:
                    assert resp.status_code == status, resp.text
                assert "error" in resp.json()

        assert_no_cycle(requests)


def test_the_read_routes_leave_no_cycle(upstream: CountingUpstream, tmp_path: Path) -> None:
    """The models list, a stored chat completion and its messages, a stored response and its input items, a
    response's input token count: each read answered, none of them kept alive by a cycle."""
    app = _error_app(upstream, tmp_path)
    headers = {"Authorization": f"Bearer {KEY}"}
    with serve(app) as running, httpx.Client(base_url=running.url, headers=headers) as client:
        chat = client.post(
            "/v1/chat/completions", json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "store": True}
        ).json()
        response = client.post("/v1/responses", json={"model": "m", "input": "hi"}).json()
        reads = [
            ("GET", "/v1/models", None),
            ("GET", "/v1/models/m", None),
            ("GET", f"/v1/chat/completions/{chat['id']}", None),
            ("GET", f"/v1/chat/completions/{chat['id']}/messages", None),
            ("GET", "/v1/chat/completions?model=m", None),
            ("GET", f"/v1/responses/{response['id']}", None),
            ("GET", f"/v1/responses/{response['id']}/input_items", None),
            ("POST", "/v1/responses/input_tokens", {"model": "m", "input": "hello there"}),
            ("GET", "/v1/responses/resp_missing", None),  # a 404 on the way
        ]

        def read_all() -> list[int]:
            return [client.request(method, path, json=body).status_code for method, path, body in reads]

        assert read_all()[:-1] == [200] * (len(reads) - 1)  # warm

        def requests() -> None:
            for _ in range(5):
                statuses = read_all()
                assert statuses == [200] * (len(reads) - 1) + [404], statuses

        assert_no_cycle(requests)
