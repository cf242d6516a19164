"""What a newcomer meets first (issue 17): a config without `model_list` keeps the embedded models; `manifold
check` refuses everything `manifold serve` would refuse, with the same words; an unknown model stored with
`store: true` is a 404 even when the database is down."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ManifoldProcess


def manifold(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "manifold", *args], capture_output=True, text=True, timeout=60, cwd=cwd, env=os.environ
    )


def test_check_names_the_embedded_default_of_a_file_without_model_list(tmp_path: Path) -> None:
    (tmp_path / "storage.yaml").write_text("storage:\n  data_dir: ./data\n")
    result = manifold("check", "--config", "storage.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "storage.yaml: OK (2 deployment(s): minilm, smollm2)",
        "  no model_list: serving the embedded models smollm2 and minilm (model_list: [] serves none)",
    ]
    assert not (tmp_path / "data").exists(), "check must not leave the data folder behind"
    (tmp_path / "none.yaml").write_text("model_list: []\n")
    result = manifold("check", "--config", "none.yaml", cwd=tmp_path)
    assert result.stdout == "none.yaml: OK (0 deployment(s): none)\n"


def test_a_file_with_only_responses_settings_serves_the_embedded_models(tmp_path: Path) -> None:
    proc = ManifoldProcess({"responses": {"stream_retention_s": 60}}, tmp_path)
    try:
        models = httpx.get(proc.base_url + "/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == ["smollm2", "minilm"]
    finally:
        proc.stop()


PROBLEMS = {
    "default-id": (
        "model_list:\n"
        "  - {model_name: a, provider: openai, api_base: 'http://127.0.0.1:9/v1'}\n"
        "  - {model_name: a, provider: openai, api_base: 'http://127.0.0.1:9/v1', id: 'a#0'}\n",
        ["model_list[1].id: 'a#0' is already the id of model_list[0]"],
    ),
    "host-and-data-dir": (
        "model_list: []\nserver:\n  host: 999.1.1.1\nstorage:\n  data_dir: /proc/nope\n",
        [
            "server.host: '999.1.1.1' is not an address of this host",
            "storage.data_dir: cannot write '/proc/nope'",
        ],
    ),
    "not-local": ("model_list: []\nserver:\n  host: 192.0.2.1\n", ["server.host: cannot bind '192.0.2.1'"]),
    "data-dir-is-a-file": ("model_list: []\nstorage:\n  data_dir: ./afile\n", ["storage.data_dir: cannot write"]),
    "port-taken": ("model_list: []\nserver:\n  port: {taken}\n", ["server.port: cannot listen on 127.0.0.1:{taken}"]),
}


@pytest.mark.parametrize("case", sorted(PROBLEMS))
def test_check_and_serve_refuse_the_same_problems_with_the_same_words(tmp_path: Path, case: str) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        taken = listener.getsockname()[1]
        text, expected = PROBLEMS[case]
        expected = [e.replace("{taken}", str(taken)) for e in expected]
        (tmp_path / "afile").write_text("")
        (tmp_path / "c.yaml").write_text(text.replace("{taken}", str(taken)))
        checked = manifold("check", "--config", "c.yaml", cwd=tmp_path)
        port = [] if case == "port-taken" else ["--port", "0"]
        served = manifold("serve", "--config", "c.yaml", *port, cwd=tmp_path)
    assert checked.returncode == 1 and served.returncode == 1, served.stderr
    lines = checked.stderr.splitlines()
    assert lines[0] == f"c.yaml: {len(expected)} problem(s)"
    assert len(lines) == len(expected) + 1
    for line, start in zip(lines[1:], expected, strict=True):
        assert line.strip().startswith(start), checked.stderr
    assert served.stderr == checked.stderr


def test_store_true_for_an_unknown_model_is_404_even_with_the_database_down(tmp_path: Path) -> None:
    # Port 9 (discard) on 127.0.0.1: nothing listens, so every database call fails.
    config = {"storage": {"url": "postgresql+asyncpg://u:p@127.0.0.1:9/manifold"}}
    proc = ManifoldProcess(config, tmp_path)
    try:
        body = {"model": "no-such-model", "store": True, "messages": [{"role": "user", "content": "hi"}]}
        resp = httpx.post(proc.base_url + "/chat/completions", json=body, timeout=30)
        assert resp.status_code == 404, resp.text
        assert resp.json()["error"]["param"] == "model"
    finally:
        proc.stop()
