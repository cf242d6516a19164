"""The Responses API's `mcp` tool on a KServe v2 backend (issue 14: "works on every backend"): a real MLServer
1.7.1 serving the Seldon-convention chat runtime (tests/fakes/mlserver_runtimes), which calls the first tool it is
given and, once a tool answered, says what the tool said; the MCP server is the SDK-built one of the MCP tests.

The runtime's call carries fixed arguments (`{"city": "Paris"}`) that the MCP `echo` tool does not accept, so the
round trip also shows invalid arguments going back to the model as the tool's error, as OpenAI does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess, free_port
from tests.e2e.test_mcp import _wait_port
from tests.fakes.mlserver import MLServerProcess

ROOT = Path(__file__).resolve().parent.parent.parent.parent


@pytest.fixture(scope="module")
def mcp_web() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.mcp_http_server", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"},
    )
    try:
        _wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def gateway(mlserver: MLServerProcess, mcp_web: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    config: dict[str, Any] = {
        "model_list": [{"model_name": "chat_llm", "provider": "kserve_v2", "api_base": mlserver.url}],
        "mcp_servers": {"web": {"transport": "streamable_http", "url": f"http://127.0.0.1:{mcp_web}/mcp"}},
    }
    proc = ManifoldProcess(config, tmp_path_factory.mktemp("kserve-mcp"))
    try:
        yield proc.base_url
    finally:
        proc.stop()
        assert "Traceback" not in proc.log()


def test_the_mcp_tool_runs_on_a_kserve_v2_model(gateway: str) -> None:
    client = openai.OpenAI(base_url=gateway, api_key="unused", max_retries=0)
    tool: Any = {"type": "mcp", "server_label": "web", "allowed_tools": ["echo"], "require_approval": "never"}
    response = client.responses.create(model="chat_llm", input="Say something through the tool.", tools=[tool])
    body = response.model_dump(mode="json", exclude_unset=True)
    assert_valid("Response", body)
    kinds = [item["type"] for item in body["output"]]
    assert kinds == ["mcp_list_tools", "mcp_call", "message"], kinds
    listed, call, message = body["output"]
    assert listed["server_label"] == "web"
    assert [t["name"] for t in listed["tools"]] == ["echo"]
    assert call["name"] == "echo" and call["server_label"] == "web"
    assert call["arguments"] == '{"city": "Paris"}'  # what the KServe model asked for
    assert call["error"]  # not the tool's arguments: the tool's error, read by the model
    said = message["content"][0]["text"]
    assert said.startswith("tool said: ")
    assert "text" in said  # the error the model read names the missing argument
    assert response.status == "completed"


def test_the_mcp_tool_streams_on_a_kserve_v2_model(gateway: str) -> None:
    client = openai.OpenAI(base_url=gateway, api_key="unused", max_retries=0)
    tool: Any = {"type": "mcp", "server_label": "web", "allowed_tools": ["echo"], "require_approval": "never"}
    with client.responses.stream(model="chat_llm", input="Stream it.", tools=[tool]) as stream:
        events = [event.type for event in stream]
        final = stream.get_final_response()
    for name in (
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.mcp_call.in_progress",
        "response.mcp_call.failed",
    ):
        assert name in events, (name, events)
    assert [item.type for item in final.output] == ["mcp_list_tools", "mcp_call", "message"]
    assert events[-1] == "response.completed"
