"""A library user's own request layer (docs/library.md's example, run as the page shows it): built into the app
with `build_app(..., layers=[...])`, served by uvicorn on a real socket, called with the official SDK and raw
HTTP. The layer sits inside Manifold's request-id layer: its refusal carries the request's id."""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from manifold.frontend import OpenAIFrontend
from manifold.server.middleware.request_id import request_ids
from tests.conformance.schema import assert_valid
from tests.e2e.asgi_server import serve

PAGE = Path(__file__).resolve().parents[2] / "docs" / "library.md"


def page_module(name: str) -> types.ModuleType:
    """The page's `# name.py` block, executed as a module."""
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), re.S)
    source = next(b for b in blocks if b.startswith(f"# {name}.py\n"))
    module = types.ModuleType(name)
    exec(compile(source, f"{PAGE}:{name}.py", "exec"), module.__dict__)
    return module


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[types.ModuleType, str]]:
    monkeypatch.chdir(tmp_path)  # the page's app keeps its store in ./data
    module = page_module("team_gateway")
    with serve(module.app) as running:
        yield module, running.url


def test_the_users_layer_sits_inside_the_request_id_layer(gateway: tuple[types.ModuleType, str]) -> None:
    module, _ = gateway
    layers = module.app.layers
    assert layers[-1] is module.RequireTeam  # the innermost: inside request ids and authentication
    assert request_ids in layers[:-1]


def test_a_refusal_is_openai_shaped_and_carries_the_request_id(gateway: tuple[types.ModuleType, str]) -> None:
    _, url = gateway
    resp = httpx.get(url + "/v1/models", headers={"x-request-id": "team-test-1"})
    assert resp.status_code == 401
    assert resp.headers["x-request-id"] == "team-test-1"
    assert resp.json() == {
        "error": {
            "message": "Send your team in the x-team header.",
            "type": "authentication_error",
            "param": None,
            "code": "missing_team",
        }
    }
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        client.models.list()
    assert caught.value.code == "missing_team"
    assert caught.value.request_id is not None and caught.value.request_id.startswith("req_")


def test_an_admitted_request_is_served_and_tagged_by_the_layer(gateway: tuple[types.ModuleType, str]) -> None:
    _, url = gateway
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, default_headers={"x-team": "search"})
    raw = client.models.with_raw_response.list()
    assert raw.headers["x-team"] == "search"
    assert raw.headers["x-request-id"].startswith("req_")
    body = raw.http_response.json()
    assert_valid("ListModelsResponse", body)
    assert raw.parse().data == []
    assert httpx.get(url + "/health").json() == {"status": "ok"}  # the layer lets health checks through


def test_the_handler_frontend_takes_the_same_layers(tmp_path: Path) -> None:
    module = page_module("team_gateway")
    app = OpenAIFrontend(
        lambda messages: "hi", prefix="/v1", storage=f"sqlite+aiosqlite:///{tmp_path}/f.db", layers=[module.RequireTeam]
    )
    with serve(app) as running:
        refused = httpx.post(running.url + "/v1/chat/completions", json={"model": "m", "messages": []})
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "missing_team"
        assert refused.headers["x-request-id"].startswith("req_")
        client = openai.OpenAI(
            base_url=running.url + "/v1", api_key="unused", max_retries=0, default_headers={"x-team": "ml"}
        )
        raw = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hello"}]
        )
        assert raw.headers["x-team"] == "ml"
        body = raw.http_response.json()
        assert_valid("CreateChatCompletionResponse", body)
        assert body["choices"][0]["message"]["content"] == "hi"
