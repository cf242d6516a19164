"""How many durable writes each stateful request makes (the writer counts them), so that one more write per
request cannot slip in unnoticed: a stored chat completion 1, a stored response 1 (streamed or not, chained or
not), a background response 2 (queued, then final; `in_progress` is not written)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from manifold.server.app import ManifoldApp, build_app
from manifold.validation import parse_config
from tests.e2e.asgi_server import serve
from tests.fakes.openai_upstream import FakeUpstream


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture
def served(upstream: FakeUpstream, tmp_path: Path) -> Iterator[tuple[ManifoldApp, httpx.Client]]:
    config = parse_config(
        {
            "model_list": [{"model_name": "fake-echo", "provider": "openai", "api_base": upstream.base("echo")}],
            "storage": {"data_dir": str(tmp_path / "data")},
            "responses": {"background_lease_s": 600},  # no lease renewal during the test
        }
    )
    app = build_app(config)
    with serve(app) as running, httpx.Client(base_url=running.url + "/v1", timeout=30) as http:
        # Open the store first: its migration is not a request's write.
        assert http.get("/chat/completions").status_code == 200
        yield app, http


def writes(app: ManifoldApp) -> int:
    assert app.store._writes is not None
    return app.store._writes.writes


def counted(app: ManifoldApp, call: Any) -> tuple[int, Any]:
    before = writes(app)
    result = call()
    return writes(app) - before, result


def test_writes_per_request(served: tuple[ManifoldApp, httpx.Client]) -> None:
    app, http = served
    chat = {"model": "fake-echo", "messages": [{"role": "user", "content": "hi"}], "store": True}
    n, resp = counted(app, lambda: http.post("/chat/completions", json={**chat, "metadata": {"k": "v"}}))
    assert resp.status_code == 200 and n == 1
    n, resp = counted(app, lambda: http.post("/chat/completions", json={**chat, "stream": True}))
    assert resp.status_code == 200 and n == 1
    n, plain = counted(app, lambda: http.post("/chat/completions", json={**chat, "store": False}))
    assert plain.status_code == 200 and n == 0

    n, first = counted(app, lambda: http.post("/responses", json={"model": "fake-echo", "input": "one"}))
    assert first.status_code == 200 and n == 1
    body = {"model": "fake-echo", "input": "two", "previous_response_id": first.json()["id"], "stream": True}
    n, chained = counted(app, lambda: http.post("/responses", json=body))
    assert chained.status_code == 200 and "response.completed" in chained.text and n == 1

    before = writes(app)
    queued = http.post("/responses", json={"model": "fake-echo", "input": "three", "background": True})
    assert queued.status_code == 200 and queued.json()["status"] == "queued"
    deadline = time.monotonic() + 20
    while http.get(f"/responses/{queued.json()['id']}").json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    deadline = time.monotonic() + 5
    while writes(app) - before < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.2)  # a third write, if there were one, would have come by now
    assert writes(app) - before == 2
