"""`manifold keys …` against the database a running server uses, a server with no master key that starts
requiring keys once one exists, and the start-up warning for a server anyone can reach without a key."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx

from tests.e2e.conftest import UPSTREAM_KEY, ManifoldProcess
from tests.e2e.test_cli import manifold
from tests.fakes.openai_upstream import FakeUpstream

MESSAGES = [{"role": "user", "content": "hi"}]
WARNING = "anyone who can reach this server can use it"


def keys_config(fake: FakeUpstream, data_dir: Path, **auth: Any) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "fake-echo", "provider": "openai", "api_base": fake.base("echo"), "api_key": UPSTREAM_KEY}
        ],
        "storage": {"data_dir": str(data_dir)},
        "auth": {"key_cache_ttl_s": 0.5, **auth},
    }


def status(server: ManifoldProcess, secret: str | None) -> int:
    headers = {"authorization": f"Bearer {secret}"} if secret else {}
    return httpx.post(
        server.base_url + "/chat/completions",
        json={"model": "fake-echo", "messages": MESSAGES},
        headers=headers,
        timeout=20,
    ).status_code


def eventually(server: ManifoldProcess, secret: str | None, expected: int) -> None:
    """Wait (up to 10 s: many TTLs of 0.5 s) until the server answers `expected`."""
    deadline = time.monotonic() + 10
    while status(server, secret) != expected:
        assert time.monotonic() < deadline, f"still not {expected}"
        time.sleep(0.1)


def keys(config_path: Path, *args: str) -> Any:
    result = manifold("keys", "--config", str(config_path), *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_keys_from_the_command_line_protect_a_running_server(fake: FakeUpstream, tmp_path: Path) -> None:
    config = keys_config(fake, tmp_path / "data")
    server = ManifoldProcess(config, tmp_path)
    config_path = next(tmp_path.glob("config-*.yaml"))
    try:
        assert status(server, None) == 200  # no master key, no virtual key: open
        created = keys(config_path, "create", "--alias", "cli", "--user", "bob", "--models", "fake-echo", "--rpm", "5")
        secret = created["key"]
        assert secret.startswith("sk-mf-") and created["models"] == ["fake-echo"] and created["rpm"] == 5
        eventually(server, None, 401)  # a key exists now: every API route needs one
        assert status(server, secret) == 200
        listed = keys(config_path, "list", "--user", "bob")
        assert [k["id"] for k in listed["data"]] == [created["id"]]
        assert secret not in json.dumps(listed)
        assert created["mcp_servers"] is None  # every configured MCP server
        assert keys(config_path, "update", created["id"], "--mcp-servers", "time, web")["mcp_servers"] == [
            "time",
            "web",
        ]
        assert keys(config_path, "update", created["id"], "--mcp-servers", "")["mcp_servers"] == []
        assert keys(config_path, "update", created["id"], "--block")["blocked"] is True
        eventually(server, secret, 401)
        keys(config_path, "update", created["id"], "--unblock")
        eventually(server, secret, 200)
        rotated = keys(config_path, "rotate", created["id"], "--grace-s", "0")
        assert rotated["key"] != secret
        eventually(server, secret, 401)
        assert status(server, rotated["key"]) == 200
        keeper = keys(config_path, "create")  # the last key gone, the server would be open again (docs/access.md)
        assert keys(config_path, "revoke", created["id"])["deleted"] is True
        eventually(server, rotated["key"], 401)
        assert status(server, keeper["key"]) == 200
        keys(config_path, "revoke", keeper["id"])
        eventually(server, None, 200)
        failed = manifold("keys", "--config", str(config_path), "revoke", created["id"])
        assert failed.returncode == 1 and "No key found" in failed.stderr
        bad = manifold("keys", "--config", str(config_path), "create", "--rpm", "-3")
        assert bad.returncode == 1 and "rpm" in bad.stderr
    finally:
        server.stop()
    assert secret not in server.log() and rotated["key"] not in server.log()


def test_a_reachable_server_without_any_key_warns_at_start_up(fake: FakeUpstream, tmp_path: Path) -> None:
    exposed = ManifoldProcess(keys_config(fake, tmp_path / "a"), tmp_path, extra_args=("--host", "0.0.0.0"))
    try:
        httpx.get(exposed.url + "/v1/models", timeout=20)  # the warning follows the first count of keys
        deadline = time.monotonic() + 10
        while WARNING not in exposed.log() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        exposed.stop()
    line = next(line for line in exposed.log().splitlines() if WARNING in line)
    assert "WARNING" in line and "0.0.0.0" in line and "NO master key" in line
    protected = ManifoldProcess(
        keys_config(fake, tmp_path / "b", master_key="sk-master-abcdefghijkl"),
        tmp_path,
        extra_args=("--host", "0.0.0.0"),
    )
    local = ManifoldProcess(keys_config(fake, tmp_path / "c"), tmp_path)
    try:
        for proc in (protected, local):
            httpx.get(proc.url + "/v1/models", timeout=20)
            assert httpx.get(proc.url + "/health/ready", timeout=20).status_code == 200
    finally:
        protected.stop()
        local.stop()
    assert WARNING not in protected.log() and WARNING not in local.log()


def test_a_database_that_is_down_refuses_virtual_keys_but_not_the_master_key(
    fake: FakeUpstream, tmp_path: Path
) -> None:
    from tests.e2e.conftest import free_port

    down = {"url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/nothing"}
    master = "sk-master-abcdefghijkl-0123"
    config = keys_config(fake, tmp_path / "unused", master_key=master) | {"storage": down}
    protected = ManifoldProcess(config, tmp_path)
    try:
        assert status(protected, master) == 200
        resp = httpx.post(
            protected.base_url + "/chat/completions",
            json={"model": "fake-echo", "messages": MESSAGES},
            headers={"authorization": "Bearer sk-mf-0123456789abcdefghijklmnopqrstuvwxyzABCDEFG"},
            timeout=20,
        )
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "storage_unavailable"
        assert status(protected, None) == 401
    finally:
        protected.stop()
    # Without a master key the server cannot know its keys: it serves (like everything that stores nothing while
    # the database is down) and says so.
    unprotected = ManifoldProcess(keys_config(fake, tmp_path / "unused") | {"storage": down}, tmp_path)
    try:
        assert status(unprotected, None) == 200
    finally:
        unprotected.stop()
    assert "serving WITHOUT authentication" in unprotected.log()
    assert "Traceback" not in protected.log() + unprotected.log()
