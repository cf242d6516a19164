"""With access control, a key sees and uses only the MCP servers it is allowed (`mcp_servers` on a key and its
team, docs/mcp.md "security model"): through `/mcp` (the SDK's MCP client with the key as its bearer),
`POST /mcp/tools/call`, the Responses API's `mcp` tool and chat's configured MCP tools, for virtual keys (the
admin API) and static keys (`auth.keys`). Real MCP servers: `mcp-server-time` (stdio) and the SDK-built
streamable-HTTP server of tests/fakes/mcp_http_server.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.test_mcp import ENV, MODEL, _test_server
from tests.fakes.mcp_servers import ensure_venv

MASTER = "sk-master-mcp-access-0123456789"
STATIC_WEB = "sk-static-web-0123456789"
STATIC_TEAM = "sk-static-team-0123456789"
TIME_TOOLS = {"time__get_current_time", "time__convert_time"}


@pytest.fixture(scope="module")
def web_server() -> Iterator[int]:
    yield from _test_server()


@pytest.fixture(scope="module")
def gateway(web_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    workdir = tmp_path_factory.mktemp("mcp-access")
    settings = {
        "model_list": [
            {"model_name": name, "provider": "python", "handler": "tests.e2e.mcp_handlers:model"}
            for name in (MODEL, "chat-return")
        ],
        "storage": {"data_dir": str(workdir / "data")},
        "auth": {
            "master_key": MASTER,
            "keys": [
                {"key": STATIC_WEB, "alias": "static-web", "mcp_servers": ["web"]},
                # Its own list allows both; its team's only `time`: it gets the intersection.
                {"key": STATIC_TEAM, "alias": "static-team", "team": "t", "mcp_servers": ["time", "web"]},
            ],
            "teams": {"t": {"mcp_servers": ["time"]}},
        },
        "mcp_servers": {
            "time": {"command": str(ensure_venv() / "mcp-server-time"), "args": ["--local-timezone", "UTC"]},
            "web": {"transport": "streamable_http", "url": f"http://127.0.0.1:{web_server}/mcp"},
        },
        "mcp": {"models": {"chat-return": {"servers": ["time", "web"]}}},
    }
    proc = ManifoldProcess(settings, workdir, env=ENV)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            detail = httpx.get(proc.url + "/health/ready?detail=1").json()
            states = {s["server_label"]: s["state"] for s in detail.get("mcp_servers", [])}
            if states.get("time") == "ready" and states.get("web") == "ready":
                break
            time.sleep(0.2)
        yield proc
    finally:
        proc.stop()


def bearer(secret: str) -> dict[str, str]:
    return {"authorization": f"Bearer {secret}"}


def new_key(gateway: ManifoldProcess, **body: Any) -> str:
    resp = httpx.post(gateway.url + "/admin/keys", json=body, headers=bearer(MASTER), timeout=20)
    assert resp.status_code == 200, resp.text
    secret: str = resp.json()["key"]
    return secret


def through_mcp(gateway: ManifoldProcess, secret: str, calls: list[tuple[str, dict[str, Any]]]) -> tuple[set[str], Any]:
    """The tools `/mcp` lists to the key, and the results of `calls` (through the official SDK's client)."""
    import httpx2
    from mcp import ClientSession
    from mcp.client.streamable_http import streamable_http_client

    async def run() -> tuple[set[str], Any]:
        async with (
            httpx2.AsyncClient(headers=bearer(secret), timeout=30) as http,
            streamable_http_client(gateway.base_url + "/mcp", http_client=http) as (read, write, *_),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            tools = {t.name for t in (await session.list_tools()).tools}
            return tools, [await session.call_tool(name, args) for name, args in calls]

    return asyncio.run(run())


def tools_call(gateway: ManifoldProcess, secret: str, name: str, arguments: dict[str, Any]) -> httpx.Response:
    body = {"name": name, "arguments": arguments}
    return httpx.post(gateway.base_url + "/mcp/tools/call", json=body, headers=bearer(secret), timeout=30)


def chat_tools(gateway: ManifoldProcess, secret: str) -> set[str]:
    """The MCP tools chat adds to the key's request (the handler answers with the tool names it was offered)."""
    body = {"model": "chat-return", "messages": [{"role": "user", "content": "TOOLS"}]}
    resp = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=bearer(secret), timeout=30)
    assert resp.status_code == 200, resp.text
    assert_valid("CreateChatCompletionResponse", resp.json())
    text: str = resp.json()["choices"][0]["message"]["content"]
    return set(text.split()[1:])


def responses_mcp(gateway: ManifoldProcess, secret: str, label: str, script: str) -> httpx.Response:
    body = {
        "model": MODEL,
        "input": script,
        "tools": [{"type": "mcp", "server_label": label, "require_approval": "never"}],
    }
    return httpx.post(gateway.base_url + "/responses", json=body, headers=bearer(secret), timeout=30)


def test_two_keys_each_see_and_use_only_their_own_servers(gateway: ManifoldProcess) -> None:
    time_key = new_key(gateway, alias="time-only", mcp_servers=["time"])
    web_key = new_key(gateway, alias="web-only", mcp_servers=["web"])
    utc = {"timezone": "UTC"}

    # /mcp: the list holds only the key's servers; a call to another's tool is an MCP error naming nothing else.
    listed, (own, other) = through_mcp(
        gateway, time_key, [("time__get_current_time", utc), ("web__echo", {"text": "x"})]
    )
    assert listed == TIME_TOOLS
    assert own.is_error is False and '"timezone": "UTC"' in own.content[0].text
    assert other.is_error is True and other.content[0].text == "No tool named 'web__echo' is available."
    listed, (own, other) = through_mcp(
        gateway, web_key, [("web__echo", {"text": "hi"}), ("time__get_current_time", utc)]
    )
    assert "web__echo" in listed and not listed & TIME_TOOLS
    assert own.is_error is False and own.content[0].text == "hi"
    assert other.is_error is True

    # POST /mcp/tools/call: a tool of a server the key may not use is answered as one that does not exist.
    assert tools_call(gateway, time_key, "time__get_current_time", utc).json()["is_error"] is False
    denied, missing = (tools_call(gateway, time_key, name, {"text": "x"}) for name in ("web__echo", "web__nope"))
    assert denied.status_code == missing.status_code == 404
    assert denied.json()["error"]["param"] == "name"
    assert denied.json()["error"]["message"] == missing.json()["error"]["message"].replace("web__nope", "web__echo")

    # Chat: the model's configured MCP tools, less the servers the key may not use.
    assert chat_tools(gateway, time_key) == TIME_TOOLS
    assert "web__echo" in chat_tools(gateway, web_key) and not chat_tools(gateway, web_key) & TIME_TOOLS
    assert TIME_TOOLS | {"web__echo"} <= chat_tools(gateway, MASTER)

    # Responses: a label the key may not use is an unknown label; the configured list shows only its own.
    denied_label = responses_mcp(gateway, time_key, "web", "hi")
    unknown = responses_mcp(gateway, time_key, "nope", "hi")
    assert denied_label.status_code == unknown.status_code == 400
    assert denied_label.json()["error"]["param"] == "tools[0].server_label"
    assert denied_label.json()["error"]["message"] == "Unknown MCP server label 'web' (configured: time)."
    ran = responses_mcp(gateway, web_key, "web", 'CALL web__echo {"text": "allowed"}')
    assert ran.status_code == 200, ran.text
    assert_valid("Response", ran.json())
    [call] = [item for item in ran.json()["output"] if item["type"] == "mcp_call"]
    assert call["server_label"] == "web" and call["output"] == "allowed"


def test_an_empty_list_allows_none_and_a_team_narrows_its_keys(gateway: ManifoldProcess) -> None:
    none_key = new_key(gateway, mcp_servers=[])
    listed, (call,) = through_mcp(gateway, none_key, [("time__get_current_time", {"timezone": "UTC"})])
    assert listed == set() and call.is_error is True
    assert chat_tools(gateway, none_key) == set()
    assert "(configured: none)" in responses_mcp(gateway, none_key, "time", "hi").json()["error"]["message"]

    admin = bearer(MASTER)
    team = httpx.post(gateway.url + "/admin/teams", json={"mcp_servers": ["web"]}, headers=admin).json()
    in_team = new_key(gateway, team_id=team["id"])  # no list of its own: the team's
    narrowed = new_key(gateway, team_id=team["id"], mcp_servers=["time", "web"])
    for secret in (in_team, narrowed):
        listed, _ = through_mcp(gateway, secret, [])
        assert "web__echo" in listed and not listed & TIME_TOOLS


def test_an_entry_label__tool_allows_that_tool_only(gateway: ManifoldProcess) -> None:
    secret = new_key(gateway, mcp_servers=["time", "web__echo"])
    listed, (echoed, other) = through_mcp(gateway, secret, [("web__echo", {"text": "one"}), ("web__whoami", {})])
    assert listed == TIME_TOOLS | {"web__echo"}
    assert echoed.is_error is False and other.is_error is True
    assert tools_call(gateway, secret, "web__whoami", {}).status_code == 404
    assert chat_tools(gateway, secret) == TIME_TOOLS | {"web__echo"}
    # Responses: the server's list shows the allowed tool only, and another of its tools is not offered.
    ran = responses_mcp(gateway, secret, "web", 'CALL web__whoami {}\nCALL web__echo {"text": "two"}')
    assert ran.status_code == 200, ran.text
    assert_valid("Response", ran.json())
    [listing] = [item for item in ran.json()["output"] if item["type"] == "mcp_list_tools"]
    assert [t["name"] for t in listing["tools"]] == ["echo"]
    assert not [item for item in ran.json()["output"] if item["type"] == "mcp_call"]
    assert ran.json()["output"][-1]["content"][0]["text"].endswith("NOT OFFERED web__whoami")
    # A team's whole server narrowed to one tool by its key; a key's whole server by its team's one tool.
    team = httpx.post(gateway.url + "/admin/teams", json={"mcp_servers": ["web__echo"]}, headers=bearer(MASTER))
    narrowed = new_key(gateway, team_id=team.json()["id"], mcp_servers=["web", "time"])
    assert through_mcp(gateway, narrowed, [])[0] == {"web__echo"}


def test_static_keys_and_their_teams(gateway: ManifoldProcess) -> None:
    listed, _ = through_mcp(gateway, STATIC_WEB, [])
    assert "web__echo" in listed and not listed & TIME_TOOLS
    assert tools_call(gateway, STATIC_WEB, "time__get_current_time", {"timezone": "UTC"}).status_code == 404
    listed, _ = through_mcp(gateway, STATIC_TEAM, [])
    assert listed == TIME_TOOLS  # its own list and its team's: the intersection
    assert chat_tools(gateway, STATIC_TEAM) == TIME_TOOLS
    assert responses_mcp(gateway, STATIC_TEAM, "web", "hi").status_code == 400


def test_the_admin_api_round_trips_the_field(gateway: ManifoldProcess) -> None:
    with httpx.Client(base_url=gateway.url, headers=bearer(MASTER), timeout=20) as admin:
        created = admin.post("/admin/keys", json={"mcp_servers": ["time"]}).json()
        assert created["mcp_servers"] == ["time"]
        key_id = created["id"]
        assert admin.get(f"/admin/keys/{key_id}").json()["mcp_servers"] == ["time"]
        listed = {k["id"]: k for k in admin.get("/admin/keys", params={"limit": 100}).json()["data"]}
        assert listed[key_id]["mcp_servers"] == ["time"]
        assert admin.post(f"/admin/keys/{key_id}", json={"alias": "kept"}).json()["mcp_servers"] == ["time"]
        assert admin.post(f"/admin/keys/{key_id}", json={"mcp_servers": None}).json()["mcp_servers"] is None
        assert admin.post(f"/admin/keys/{key_id}", json={"mcp_servers": []}).json()["mcp_servers"] == []
        # The change holds at once for the key (the replica that made it forgets its cached lookup).
        secret = created["key"]
        assert through_mcp(gateway, secret, [])[0] == set()
        admin.post(f"/admin/keys/{key_id}", json={"mcp_servers": ["time"]})
        assert through_mcp(gateway, secret, [])[0] == TIME_TOOLS
        bad = admin.post("/admin/keys", json={"mcp_servers": "time"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "mcp_servers"
        team = admin.post("/admin/teams", json={"mcp_servers": ["web"]}).json()
        assert admin.get(f"/admin/teams/{team['id']}").json()["mcp_servers"] == ["web"]
        schema = admin.get("/admin/openapi.json").json()["components"]["schemas"]
        for name in ("Key", "Team", "KeyCreate", "TeamUpdate"):
            assert "mcp_servers" in schema[name]["properties"], name


def test_secrets_stay_out_of_the_log(gateway: ManifoldProcess) -> None:
    log = gateway.log()
    for secret in (MASTER, STATIC_WEB, STATIC_TEAM):
        assert secret not in log
