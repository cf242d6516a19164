"""The `mcp_servers` and `mcp` sections: each transport, every problem with its location, secrets kept out of
the problems and listed for redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

from manifold.config import McpHttpServer, McpSseServer, McpStdioServer, load_config, secrets_of
from manifold.errors import ConfigError
from manifold.mcp.manager import TRUNCATION_MARKER, function_name, truncate


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_each_transport_and_the_mcp_section(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
mcp_servers:
  time: {command: mcp-server-time, args: [--local-timezone, UTC], env: {TZ_KEY: "${TZ_SECRET}"}}
  web:
    transport: streamable_http
    url: http://127.0.0.1:9/mcp
    headers: {Authorization: "Bearer ${WEB_TOKEN}"}
    require_approval: {delete: always}
    allowed_tools: [read, delete]
  old: {transport: sse, url: "http://127.0.0.1:9/sse", call_timeout_s: 5, max_output_bytes: 100}
mcp:
  allow_client_servers: ["https://mcp.example.com/*"]
  max_tool_rounds: 2
  models: {smollm2: {servers: [time, web], mode: execute}}
""",
    )
    config = load_config(path, {"WEB_TOKEN": "sk-web-1234", "TZ_SECRET": "tz-secret-99"})
    time_, web, old = config.mcp_servers["time"], config.mcp_servers["web"], config.mcp_servers["old"]
    assert isinstance(time_, McpStdioServer) and time_.args == ["--local-timezone", "UTC"]
    assert isinstance(web, McpHttpServer) and web.headers == {"Authorization": "Bearer sk-web-1234"}
    assert web.require_approval == {"delete": "always"} and web.allowed_tools == ["read", "delete"]
    assert isinstance(old, McpSseServer) and old.call_timeout_s == 5 and old.max_output_bytes == 100
    assert config.mcp.max_tool_rounds == 2 and config.mcp.models["smollm2"].mode == "execute"
    secrets = secrets_of(config)
    assert "Bearer sk-web-1234" in secrets and "tz-secret-99" in secrets


def test_problems_name_their_place(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
mcp_servers:
  a__b: {command: x}
  nohow: {args: [1]}
  web: {transport: streamable_http, url: "ftp://x", headers: {Authorization: "Bearer sk-leak-5678"}, colour: red}
  bad: {transport: carrier_pigeon}
  ok: {command: x, require_approval: sometimes}
mcp:
  max_tool_rounds: 0
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path, {})
    text = str(exc.value)
    assert "mcp_servers.a__b: a label is" in text
    assert "mcp_servers.nohow.transport: expected one of: stdio, streamable_http, sse" in text
    assert "mcp_servers.web.colour: unknown key" in text
    assert "mcp_servers.bad.transport" in text
    assert "mcp_servers.ok.require_approval" in text
    assert "mcp.max_tool_rounds" in text
    assert "sk-leak-5678" not in text


def test_chat_models_name_configured_servers_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
mcp_servers:
  time: {command: mcp-server-time}
mcp:
  models:
    smollm2: {servers: [time, nope, time]}
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path, {})
    text = str(exc.value)
    assert "mcp.models.smollm2.servers[1]: unknown MCP server 'nope' (configured: time)" in text
    assert "mcp.models.smollm2.servers[2]: 'time' is listed twice" in text


def test_static_keys_and_teams_name_configured_servers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
mcp_servers:
  time: {command: mcp-server-time}
auth:
  keys:
    - {key: sk-static-0123456789, alias: a, team: t, mcp_servers: [time, tmie, time__convert_time, tmie__x]}
  teams:
    t: {mcp_servers: [nope]}
""",
    )
    with pytest.raises(ConfigError) as exc:
        load_config(path, {})
    text = str(exc.value)
    assert "auth.keys[0].mcp_servers[1]: unknown MCP server 'tmie' (configured: time)" in text
    assert "mcp_servers[2]" not in text
    assert "auth.keys[0].mcp_servers[3]: unknown MCP server 'tmie__x' (configured: time)" in text
    assert "auth.teams.t.mcp_servers[0]: unknown MCP server 'nope' (configured: time)" in text
    assert "sk-static-0123456789" not in text


def test_a_key_gets_the_servers_its_list_and_its_team_both_allow() -> None:
    from manifold.access import keys
    from manifold.access.principal import both
    from manifold.access.static_keys import principal_of
    from manifold.config import StaticKey, StaticTeam

    assert both(None, None) is None
    assert both(["a", "b"], None) == {"a", "b"} and both(None, ["a"]) == {"a"}
    assert both(["a", "b"], ["b", "c"]) == {"b"} and both([], None) == frozenset()
    # single tools: `label__tool` narrows a whole server in the other list; two different tools allow neither
    assert both(["a", "b__x"], ["a__y", "b"]) == {"a__y", "b__x"}
    assert both(["a__x", "b__x"], ["a__x", "b__y"]) == {"a__x"}
    key = StaticKey(key="sk-static-0123456789", alias="k", team="t", mcp_servers=["a", "b"])
    assert principal_of(key, {"t": StaticTeam(mcp_servers=["b"])}).mcp_servers == {"b"}
    assert principal_of(key, {}).mcp_servers == {"a", "b"}
    row = keys.new_row("key", keys.row_values(keys.parse_body(b'{"mcp_servers": ["a"]}', keys.KeyCreate)), 0)
    row.update(key_hash="", display="")
    team = keys.new_row("team", {}, 0)
    assert keys.principal_of(row, team).mcp_servers == {"a"}
    assert keys.key_object(row)["mcp_servers"] == ["a"] and keys.team_object(team)["mcp_servers"] is None


def test_function_names_and_truncation() -> None:
    assert function_name("git", "git_status") == "git__git_status"
    assert function_name("web", "pages.read/v2") == "web__pages_read_v2"
    assert len(function_name("x" * 40, "y" * 60)) == 64
    assert truncate("short", 100) == "short"
    cut = truncate("é" * 100, 51)  # never splits a character
    assert cut.startswith("é" * 25) and cut.endswith(TRUNCATION_MARKER.format(shown=50, total=200))


def test_mcp_routes_are_mounted_under_each_prefix_with_servers_only() -> None:
    from manifold.config import parse_config
    from manifold.server.handlers import MCP_ROUTES, default_routes

    plain = {(r.method, r.path) for r in default_routes(parse_config({}, {}))}
    assert not any("/mcp" in path for _, path in plain)
    config = parse_config({"server": {"prefixes": ["/v1", "/x"]}, "mcp_servers": {"t": {"command": "t"}}}, {})
    mounted = {(r.method, r.path) for r in default_routes(config)}
    assert {(r.method, p + r.path) for p in ("/v1", "/x") for r in MCP_ROUTES} <= mounted
