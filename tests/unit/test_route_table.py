"""One route table (manifold.api.operations) drives the gateway's routes, the handler frontend's and the route
list in docs/routes.md; a table entry without a server function (or a function without an entry) is an error."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from typing import Any

import pytest

import manifold
from manifold.api.operations import (
    ADMIN_OPERATIONS,
    ALL_OPERATIONS,
    API_OPERATIONS,
    GROUPS,
    KSERVE_OPERATIONS,
    ROOT_OPERATIONS,
)
from manifold.config import OpenAIDeployment
from manifold.frontend import Endpoint, OpenAIFrontend
from manifold.providers.registry import create_provider
from manifold.routing.router import Router
from manifold.server import handlers
from manifold.server.app import ManifoldApp
from manifold.server.routes import Route

ROOT = Path(__file__).resolve().parents[2]


def build(**config: Any) -> ManifoldApp:
    return manifold.build_app(manifold.parse_config({"model_list": [], **config}))


def mounted(app: ManifoldApp) -> set[tuple[str, str]]:
    return {(r.method, r.path) for r in app.routes}


def test_every_operation_has_a_handler_and_every_handler_an_operation() -> None:
    handlers.check()
    assert len({op.name for op in ALL_OPERATIONS}) == len(ALL_OPERATIONS)
    assert len({(op.method, op.path) for op in ALL_OPERATIONS}) == len(ALL_OPERATIONS)


def test_a_missing_or_extra_handler_is_an_error() -> None:
    missing = {k: v for k, v in handlers.HANDLERS.items() if k != "create_image"}
    with pytest.raises(RuntimeError, match="no handler for \\['create_image'\\]"):
        handlers.check(missing)
    extra = {**handlers.HANDLERS, "create_video": handlers.HANDLERS["create_image"]}
    with pytest.raises(RuntimeError, match="no operation for \\['create_video'\\]"):
        handlers.check(extra)


def test_the_gateway_mounts_the_table_under_each_prefix() -> None:
    app = build(server={"prefixes": ["/v1", "/openai/v1"]}, metrics={"enabled": False})
    expected = {(op.method, p + op.path) for p in ("/v1", "/openai/v1") for op in API_OPERATIONS}
    expected |= {(op.method, op.path) for op in ROOT_OPERATIONS + KSERVE_OPERATIONS + ADMIN_OPERATIONS}
    assert mounted(app) == expected
    by_key = {(r.method, r.path): r for r in app.routes}
    for op in API_OPERATIONS:
        route = by_key[(op.method, "/openai/v1" + op.path)]
        assert route.handler is handlers.HANDLERS[op.name]
        assert route.cancellable == op.cancellable


def test_config_selects_the_per_model_urls_and_the_metrics_route() -> None:
    app = build(server={"kserve_urls": False}, metrics={"enabled": True, "path": "/scrape"})
    paths = mounted(app)
    assert not any(path.startswith("/v2/") for _, path in paths)
    assert ("GET", "/scrape") in paths


def test_routes_given_at_construction_are_all_that_is_mounted() -> None:
    only = [handlers.route(op) for op in ROOT_OPERATIONS]
    app = ManifoldApp(manifold.parse_config({"model_list": []}), routes=only)
    assert mounted(app) == {("GET", "/health"), ("GET", "/health/ready")}
    models = next(op for op in API_OPERATIONS if op.name == "list_models")
    app.add_route(handlers.route(models, "/v9"))
    app.add_route(Route("GET", "/v9/models", handlers.HANDLERS["health"]))  # replaces the one at that key
    assert [(r.method, r.path, r.handler) for r in app.routes][-1] == ("GET", "/v9/models", handlers.HANDLERS["health"])
    assert len(app.routes) == 3


def test_the_frontend_mounts_the_tables_groups(tmp_path: Path) -> None:
    assert tuple(e.value for e in Endpoint) == GROUPS
    storage = f"sqlite+aiosqlite:///{tmp_path}/f.db"
    app = OpenAIFrontend(lambda messages: "hi", prefix="/v1", storage=storage)
    expected = {(op.method, op.path) for op in ROOT_OPERATIONS}
    expected |= {(op.method, "/v1" + op.path) for op in API_OPERATIONS}
    assert set(app.routes) == expected
    partial = OpenAIFrontend(lambda messages: "hi", [Endpoint.EMBEDDINGS, "models"], storage=storage)
    groups = {"embeddings", "models"}
    assert set(partial.routes) == {(op.method, op.path) for op in ROOT_OPERATIONS} | {
        (op.method, op.path) for op in API_OPERATIONS if op.group in groups
    }
    by_key = {(r.method, r.path): r for r in app.app.routes}
    for op in API_OPERATIONS:
        assert by_key[(op.method, "/v1" + op.path)].cancellable == op.cancellable


def test_a_router_built_from_given_providers_holds_each_once() -> None:
    deployment = OpenAIDeployment(model_name="a", api_base="http://127.0.0.1:9/v1")
    provider = create_provider(deployment)
    names = [OpenAIDeployment(model_name=n, api_base="http://127.0.0.1:9/v1") for n in ("a", "b", "c")]
    router = Router(names, providers=[provider] * 3)
    assert router.providers == [provider]
    assert set(router.groups) == {"a", "b", "c"}
    assert all(g.providers == [provider] for g in router.groups.values())
    with pytest.raises(ValueError, match="2 providers for 3 deployments"):
        Router(names, providers=[provider, provider])


def test_the_route_list_in_the_docs_is_the_tables() -> None:
    path = ROOT / "scripts" / "gen-route-docs"
    loader = importlib.machinery.SourceFileLoader("gen_route_docs", str(path))
    spec = importlib.util.spec_from_loader("gen_route_docs", loader)
    assert spec is not None
    gen = importlib.util.module_from_spec(spec)
    loader.exec_module(gen)
    page = (ROOT / "docs" / "routes.md").read_text(encoding="utf-8")
    assert gen.render(page) == page, "docs/routes.md differs from the route table: run scripts/gen-route-docs"
    for op in ALL_OPERATIONS:
        assert f"| `{op.name}` |" in page
    stale = page.replace("| `create_image` |", "| `create_picture` |")
    assert gen.render(stale) == page
