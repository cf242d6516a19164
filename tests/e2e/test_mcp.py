"""MCP tools through the Responses API on a backend with no MCP of its own (a `provider: python` model that
decides its tool calls from a script), against real MCP servers: `mcp-server-time` and `mcp-server-git` from
PyPI (stdio) and a streamable-HTTP server built with the SDK (tests/fakes/mcp_http_server.py). Every body and
stream event is validated against OpenAI's schemas; the official `openai` SDK is the client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess, free_port
from tests.e2e.responses_helpers import comparable, post_stream
from tests.fakes.anthropic_upstream import FakeAnthropic
from tests.fakes.mcp_servers import ensure_venv
from tests.fakes.openai_upstream import TOOL_ARGUMENTS, FakeUpstream

ROOT = Path(__file__).resolve().parent.parent.parent
ENV = {"PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}", "WEB_TOKEN": "sk-web-secret-7f3a"}
MODEL = "scripted"
ANTHROPIC_KEY = "sk-ant-test"


def _wait_port(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the MCP HTTP server exited with {proc.returncode}")
        try:
            httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("the MCP HTTP server did not start")


@pytest.fixture(scope="module")
def web_server() -> Iterator[int]:
    yield from _test_server()


@pytest.fixture(scope="module")
def sse_server() -> Iterator[int]:
    yield from _test_server("sse")


def _test_server(*mode: str) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.mcp_http_server", *mode, str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **ENV},
    )
    try:
        _wait_port(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("repo")
    git = ["git", "-C", str(path), "-c", "user.name=Test", "-c", "user.email=test@example.com"]
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    (path / "README.md").write_text("hello\n")
    subprocess.run([*git, "add", "README.md"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "first commit"], check=True)
    (path / "README.md").write_text("hello, changed\n")
    return path


def config(web_port: int, repo: Path, sse_port: int, fake: FakeUpstream, claude: FakeAnthropic) -> dict[str, Any]:
    bin_dir = ensure_venv()
    return {
        "model_list": [
            *(
                {"model_name": name, "provider": "python", "handler": "tests.e2e.mcp_handlers:model"}
                for name in (MODEL, "chat-return", "chat-execute")
            ),
            # An OpenAI-compatible upstream whose own Responses API would be used (`responses: native`): the
            # engine runs requests with configured MCP servers itself, over the upstream's chat completions.
            {
                "model_name": "native",
                "provider": "openai",
                "api_base": fake.base("tool_loop"),
                "responses": "native",
            },
            {
                "model_name": "claude",
                "provider": "anthropic",
                "model": "claude-sonnet-4-5",
                "api_base": claude.base("echo"),
                "api_key": ANTHROPIC_KEY,
            },
        ],
        "mcp_servers": {
            "time": {"command": str(bin_dir / "mcp-server-time"), "args": ["--local-timezone", "UTC"]},
            "git": {
                "command": str(bin_dir / "mcp-server-git"),
                "args": ["--repository", str(repo)],
                "allowed_tools": ["git_status", "git_log", "git_diff_unstaged"],
            },
            "web": {
                "transport": "streamable_http",
                "url": f"http://127.0.0.1:{web_port}/mcp",
                "headers": {"Authorization": "Bearer ${WEB_TOKEN}"},
                "max_output_bytes": 1000,
                "call_timeout_s": 2,
                "require_approval": {"whoami": "always"},
            },
            "down": {"transport": "streamable_http", "url": f"http://127.0.0.1:{free_port()}/mcp"},
            "legacy": {"transport": "sse", "url": f"http://127.0.0.1:{sse_port}/sse", "require_approval": "never"},
            # The SDK-built server again, over stdio: a child process the tests kill.
            "local": {
                "command": sys.executable,
                "args": ["-m", "tests.fakes.mcp_http_server", "stdio"],
                "cwd": str(ROOT),
                "env": {"PYTHONPATH": ENV["PYTHONPATH"]},
            },
        },
        "mcp": {
            "max_tool_rounds": 3,
            "reconnect_backoff_s": 0.2,
            "reconnect_backoff_max_s": 1,
            "allow_client_servers": [f"http://127.0.0.1:{web_port}/mcp"],
            "models": {
                "chat-return": {"servers": ["time"]},
                "chat-execute": {"servers": ["time", "web"], "mode": "execute"},
            },
        },
    }


@pytest.fixture(scope="module")
def claude() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(api_key=ANTHROPIC_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def gateway(
    web_server: int,
    sse_server: int,
    repo: Path,
    fake: FakeUpstream,
    claude: FakeAnthropic,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ManifoldProcess]:
    settings = config(web_server, repo, sse_server, fake, claude)
    proc = ManifoldProcess(settings, tmp_path_factory.mktemp("mcp"), env=ENV)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # connected in the background: wait for the three that can connect
            detail = httpx.get(proc.url + "/health/ready?detail=1").json()
            states = {s["server_label"]: s["state"] for s in detail.get("mcp_servers", [])}
            if all(states.get(label) == "ready" for label in ("time", "git", "web", "local", "legacy")):
                break
            time.sleep(0.2)
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def client(gateway: ManifoldProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(
        base_url=gateway.base_url, api_key="unused", max_retries=0, _strict_response_validation=True
    ) as c:
        yield c


@pytest.fixture
def http(gateway: ManifoldProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=60) as c:
        yield c


def mcp(label: str, **extra: Any) -> dict[str, Any]:
    return {"type": "mcp", "server_label": label, "require_approval": "never", **extra}


def create(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    resp = http.post("/v1/responses", json={"model": MODEL, **body})
    assert resp.status_code == 200, resp.text
    response: dict[str, Any] = resp.json()
    assert_valid("Response", response)
    return response


def of_type(response: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [item for item in response["output"] if item["type"] == kind]


# -- health ---------------------------------------------------------------------------------------------------------


def test_ready_detail_shows_each_server(http: httpx.Client) -> None:
    body = http.get("/health/ready?detail=1").json()
    states = {s["server_label"]: s for s in body["mcp_servers"]}
    ready = {k: v["state"] for k, v in states.items() if k != "down"}
    assert ready == {"time": "ready", "git": "ready", "web": "ready", "local": "ready", "legacy": "ready"}
    assert states["legacy"]["transport"] == "sse"
    assert states["down"]["state"] in ("connecting", "reconnecting") and states["down"]["error"]
    assert states["time"]["transport"] == "stdio" and states["web"]["transport"] == "streamable_http"
    assert states["git"]["tools"] == 3  # allowed_tools applies
    assert http.get("/health/ready").status_code == 200  # ready without the server that is down


# -- the Responses API's mcp tool ------------------------------------------------------------------------------------


def test_time_call_non_streamed(http: httpx.Client) -> None:
    script = 'CALL time__get_current_time {"timezone": "Europe/Paris"}'
    response = create(http, {"input": script, "tools": [mcp("time")]})
    assert response["status"] == "completed"
    [listed] = of_type(response, "mcp_list_tools")
    assert {t["name"] for t in listed["tools"]} == {"get_current_time", "convert_time"} and listed["error"] is None
    [call] = of_type(response, "mcp_call")
    assert call["server_label"] == "time" and call["name"] == "get_current_time" and call["status"] == "completed"
    assert json.loads(call["output"])["timezone"] == "Europe/Paris" and call["error"] is None
    assert [item["type"] for item in response["output"]] == ["mcp_list_tools", "mcp_call", "message"]
    text = response["output"][-1]["content"][0]["text"]
    assert text.startswith("DONE\n") and "Europe/Paris" in text
    assert response["tools"][0]["type"] == "mcp" and response["tools"][0]["server_label"] == "time"


def test_streamed_events_are_valid_and_the_sdk_final_equals_the_plain_one(
    http: httpx.Client, client: openai.OpenAI
) -> None:
    body = {"input": 'CALL web__echo {"text": "round trip"}', "tools": [mcp("web")]}
    events = post_stream(http, {"model": MODEL, **body})  # each event validated against the spec
    types = [e["type"] for e in events]
    for expected in (
        "response.mcp_list_tools.in_progress",
        "response.mcp_list_tools.completed",
        "response.mcp_call_arguments.delta",
        "response.mcp_call_arguments.done",
        "response.mcp_call.in_progress",
        "response.mcp_call.completed",
    ):
        assert expected in types, types
    assert types[-1] == "response.completed"
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["mcp_list_tools", "mcp_call", "message"]
    assert final["output"][1]["output"] == "round trip"
    with client.responses.stream(model=MODEL, **body) as stream:  # type: ignore[arg-type]
        kinds = [e.type for e in stream]
        streamed = stream.get_final_response()
    assert "response.mcp_call.completed" in kinds
    plain = client.responses.create(model=MODEL, **body)  # type: ignore[arg-type]
    assert comparable(streamed.model_dump(mode="json")) == comparable(plain.model_dump(mode="json"))


def test_git_server_on_a_repository(http: httpx.Client, repo: Path) -> None:
    script = f'CALL git__git_status {{"repo_path": "{repo}"}}\nCALL git__git_log {{"repo_path": "{repo}"}}'
    response = create(http, {"input": script, "tools": [mcp("git")]})
    calls = of_type(response, "mcp_call")
    assert [c["name"] for c in calls] == ["git_status", "git_log"]
    assert all(c["status"] == "completed" for c in calls)
    assert "README.md" in calls[0]["output"] and "first commit" in calls[1]["output"]
    [listed] = of_type(response, "mcp_list_tools")
    assert {t["name"] for t in listed["tools"]} == {"git_status", "git_log", "git_diff_unstaged"}


def test_tool_list_reused_from_the_previous_response(http: httpx.Client) -> None:
    first = create(http, {"input": "TOOLS", "tools": [mcp("time")]})
    assert "time__get_current_time" in first["output"][-1]["content"][0]["text"]
    second = create(
        http,
        {
            "input": "CALL time__convert_time "
            + json.dumps({"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
            "tools": [mcp("time")],
            "previous_response_id": first["id"],
        },
    )
    assert of_type(second, "mcp_list_tools") == []  # listed once in the chain
    [call] = of_type(second, "mcp_call")
    assert call["status"] == "completed" and "Asia/Tokyo" in call["output"]


def test_request_allowed_tools_narrow_the_list(http: httpx.Client) -> None:
    response = create(http, {"input": "TOOLS", "tools": [mcp("time", allowed_tools=["convert_time"])]})
    assert [t["name"] for t in of_type(response, "mcp_list_tools")[0]["tools"]] == ["convert_time"]
    assert response["output"][-1]["content"][0]["text"] == "TOOLS time__convert_time"


def test_approval_round_trip(http: httpx.Client) -> None:
    tools = [{"type": "mcp", "server_label": "time"}]  # require_approval defaults to "always"
    first = create(http, {"input": 'CALL time__get_current_time {"timezone": "UTC"}', "tools": tools})
    [request] = of_type(first, "mcp_approval_request")
    assert request["name"] == "get_current_time" and of_type(first, "mcp_call") == []
    assert first["status"] == "completed"
    answer = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
    second = create(http, {"input": [answer], "tools": tools, "previous_response_id": first["id"]})
    [call] = of_type(second, "mcp_call")
    assert call["approval_request_id"] == request["id"] and call["status"] == "completed"
    assert '"timezone": "UTC"' in call["output"]
    assert second["output"][-1]["content"][0]["text"].startswith("DONE\n")
    # An approval runs its call once: answering it again is refused.
    again = http.post(
        "/v1/responses",
        json={"model": MODEL, "input": [answer], "tools": tools, "previous_response_id": second["id"]},
    )
    assert again.status_code == 400 and again.json()["error"]["param"] == "input[0].approval_request_id"
    unknown = {**answer, "approval_request_id": "mcpr_nope"}
    resp = http.post("/v1/responses", json={"model": MODEL, "input": [unknown], "tools": tools})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input[0].approval_request_id"


def test_approval_round_trip_streamed(http: httpx.Client) -> None:
    tools = [{"type": "mcp", "server_label": "time"}]
    body = {"model": MODEL, "input": 'CALL time__get_current_time {"timezone": "UTC"}', "tools": tools}
    events = post_stream(http, body)  # each event validated against the spec
    first = events[-1]["response"]
    [request] = of_type(first, "mcp_approval_request")
    added = [e for e in events if e["type"] == "response.output_item.added"]
    assert [e["item"]["type"] for e in added] == ["mcp_list_tools", "mcp_approval_request"]
    answer = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": True}
    events = post_stream(http, {**body, "input": [answer], "previous_response_id": first["id"]})
    second = events[-1]["response"]
    assert [i["type"] for i in second["output"]] == ["mcp_call", "message"]
    assert second["output"][0]["approval_request_id"] == request["id"]
    stored = http.get(f"/v1/responses/{second['id']}").json()
    assert comparable(stored) == comparable(second)


def test_denied_approval_tells_the_model(http: httpx.Client) -> None:
    tools = [{"type": "mcp", "server_label": "time"}]
    first = create(http, {"input": 'CALL time__get_current_time {"timezone": "UTC"}', "tools": tools})
    [request] = of_type(first, "mcp_approval_request")
    answer = {"type": "mcp_approval_response", "approval_request_id": request["id"], "approve": False, "reason": "no"}
    second = create(http, {"input": [answer], "tools": tools, "previous_response_id": first["id"]})
    assert of_type(second, "mcp_call") == []
    assert "did not approve" in second["output"][-1]["content"][0]["text"]


def test_configured_approval_wins_over_the_request(http: httpx.Client) -> None:
    response = create(http, {"input": "CALL web__whoami {}", "tools": [mcp("web")]})
    assert [i["type"] for i in response["output"]] == ["mcp_list_tools", "mcp_approval_request"]
    answer = {"type": "mcp_approval_response", "approval_request_id": response["output"][1]["id"], "approve": True}
    second = create(http, {"input": [answer], "tools": [mcp("web")], "previous_response_id": response["id"]})
    [call] = of_type(second, "mcp_call")
    assert call["output"] == "Bearer sk-web-secret-7f3a"  # the configured header, with its ${ENV} secret


def test_openai_compatible_upstream_and_its_bad_arguments(http: httpx.Client) -> None:
    body = {
        "input": "hi",
        "tools": [mcp("web", allowed_tools=["echo"])],
        "parallel_tool_calls": False,
    }
    response = create(http, {**body, "model": "native"})
    assert [i["type"] for i in response["output"]] == ["mcp_list_tools", "mcp_call", "message"]
    call = response["output"][1]
    assert call["name"] == "echo" and call["arguments"] == TOOL_ARGUMENTS
    assert call["status"] == "failed"  # the fake model's arguments do not fit the tool: the model is told
    assert response["output"][2]["content"][0]["text"].startswith("result: Error")


def test_anthropic_backend(http: httpx.Client, claude: FakeAnthropic) -> None:
    body = {"model": "claude", "input": "hi", "tools": [mcp("web", allowed_tools=["echo"])], "max_output_tokens": 200}
    response = create(http, body)
    # The fake says a few words before its tool_use: a message, then the call, then the answer.
    assert [i["type"] for i in response["output"]] == ["mcp_list_tools", "message", "mcp_call", "message"]
    call = response["output"][2]
    assert call["status"] == "completed" and call["output"] == json.loads(call["arguments"])["text"]
    assert response["output"][3]["content"][0]["text"].startswith("Tool results: ")
    events = post_stream(http, body)  # each event validated against the spec
    assert events[-1]["type"] == "response.completed"
    streamed = events[-1]["response"]  # the same answer (but for the fake's random tool_use ids)
    assert [i["type"] for i in streamed["output"]] == [i["type"] for i in response["output"]]
    assert streamed["output"][2]["output"] == "text-value" == call["output"]
    assert claude.invalid == []  # every Messages request (tool_use, tool_result) was valid Anthropic


def test_legacy_sse_server(http: httpx.Client) -> None:
    response = create(http, {"input": 'CALL legacy__echo {"text": "over sse"}', "tools": [mcp("legacy")]})
    assert of_type(response, "mcp_call")[0]["output"] == "over sse"


def test_secrets_stay_out_of_the_log(gateway: ManifoldProcess, http: httpx.Client) -> None:
    create(http, {"input": "CALL web__whoami {}", "tools": [mcp("web")]})  # stops at the approval request
    http.get("/health/ready?detail=1")
    assert "sk-web-secret-7f3a" not in gateway.log()


# -- faults ----------------------------------------------------------------------------------------------------------


def test_unknown_label_is_a_400_naming_it(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as exc:
        client.responses.create(model=MODEL, input="hi", tools=[{"type": "mcp", "server_label": "nope"}])  # type: ignore[list-item]
    assert exc.value.body["param"] == "tools[0].server_label"  # type: ignore[index]
    assert "Unknown MCP server label 'nope'" in exc.value.body["message"]  # type: ignore[index]


def test_client_server_url_only_where_the_config_allows(
    client: openai.OpenAI, http: httpx.Client, web_server: int
) -> None:
    for url in (f"http://127.0.0.1:{web_server}/other", "http://169.254.169.254/mcp", "http://127.0.0.1:1/mcp"):
        tool = {"type": "mcp", "server_label": "mine", "server_url": url}
        with pytest.raises(openai.BadRequestError) as exc:
            client.responses.create(model=MODEL, input="hi", tools=[tool])  # type: ignore[list-item]
        assert exc.value.body["param"] == "tools[0].server_url"  # type: ignore[index]
    allowed = mcp("mine", server_url=f"http://127.0.0.1:{web_server}/mcp", headers={"Authorization": "Bearer mine"})
    response = create(http, {"input": "CALL mine__whoami {}", "tools": [allowed]})
    [call] = of_type(response, "mcp_call")
    assert call["output"] == "Bearer mine" and call["server_label"] == "mine"
    assert response["tools"][0]["headers"] is None  # not echoed


def test_server_down_is_a_list_item_with_its_error(http: httpx.Client) -> None:
    response = create(http, {"input": "TOOLS", "tools": [mcp("down"), mcp("time")]})
    down = next(i for i in of_type(response, "mcp_list_tools") if i["server_label"] == "down")
    assert down["tools"] == [] and "Could not list the tools of MCP server 'down'" in down["error"]
    assert response["status"] == "completed"
    assert response["output"][-1]["content"][0]["text"].split()[1:] == ["time__get_current_time", "time__convert_time"]
    events = post_stream(http, {"model": MODEL, "input": "TOOLS", "tools": [mcp("down")]})
    assert "response.mcp_list_tools.failed" in [e["type"] for e in events]


def test_tool_error_timeout_bad_arguments_and_flood(http: httpx.Client) -> None:
    script = "\n".join(
        [
            'CALL web__fail {"why": "it broke"}',
            'CALL web__slow {"seconds": 30}',
            "CALL web__echo {not json",
        ]
    )
    response = create(http, {"input": script, "tools": [mcp("web")]})
    fail, slow, bad = of_type(response, "mcp_call")
    assert fail["status"] == "failed" and fail["error"]["type"] == "mcp_tool_execution_error"
    assert "it broke" in json.dumps(fail["error"]) and fail["output"] is None
    assert slow["status"] == "failed" and "timed out after 2 s" in slow["error"]["message"]
    assert bad["status"] == "failed" and "not valid JSON" in bad["error"]["message"]
    text = response["output"][-1]["content"][0]["text"]
    assert "it broke" in text and "timed out" in text and "not valid JSON" in text  # the model saw each error
    flood = create(http, {"input": 'CALL web__flood {"n": 50000}', "tools": [mcp("web")]})
    [call] = of_type(flood, "mcp_call")
    assert call["output"].startswith("x" * 1000)
    assert call["output"].endswith("[output truncated by Manifold: 1000 of 50000 bytes shown]")


def test_a_model_that_loops_is_stopped(http: httpx.Client) -> None:
    response = create(http, {"input": 'LOOP web__echo {"text": "again"}', "tools": [mcp("web")]})
    assert len(of_type(response, "mcp_call")) == 3  # mcp.max_tool_rounds
    assert response["status"] == "completed"
    assert response["output"][-1]["content"][0]["text"].endswith("NOT OFFERED web__echo")


def test_a_tool_not_allowed_is_a_failed_call(http: httpx.Client, repo: Path) -> None:
    script = f'FORCE git__git_commit {{"repo_path": "{repo}", "message": "sneaky"}}'
    response = create(http, {"input": script, "tools": [mcp("git")]})
    [call] = of_type(response, "mcp_call")
    assert call["status"] == "failed" and call["name"] == "git_commit" and call["server_label"] == "git"
    assert "not available on MCP server 'git'" in call["error"]["message"]
    assert "not available" in response["output"][-1]["content"][0]["text"]  # the model was told
    log = subprocess.run(["git", "-C", str(repo), "log", "--oneline"], capture_output=True, text=True).stdout
    assert "sneaky" not in log


def test_max_tool_calls_bounds_the_calls(http: httpx.Client) -> None:
    body = {"input": 'LOOP web__echo {"text": "again"}', "tools": [mcp("web")], "max_tool_calls": 2}
    response = create(http, body)
    assert len(of_type(response, "mcp_call")) == 2 and response["max_tool_calls"] == 2
    assert response["output"][-1]["content"][0]["text"].endswith("NOT OFFERED web__echo")


def test_background_response_runs_the_loop(client: openai.OpenAI) -> None:
    started = client.responses.create(
        model=MODEL,
        input='CALL web__echo {"text": "later"}',
        tools=[mcp("web")],  # type: ignore[list-item]
        background=True,
    )
    deadline = time.monotonic() + 30
    response = client.responses.retrieve(started.id)
    while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.1)
        response = client.responses.retrieve(started.id)
    assert response.status == "completed"
    assert [i.type for i in response.output] == ["mcp_list_tools", "mcp_call", "message"]


def test_cancel_stops_the_running_tool_call(client: openai.OpenAI, http: httpx.Client) -> None:
    started = client.responses.create(
        model=MODEL,
        input='CALL web__slow {"seconds": 1.5}',
        tools=[mcp("web")],  # type: ignore[list-item]
        background=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until the call is running
        current = client.responses.retrieve(started.id)
        if any(i.type == "mcp_call" for i in current.output):
            break
        time.sleep(0.05)
    cancelled = client.responses.cancel(started.id)
    assert cancelled.status == "cancelled"
    assert client.responses.retrieve(started.id).status == "cancelled"


def _child_pids(parent: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == parent:
                out.append(int(entry.name))
    return out


def _local_server_pid(gateway: ManifoldProcess) -> int:
    for pid in _child_pids(gateway.proc.pid):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"tests.fakes.mcp_http_server" in cmdline and b"stdio" in cmdline:
            return pid
    raise AssertionError("the stdio server's process was not found")


def _local_state(http: httpx.Client) -> dict[str, Any]:
    states = http.get("/health/ready?detail=1").json()["mcp_servers"]
    return next(s for s in states if s["server_label"] == "local")


def test_a_stdio_server_that_dies_fails_its_call_and_is_restarted(
    gateway: ManifoldProcess, client: openai.OpenAI, http: httpx.Client
) -> None:
    connects = _local_state(http)["connects"]
    pid = _local_server_pid(gateway)
    started = client.responses.create(
        model=MODEL,
        input='CALL local__slow {"seconds": 20}',
        tools=[mcp("local")],  # type: ignore[list-item]
        background=True,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not any(
        i.type == "mcp_call" for i in client.responses.retrieve(started.id).output
    ):
        time.sleep(0.05)
    os.kill(pid, 9)
    deadline = time.monotonic() + 15
    response = client.responses.retrieve(started.id)
    while response.status in ("queued", "in_progress") and time.monotonic() < deadline:
        time.sleep(0.1)
        response = client.responses.retrieve(started.id)
    assert response.status == "completed"
    [call] = [i for i in response.output if i.type == "mcp_call"]
    assert call.status == "failed" and "went away" in json.dumps(call.model_dump(mode="json")["error"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (
        _local_state(http)["state"] == "ready" and _local_state(http)["connects"] > connects
    ):
        time.sleep(0.1)
    assert _local_state(http)["state"] == "ready"  # started again
    assert _local_server_pid(gateway) != pid
    again = create(http, {"input": 'CALL local__echo {"text": "back"}', "tools": [mcp("local")]})
    assert of_type(again, "mcp_call")[0]["output"] == "back"


def test_tool_list_refreshed_on_list_changed(http: httpx.Client) -> None:
    before = create(http, {"input": "TOOLS", "tools": [mcp("local")]})
    assert "local__grown" not in before["output"][-1]["content"][0]["text"]
    grown = create(http, {"input": "CALL local__grow {}", "tools": [mcp("local")]})
    assert of_type(grown, "mcp_call")[0]["output"] == "added"
    deadline = time.monotonic() + 10
    text = ""
    while time.monotonic() < deadline and "local__grown" not in text:
        text = create(http, {"input": "TOOLS", "tools": [mcp("local")]})["output"][-1]["content"][0]["text"]
        time.sleep(0.1)
    assert "local__grown" in text


# -- chat completions with a model's configured tools ----------------------------------------------------------------


def test_chat_return_mode_adds_the_tools_and_the_client_runs_a_call(client: openai.OpenAI, http: httpx.Client) -> None:
    listed = client.chat.completions.create(model="chat-return", messages=[{"role": "user", "content": "TOOLS"}])
    assert listed.choices[0].message.content == "TOOLS time__get_current_time time__convert_time"
    script = 'CALL time__get_current_time {"timezone": "Asia/Tokyo"}'
    raw = http.post(
        "/v1/chat/completions", json={"model": "chat-return", "messages": [{"role": "user", "content": script}]}
    )
    assert raw.status_code == 200, raw.text
    assert_valid("CreateChatCompletionResponse", raw.json())
    [call] = raw.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "time__get_current_time"
    ran = http.post(
        "/v1/mcp/tools/call", json={"name": call["function"]["name"], "arguments": call["function"]["arguments"]}
    )
    assert ran.status_code == 200 and ran.json()["is_error"] is False
    assert json.loads(ran.json()["output"])["timezone"] == "Asia/Tokyo"
    failed = http.post("/v1/mcp/tools/call", json={"name": "web__fail", "arguments": {"why": "nope"}})
    assert failed.json()["is_error"] is True and "nope" in failed.json()["output"]
    missing = http.post("/v1/mcp/tools/call", json={"name": "time__nope", "arguments": {}})
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "name"
    clash = {"type": "function", "function": {"name": "time__convert_time", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="chat-return", messages=[{"role": "user", "content": "hi"}], tools=[clash])  # type: ignore[list-item]
    assert exc.value.body["param"] == "tools[0].function.name"  # type: ignore[index]


def test_chat_execute_mode_runs_the_loop(client: openai.OpenAI, http: httpx.Client) -> None:
    script = 'CALL time__get_current_time {"timezone": "UTC"}\nCALL web__echo {"text": "from chat"}'
    messages = [{"role": "user", "content": script}]
    raw = http.post("/v1/chat/completions", json={"model": "chat-execute", "messages": messages})
    assert raw.status_code == 200, raw.text
    body = raw.json()
    assert_valid("CreateChatCompletionResponse", body)
    text = body["choices"][0]["message"]["content"]
    assert text.startswith("DONE\n") and "from chat" in text and '"timezone": "UTC"' in text
    assert json.loads(raw.headers["x-manifold-mcp-calls"]) == [
        {"name": "time__get_current_time", "status": "completed"},
        {"name": "web__echo", "status": "completed"},
    ]
    with client.chat.completions.with_streaming_response.create(
        model="chat-execute",
        messages=messages,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    ) as streamed:
        assert json.loads(streamed.headers["x-manifold-mcp-calls"])[1]["name"] == "web__echo"
        chunks = list(streamed.parse())
    joined = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert joined.startswith("DONE\n") and "from chat" in joined


# -- the gateway as one MCP server -----------------------------------------------------------------------------------


def test_mcp_endpoint_serves_the_union_to_the_sdk_client(gateway: ManifoldProcess) -> None:
    import asyncio

    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def session_run() -> tuple[set[str], Any, Any, Any]:
        async with (
            streamable_http_client(gateway.base_url + "/mcp") as (read, write, *_),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = {t.name for t in (await session.list_tools()).tools}
            echoed = await session.call_tool("web__echo", {"text": "through the gateway"})
            timed = await session.call_tool("time__get_current_time", {"timezone": "UTC"})
            missing = await session.call_tool("git__git_commit", {"repo_path": "/", "message": "no"})
            return tools, echoed, timed, missing

    tools, echoed, timed, missing = asyncio.run(session_run())
    assert {"time__get_current_time", "time__convert_time", "web__echo", "web__whoami"} <= tools
    assert {"git__git_status", "git__git_log", "git__git_diff_unstaged"} <= tools
    assert "git__git_commit" not in tools  # the server's allowed_tools hold here too
    assert not any(t.startswith("down__") for t in tools)
    assert echoed.is_error is False and echoed.content[0].text == "through the gateway"
    assert timed.is_error is False and '"timezone": "UTC"' in timed.content[0].text
    assert missing.is_error is True and "git__git_commit" in missing.content[0].text


def test_chat_execute_mode_bounds_a_model_that_loops(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": 'LOOP web__echo {"text": "again"}'}]
    raw = http.post("/v1/chat/completions", json={"model": "chat-execute", "messages": messages})
    assert raw.status_code == 200, raw.text
    assert_valid("CreateChatCompletionResponse", raw.json())
    assert len(json.loads(raw.headers["x-manifold-mcp-calls"])) == 3  # mcp.max_tool_rounds
    assert raw.json()["choices"][0]["message"]["content"].endswith("NOT OFFERED web__echo")
    stored = http.post("/v1/chat/completions", json={"model": "chat-execute", "messages": messages, "store": True})
    assert stored.status_code == 400 and stored.json()["error"]["param"] == "store"


def test_chat_execute_mode_returns_a_call_that_needs_approval(http: httpx.Client) -> None:
    messages = [{"role": "user", "content": "CALL web__whoami {}"}]
    raw = http.post("/v1/chat/completions", json={"model": "chat-execute", "messages": messages})
    assert raw.status_code == 200, raw.text
    assert json.loads(raw.headers["x-manifold-mcp-calls"]) == []  # not run by the gateway...
    [call] = raw.json()["choices"][0]["message"]["tool_calls"]  # ...but given to the client to decide
    assert call["function"]["name"] == "web__whoami"


def test_mcp_routes_need_a_key_when_keys_are_on(tmp_path: Path) -> None:
    settings = {
        "model_list": [{"model_name": MODEL, "provider": "python", "handler": "tests.e2e.mcp_handlers:model"}],
        "auth": {"master_key": "sk-master-mcp-0123456789"},
        "mcp_servers": {"time": {"command": str(ensure_venv() / "mcp-server-time")}},
    }
    proc = ManifoldProcess(settings, tmp_path, env=ENV)
    try:
        call = {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}}
        for path in ("/v1/mcp/tools/call", "/v1/mcp"):
            assert httpx.post(proc.url + path, json=call).status_code == 401
        deadline = time.monotonic() + 30
        key = {"Authorization": "Bearer sk-master-mcp-0123456789"}
        resp = httpx.post(proc.url + "/v1/mcp/tools/call", json=call, headers=key)
        while resp.status_code == 404 and time.monotonic() < deadline:  # until the server is connected
            time.sleep(0.2)
            resp = httpx.post(proc.url + "/v1/mcp/tools/call", json=call, headers=key)
        assert resp.status_code == 200 and resp.json()["is_error"] is False
    finally:
        proc.stop()
