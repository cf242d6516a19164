"""Configuring an `OpenAIFrontend`: prefix and group validation at construction, additive configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from manifold.frontend import Endpoint, OpenAIFrontend


def answer(messages: Any) -> str:
    return "x"


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path}/x.db"


@pytest.mark.parametrize("prefix", ["v1", "", "/v1/", "api/v1"])
def test_a_bad_prefix_is_an_error_at_construction(prefix: str, storage: str) -> None:
    with pytest.raises(ValueError, match="OpenAI API prefix must") as info:
        OpenAIFrontend(answer, prefix=prefix, storage=storage)
    assert repr(prefix) in str(info.value)


def test_the_prefix_error_says_what_to_do(storage: str) -> None:
    with pytest.raises(ValueError) as info:
        OpenAIFrontend(answer, prefix="v1", storage=storage)
    assert str(info.value) == "OpenAI API prefix must start with '/' (e.g. '/v1'): 'v1'"
    app = OpenAIFrontend(answer, prefix="/v1", storage=storage)
    with pytest.raises(ValueError, match="must start with '/'"):
        app.add_endpoints(prefix="v2")


def test_groups_and_routes(storage: str) -> None:
    app = OpenAIFrontend(answer, [Endpoint.CHAT_COMPLETIONS], prefix="/v1", storage=storage)
    assert sorted(app.routes) == [
        ("DELETE", "/v1/chat/completions/{completion_id}"),
        ("GET", "/health"),
        ("GET", "/health/ready"),
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/chat/completions/{completion_id}"),
        ("GET", "/v1/chat/completions/{completion_id}/messages"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions/{completion_id}"),
    ]
    with pytest.raises(ValueError, match="unknown endpoint group 'chat'"):
        OpenAIFrontend(answer, ["chat"], storage=storage)


def test_configuration_is_additive(storage: str) -> None:
    app = OpenAIFrontend(answer, ["models"], prefix="/v1", storage=storage)
    app.add_route("/ping", "GET", lambda: "pong")
    app.add_endpoints([Endpoint.EMBEDDINGS])  # under the frontend's prefix
    app.add_endpoints(["models"], prefix="/")
    app.add_endpoints([Endpoint.RESPONSES], prefix="/v2")
    routes = set(app.routes)
    assert {("GET", "/ping"), ("GET", "/v1/models"), ("POST", "/v1/embeddings"), ("GET", "/models")} <= routes
    assert ("POST", "/v2/responses") in routes and ("POST", "/v2/responses/compact") in routes
    assert ("POST", "/v1/responses") not in routes
    all_groups = OpenAIFrontend(answer, storage=storage)
    assert len(all_groups.routes) == 2 + 18  # /health, /health/ready and every operation, at the root


def test_other_arguments_are_checked(storage: str) -> None:
    with pytest.raises(ValueError, match="mandatory_status must be 422 or 400"):
        OpenAIFrontend(answer, mandatory_status=404, storage=storage)
    with pytest.raises(ValueError, match="models must be a non-empty list"):
        OpenAIFrontend(answer, models="gpt", storage=storage)
    with pytest.raises(TypeError, match="neither callable"):
        OpenAIFrontend(42, storage=storage)
    with pytest.raises(TypeError, match="not callable"):
        OpenAIFrontend(answer, storage=storage).add_route("/x", "GET", "not a function")  # type: ignore[arg-type]


def test_public_names() -> None:
    import manifold.frontend

    assert sorted(manifold.frontend.__all__) == ["Endpoint", "HTTPError", "OpenAIFrontend", "Response"]
    assert [e.name for e in Endpoint] == [
        "CHAT_COMPLETIONS",
        "RESPONSES",
        "COMPLETIONS",
        "EMBEDDINGS",
        "IMAGES",
        "MODELS",
    ]
