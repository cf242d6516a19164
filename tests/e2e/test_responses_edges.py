"""Responses API edges: the routing headers on every answer, each output item finished before the next opens,
and errors from a python handler that name the client's route."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.e2e.conftest import ManifoldProcess
from tests.e2e.responses_helpers import typed_events

ROOT = Path(__file__).resolve().parents[2]
TOOLS = [
    {"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}},
    {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}},
]


# -- x-manifold-deployment / x-manifold-attempts (docs/routing.md) ------------------------------------------------


@pytest.mark.parametrize("model", ["fake-echo", "fake-native"])
@pytest.mark.parametrize("stream", [False, True])
def test_responses_answers_name_the_deployment(http: httpx.Client, model: str, stream: bool) -> None:
    resp = http.post("/v1/responses", json={"model": model, "input": "hi", "stream": stream, "store": False})
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-manifold-deployment"] == f"{model}#0"
    assert resp.headers["x-manifold-attempts"] == "1"


def test_background_answers_carry_no_deployment(stored_http: httpx.Client) -> None:
    # A background response is answered (`queued`) before any deployment is tried: there is none to name.
    resp = stored_http.post("/v1/responses", json={"model": "fake-echo", "input": "hi", "background": True})
    assert resp.status_code == 200 and resp.json()["status"] == "queued"
    assert "x-manifold-deployment" not in resp.headers and "x-manifold-attempts" not in resp.headers


# -- parallel function calls: each item done before the next is added -----------------------------------------------


def tool_request(stream: bool) -> dict[str, Any]:
    return {"model": "fake-tools", "input": "weather and time?", "tools": TOOLS, "stream": stream, "store": False}


def test_parallel_calls_finish_in_order(http: httpx.Client) -> None:
    resp = http.post("/v1/responses", json=tool_request(True))
    assert resp.status_code == 200, resp.text
    events = [(e["type"], e.get("output_index")) for e in typed_events(resp.text)]
    deltas = [e for e in events if e[0] == "response.function_call_arguments.delta"]
    assert (
        deltas
        == [("response.function_call_arguments.delta", 0)] * 4 + [("response.function_call_arguments.delta", 1)] * 4
    )
    assert [e for e in events if e[0] != "response.function_call_arguments.delta"] == [
        ("response.created", None),
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.function_call_arguments.done", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.function_call_arguments.done", 1),
        ("response.output_item.done", 1),
        ("response.completed", None),
    ]
    assert events.index(("response.output_item.done", 0)) < events.index(("response.function_call_arguments.delta", 1))


def test_sdk_stream_of_parallel_calls_equals_the_answer(client: openai.OpenAI) -> None:
    with client.responses.stream(**{k: v for k, v in tool_request(False).items() if k != "stream"}) as stream:
        done_items = [e.item for e in stream if e.type == "response.output_item.done"]
        streamed = stream.get_final_response()
    answered = client.responses.create(**tool_request(False))

    def shape(response: Any) -> list[tuple[str, str, str, str]]:
        return [(o.type, o.name, o.arguments, o.status) for o in response.output]

    assert shape(streamed) == shape(answered)
    assert [(i.name, i.arguments) for i in done_items] == [(o.name, o.arguments) for o in answered.output]
    assert len(answered.output) == 2


# -- a python handler failing during a Responses stream --------------------------------------------------------------


@pytest.fixture(scope="module")
def handler_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    config = {
        "model_list": [
            {"model_name": "breaks", "provider": "python", "handler": "tests.e2e.failing_handlers:fails_mid_stream"}
        ],
        "server": {"log_level": "info"},
    }
    # The handler module is found from the repository root; this checkout's code runs, not an installed one.
    path = os.pathsep.join(filter(None, [str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH")]))
    proc = ManifoldProcess(config, tmp_path_factory.mktemp("handler"), env={"PYTHONPATH": path})
    yield proc
    proc.stop()


@pytest.mark.parametrize(
    ("path", "body", "route"),
    [
        ("/v1/responses", {"model": "breaks", "input": "hi", "stream": True, "store": False}, "POST /v1/responses"),
        ("/v1/completions", {"model": "breaks", "prompt": "hi", "stream": True}, "POST /completions"),
    ],
)
def test_handler_failure_names_the_clients_route(
    handler_gateway: ManifoldProcess, path: str, body: dict[str, Any], route: str
) -> None:
    with httpx.Client(base_url=handler_gateway.url, timeout=20) as http:
        resp = http.post(path, json=body)
    assert resp.status_code == 200
    if path == "/v1/responses":
        failed = typed_events(resp.text)[-1]
        assert failed["type"] == "response.failed"
        message = failed["response"]["error"]["message"]
    else:
        last = [line for line in resp.text.splitlines() if line.startswith("data: ")][-1]
        message = json.loads(last.removeprefix("data: "))["error"]["message"]
    assert message.startswith(f"The handler failed serving {route} (as create_chat_completion)"), message
    assert "/chat/completions" not in message
