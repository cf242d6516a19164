"""The Responses API's `mcp` tool on the embedded local model (llama.cpp, SmolLM2): the engine lists the tools of
a real MCP server (`mcp-server-time`, stdio), offers them to the model and runs whatever it calls. What a 135M
model decides is not scripted, so the test holds it to the contract, not to an answer: a schema-valid response
that lists the tools first and whose calls, if any, each end completed or failed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.responses_helpers import post_stream
from tests.fakes.mcp_servers import ensure_venv

pytestmark = pytest.mark.local_model


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    config = {"mcp_servers": {"time": {"command": str(ensure_venv() / "mcp-server-time")}}}  # no model_list
    proc = ManifoldProcess(config, Path(tmp_path_factory.mktemp("mcp-local")))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        servers = httpx.get(proc.url + "/health/ready?detail=1", timeout=30).json().get("mcp_servers", [])
        if servers and servers[0]["state"] == "ready":
            break
        time.sleep(0.2)
    yield proc
    proc.stop()


def body() -> dict[str, Any]:
    return {
        "model": "smollm2",
        "input": "What time is it now in Tokyo? Use the get_current_time tool.",
        "tools": [{"type": "mcp", "server_label": "time", "require_approval": "never"}],
        "max_output_tokens": 64,
        "temperature": 0,
    }


def check(response: dict[str, Any]) -> None:
    assert_valid("Response", response)
    assert response["status"] in ("completed", "incomplete")
    listed = response["output"][0]
    assert listed["type"] == "mcp_list_tools" and {t["name"] for t in listed["tools"]} >= {"get_current_time"}
    for item in response["output"][1:]:
        assert item["type"] in ("mcp_call", "message", "function_call")
        if item["type"] == "mcp_call":
            assert item["status"] in ("completed", "failed")
            assert (item["output"] is None) == (item["status"] == "failed")


def test_mcp_tool_on_the_embedded_model(local: ManifoldProcess) -> None:
    with httpx.Client(base_url=local.url, timeout=300) as http:
        resp = http.post("/v1/responses", json=body())
        assert resp.status_code == 200, resp.text
        check(resp.json())
        events = post_stream(http, body())  # each event validated against the spec
        assert events[-1]["type"] in ("response.completed", "response.incomplete")
        check(events[-1]["response"])
