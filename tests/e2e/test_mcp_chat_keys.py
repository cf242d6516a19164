"""A key (virtual or static) or its team may carry `mcp_chat: {servers, mode}` (docs/mcp.md "chat"): its chat
requests for a model without an `mcp.models` entry get those servers' tools, within its `mcp_servers`. The model
is scripted (`provider: python`, tests/e2e/mcp_handlers.py); the MCP servers are real: `mcp-server-time` (stdio)
and the SDK-built streamable-HTTP server of tests/fakes/mcp_http_server.py."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.e2e.test_mcp import ENV, MODEL, _test_server
from tests.fakes.mcp_servers import ensure_venv

MASTER = "sk-master-mcp-chat-keys-0123456789"
STATIC_CHAT = "sk-static-chat-0123456789"
STATIC_IN_TEAM = "sk-static-in-team-0123456789"
TIME_TOOLS = {"time__get_current_time", "time__convert_time"}
ECHO = 'CALL web__echo {"text": "from the key"}'


@pytest.fixture(scope="module")
def web_server() -> Iterator[int]:
    yield from _test_server()


@pytest.fixture(scope="module")
def gateway(web_server: int, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    workdir = tmp_path_factory.mktemp("mcp-chat-keys")
    settings = {
        "model_list": [
            {"model_name": name, "provider": "python", "handler": "tests.e2e.mcp_handlers:model"}
            for name in (MODEL, "chat-time")
        ],
        "storage": {"data_dir": str(workdir / "data")},
        "auth": {
            "master_key": MASTER,
            "keys": [
                {"key": STATIC_CHAT, "alias": "static-chat", "mcp_chat": {"servers": ["web"], "mode": "execute"}},
                {"key": STATIC_IN_TEAM, "alias": "static-in-team", "team": "t"},
            ],
            "teams": {"t": {"mcp_chat": {"servers": ["time"]}}},
        },
        "mcp_servers": {
            "time": {"command": str(ensure_venv() / "mcp-server-time"), "args": ["--local-timezone", "UTC"]},
            "web": {"transport": "streamable_http", "url": f"http://127.0.0.1:{web_server}/mcp"},
        },
        "mcp": {"models": {"chat-time": {"servers": ["time"]}}},
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


def chat(gateway: ManifoldProcess, secret: str, script: str, model: str = MODEL) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": script}]}
    resp = httpx.post(gateway.base_url + "/chat/completions", json=body, headers=bearer(secret), timeout=30)
    assert resp.status_code == 200, resp.text
    assert_valid("CreateChatCompletionResponse", resp.json())
    return resp


def offered(gateway: ManifoldProcess, secret: str, model: str = MODEL) -> set[str]:
    """The tools the model was offered for the key's request (the handler answers their names)."""
    text: str = chat(gateway, secret, "TOOLS", model).json()["choices"][0]["message"]["content"]
    return set(text.split()[1:])


def client(gateway: ManifoldProcess, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=secret, max_retries=0, _strict_response_validation=True)


def test_a_key_with_mcp_chat_gets_the_tools_and_its_calls_come_back(gateway: ManifoldProcess) -> None:
    secret = new_key(gateway, mcp_chat={"servers": ["web", "time"]})
    assert TIME_TOOLS | {"web__echo"} <= offered(gateway, secret)
    # return mode: the model's call of a configured tool comes back to the client, named server__tool.
    completion = client(gateway, secret).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": ECHO}]
    )
    [call] = completion.choices[0].message.tool_calls or []
    assert completion.choices[0].finish_reason == "tool_calls"
    assert call.type == "function" and call.function.name == "web__echo"
    assert json.loads(call.function.arguments) == {"text": "from the key"}
    ran = httpx.post(
        gateway.base_url + "/mcp/tools/call",
        json={"name": call.function.name, "arguments": call.function.arguments},
        headers=bearer(secret),
        timeout=30,
    )
    assert ran.status_code == 200 and ran.json() == {"name": "web__echo", "output": "from the key", "is_error": False}
    # A request's own function named like one of the key's MCP tools: a 400 naming it.
    clash = {"type": "function", "function": {"name": "web__echo", "parameters": {"type": "object"}}}
    with pytest.raises(openai.BadRequestError) as exc:
        client(gateway, secret).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            tools=[clash],  # type: ignore[list-item]
        )
    assert exc.value.status_code == 400 and exc.value.body["param"] == "tools[0].function.name"  # type: ignore[index]
    # Another key, and the master key, without `mcp_chat`: no tools.
    assert offered(gateway, new_key(gateway)) == set()
    assert offered(gateway, MASTER) == set()
    plain = chat(gateway, new_key(gateway), ECHO).json()["choices"][0]
    assert plain["message"]["content"] == "DONE\nNOT OFFERED web__echo" and "tool_calls" not in plain["message"]


def test_execute_mode_runs_the_calls_in_the_gateway(gateway: ManifoldProcess) -> None:
    secret = new_key(gateway, mcp_chat={"servers": ["web"], "mode": "execute"})
    script = f'{ECHO}\nCALL web__echo {{"text": "twice"}}'
    resp = chat(gateway, secret, script)
    assert resp.json()["choices"][0]["message"]["content"] == "DONE\nfrom the key\ntwice"
    assert json.loads(resp.headers["x-manifold-mcp-calls"]) == [
        {"name": "web__echo", "status": "completed"},
        {"name": "web__echo", "status": "completed"},
    ]
    with client(gateway, secret).chat.completions.with_streaming_response.create(
        model=MODEL, messages=[{"role": "user", "content": ECHO}], stream=True
    ) as streamed:
        assert json.loads(streamed.headers["x-manifold-mcp-calls"]) == [{"name": "web__echo", "status": "completed"}]
        chunks = list(streamed.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "DONE\nfrom the key"
    stored = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": ECHO}], "store": True},
        headers=bearer(secret),
        timeout=30,
    )
    assert stored.status_code == 400 and stored.json()["error"]["param"] == "store"


def test_the_allow_list_and_the_models_own_setting_hold(gateway: ManifoldProcess) -> None:
    # `mcp_servers` still decides: a server of `mcp_chat` the key may not use is left out.
    narrowed = new_key(gateway, mcp_servers=["time"], mcp_chat={"servers": ["web", "time"]})
    assert offered(gateway, narrowed) == TIME_TOOLS
    tool_only = new_key(gateway, mcp_servers=["web__echo"], mcp_chat={"servers": ["web", "time"]})
    assert offered(gateway, tool_only) == {"web__echo"}
    # A model with an `mcp.models` entry: the model's setting wins over the key's.
    web_key = new_key(gateway, mcp_chat={"servers": ["web"], "mode": "execute"})
    assert offered(gateway, web_key, "chat-time") == TIME_TOOLS
    returned = chat(gateway, web_key, 'CALL time__get_current_time {"timezone": "UTC"}', "chat-time")
    assert "x-manifold-mcp-calls" not in returned.headers  # the model's mode (return), not the key's
    [call] = returned.json()["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "time__get_current_time"


def test_a_team_s_mcp_chat_and_the_key_s_own(gateway: ManifoldProcess) -> None:
    admin = bearer(MASTER)
    team = httpx.post(gateway.url + "/admin/teams", json={"mcp_chat": {"servers": ["time"]}}, headers=admin).json()
    assert team["mcp_chat"] == {"servers": ["time"], "mode": "return"}
    assert offered(gateway, new_key(gateway, team_id=team["id"])) == TIME_TOOLS
    own = new_key(gateway, team_id=team["id"], mcp_chat={"servers": ["web"]})
    assert "web__echo" in offered(gateway, own) and not offered(gateway, own) & TIME_TOOLS


def test_static_keys_and_their_team(gateway: ManifoldProcess) -> None:
    resp = chat(gateway, STATIC_CHAT, ECHO)
    assert resp.json()["choices"][0]["message"]["content"] == "DONE\nfrom the key"
    assert json.loads(resp.headers["x-manifold-mcp-calls"]) == [{"name": "web__echo", "status": "completed"}]
    assert offered(gateway, STATIC_IN_TEAM) == TIME_TOOLS  # its team's
    assert offered(gateway, STATIC_IN_TEAM, "chat-time") == TIME_TOOLS


def test_the_admin_api_round_trips_and_checks_the_field(gateway: ManifoldProcess) -> None:
    with httpx.Client(base_url=gateway.url, headers=bearer(MASTER), timeout=20) as admin:
        created = admin.post("/admin/keys", json={"mcp_chat": {"servers": ["web"], "mode": "execute"}}).json()
        expected = {"servers": ["web"], "mode": "execute"}
        assert created["mcp_chat"] == expected
        key_id, secret = created["id"], created["key"]
        assert admin.get(f"/admin/keys/{key_id}").json()["mcp_chat"] == expected
        listed = {k["id"]: k for k in admin.get("/admin/keys", params={"limit": 100}).json()["data"]}
        assert listed[key_id]["mcp_chat"] == expected
        assert admin.post(f"/admin/keys/{key_id}", json={"alias": "kept"}).json()["mcp_chat"] == expected
        # The change holds at once for the key (the replica that made it forgets its cached lookup).
        assert admin.post(f"/admin/keys/{key_id}", json={"mcp_chat": None}).json()["mcp_chat"] is None
        assert offered(gateway, secret) == set()
        changed = admin.post(f"/admin/keys/{key_id}", json={"mcp_chat": {"servers": ["time"]}}).json()
        assert changed["mcp_chat"] == {"servers": ["time"], "mode": "return"}
        assert offered(gateway, secret) == TIME_TOOLS
        for body, param in (
            ({"mcp_chat": {"servers": ["nope"]}}, "mcp_chat.servers[0]"),
            ({"mcp_chat": {"servers": ["web", "web"]}}, "mcp_chat.servers[1]"),
            ({"mcp_chat": {"servers": []}}, "mcp_chat"),
            ({"mcp_chat": {"servers": ["web"], "mode": "later"}}, "mcp_chat"),
            ({"mcp_chat": ["web"]}, "mcp_chat"),
        ):
            for path in ("/admin/keys", f"/admin/keys/{key_id}", "/admin/teams"):
                bad = admin.post(path, json=body)
                assert bad.status_code == 400, (path, body, bad.text)
                assert bad.json()["error"]["param"] == param and bad.json()["error"]["type"] == "invalid_request_error"
        assert "configured: time, web" in admin.post("/admin/keys", json={"mcp_chat": {"servers": ["x"]}}).text
        assert admin.get(f"/admin/keys/{key_id}").json()["mcp_chat"] == {"servers": ["time"], "mode": "return"}
        schema = admin.get("/admin/openapi.json").json()["components"]["schemas"]
        for name in ("Key", "Team", "KeyCreate", "KeyUpdate", "TeamCreate", "TeamUpdate"):
            assert "mcp_chat" in schema[name]["properties"], name
        assert sorted(schema["McpChatSettings"]["properties"]["mode"]["enum"]) == ["execute", "return"]
        assert_valid_against(schema, "Key", created)


def assert_valid_against(schemas: dict[str, Any], name: str, instance: Any) -> None:
    """`instance` is valid against the admin API's own schema `name` (its $refs resolved in the document)."""
    import jsonschema

    document = {"components": {"schemas": schemas}, "$ref": f"#/components/schemas/{name}"}
    jsonschema.validate(instance, document, cls=jsonschema.Draft202012Validator)


def test_the_command_line_sets_and_checks_the_field(tmp_path: Path) -> None:
    from tests.e2e.test_cli import manifold

    config_path = tmp_path / "config.yaml"
    config = {
        "storage": {"data_dir": str(tmp_path / "data")},
        "mcp_servers": {
            "time": {"command": "mcp-server-time"},
            "web": {"transport": "sse", "url": "http://127.0.0.1:9/"},
        },
    }
    config_path.write_text(json.dumps(config))  # JSON is YAML

    def keys(*args: str) -> Any:
        result = manifold("keys", "--config", str(config_path), *args)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    created = keys("create", "--mcp-chat-servers", "time, web", "--mcp-chat-mode", "execute")
    assert created["mcp_chat"] == {"servers": ["time", "web"], "mode": "execute"}
    assert keys("update", created["id"], "--alias", "kept")["mcp_chat"] == created["mcp_chat"]
    assert keys("update", created["id"], "--mcp-chat-servers", "web")["mcp_chat"] == {
        "servers": ["web"],
        "mode": "return",
    }
    assert keys("update", created["id"], "--mcp-chat-servers", "")["mcp_chat"] is None
    unknown = manifold("keys", "--config", str(config_path), "create", "--mcp-chat-servers", "time,tmie")
    assert unknown.returncode == 1 and "mcp_chat.servers[1]" in unknown.stderr and "tmie" in unknown.stderr
    alone = manifold("keys", "--config", str(config_path), "update", created["id"], "--mcp-chat-mode", "execute")
    assert alone.returncode != 0 and "--mcp-chat-servers" in alone.stderr
    assert keys("list")["data"][0]["mcp_chat"] is None
