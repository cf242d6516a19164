"""`manifold check` and config loading as a user meets them on the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from tests.e2e.conftest import ManifoldProcess, free_port


def manifold(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "manifold", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_check_accepts_a_good_config(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: gpt-4o\n"
        "    provider: openai\n"
        "    api_base: https://api.openai.com/v1\n"
        "    api_key: ${OPENAI_API_KEY}\n"
    )
    result = manifold("check", "--config", str(path), env={"OPENAI_API_KEY": "sk-x"})
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout and "gpt-4o" in result.stdout


def test_check_reports_every_problem_with_its_location(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: a\n"
        "    provider: openia\n"
        "  - model_name: b\n"
        "    provider: openai\n"
        "    api_base: http://127.0.0.1:1/v1\n"
        "    timeouts: {connect: -1}\n"
        "  - model_name: c\n"
        "    provider: openai\n"
        "    colour: blue\n"
        "server:\n"
        "  prefixes: [v1]\n"
        "  port: http\n"
        "extra_section: {}\n"
    )
    result = manifold("check", "--config", str(path), env={"OPENAI_API_KEY": "sk-x"})
    assert result.returncode == 1
    err = result.stderr
    for location in (
        "model_list[2].colour",
        "model_list[1].timeouts.connect",
        "server.port",
        "extra_section",
    ):
        assert location in err, err
    assert "Traceback" not in err


def test_check_reports_semantic_problems(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text(
        '{"model_list": [{"model_name": "a", "provider": "openia"}, {"model_name": "b", "provider": "openai"}],'
        ' "server": {"prefixes": ["v1", "/ok"]}}'
    )
    result = manifold("check", "--config", str(path))
    assert result.returncode == 1
    assert "model_list[0].provider" in result.stderr
    assert "model_list[1].api_base" in result.stderr
    assert "server.prefixes[0]" in result.stderr and "must start with '/'" in result.stderr


def test_check_reports_unreadable_and_invalid_files(tmp_path: Path) -> None:
    assert manifold("check", "--config", str(tmp_path / "missing.yaml")).returncode == 1
    broken = tmp_path / "broken.yaml"
    broken.write_text("model_list: [\n")
    result = manifold("check", "--config", str(broken))
    assert result.returncode == 1 and "line" in result.stderr


def test_env_override_and_references_reach_the_server(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "env.yaml"
    path.write_text("model_list: []\nserver:\n  prefixes: ['${PREFIX}']\n")
    env = {"MANIFOLD_SERVER__PORT": str(port), "PREFIX": "/v3"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "manifold", "serve", "--config", str(path)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/v3/models", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise AssertionError("server exited") from None
                import time

                time.sleep(0.05)
        assert resp.status_code == 200 and resp.json() == {"object": "list", "data": []}
    finally:
        proc.terminate()
        proc.wait(10)


def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("server: {prefixes: [v1]}\n")
    result = manifold("serve", "--config", str(path), "--port", str(free_port()))
    assert result.returncode == 1 and "server.prefixes[0]" in result.stderr


def test_several_workers_serve(tmp_path: Path) -> None:
    proc = ManifoldProcess({"model_list": [], "server": {"workers": 2}}, tmp_path)
    try:
        for _ in range(10):
            assert httpx.get(proc.base_url + "/models").status_code == 200
    finally:
        proc.stop()


def test_check_reports_a_wrong_kind_key_and_each_cross_check_once(tmp_path: Path) -> None:
    path = tmp_path / "kinds.yaml"
    path.write_text(
        "model_list:\n"
        "  - model_name: a\n"
        "    provider: openai\n"
        "    api_base: http://127.0.0.1:1/v1\n"
        "    model_path: /models/a.gguf\n"
        "  - model_name: b\n"
        "    provider: azure\n"
        "    api_base: https://example.openai.azure.com\n"
        "    model: b\n"
        "router:\n"
        "  fallbacks: [nope]\n"
        "  groups: {b: {fallbacks: [a, gone]}}\n"
    )
    result = manifold("check", "--config", str(path))
    assert result.returncode == 1
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert lines[0].endswith("4 problem(s)"), result.stderr
    assert lines[1:] == [
        # decoding: the key of another kind, with its path
        "model_list[0].model_path: only read by provider local / local_embedding, not 'openai'",
        # the validation step, once each
        "model_list[1].api_version: required for azure (e.g. 2024-10-21)",
        "router.fallbacks[0]: 'nope' is not a model name, alias or wildcard match",
        "router.groups.b.fallbacks[1]: 'gone' is not a model name, alias or wildcard match",
    ], result.stderr
