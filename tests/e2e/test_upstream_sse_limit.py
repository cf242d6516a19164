"""An upstream stream line past `limits.max_sse_line_bytes` after the stream started (issue 11 #3, issue 10 §7):
the client gets the chunks before it, then one error event naming the limit, and the stream ends — no `[DONE]`,
no hang, no traceback. Before the first chunk it is a 502."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ManifoldProcess
from tests.e2e.test_chat import sse_events
from tests.fakes import raw_sse_upstream

CHUNK = {
    "id": "chatcmpl-1",
    "object": "chat.completion.chunk",
    "created": 1,
    "model": "m",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": None}],
}
LIMIT = 4096


def _answer(first_chunk: bool) -> Callable[[socket.socket], None]:
    def answer(conn: socket.socket) -> None:
        if first_chunk:
            conn.sendall(b"data: " + json.dumps(CHUNK).encode() + b"\n\n")
        # One line four times the limit, never ended.
        conn.sendall(b"data: " + b"x" * (4 * LIMIT))
        try:
            conn.recv(1)  # hold the connection until the gateway gives up on it
        except OSError:
            pass

    return answer


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, str]]:
    urls: dict[str, str] = {}
    socks = []
    for name, first in (("after", True), ("before", False)):
        sock, urls[name] = raw_sse_upstream.start(_answer(first))
        socks.append(sock)
    yield urls
    for sock in socks:
        sock.close()


@pytest.fixture(scope="module")
def gateway(upstreams: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    config = {
        "model_list": [
            {"model_name": name, "provider": "openai", "api_base": url, "limits": {"max_sse_line_bytes": LIMIT}}
            for name, url in upstreams.items()
        ],
        "router": {"num_retries": 0, "cooldown_time": 0},
    }
    proc = ManifoldProcess(config, Path(tmp_path_factory.mktemp("sse-limit")))
    yield proc
    proc.stop()


def _stream(gateway: ManifoldProcess, model: str) -> httpx.Response:
    return httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=30,
    )


def test_an_overlong_line_mid_stream_is_one_error_event_and_the_end(gateway: ManifoldProcess) -> None:
    answer = _stream(gateway, "after")
    assert answer.status_code == 200
    events = sse_events(answer.text)
    assert events[0]["choices"][0]["delta"]["content"] == "Hel"
    assert "[DONE]" not in events
    error = events[-1]["error"]
    assert "limits.max_sse_line_bytes" in error["message"] and error["code"] == "upstream_response_too_large"
    assert "Traceback" not in gateway.log()


def test_an_overlong_line_before_the_first_chunk_is_a_502(gateway: ManifoldProcess) -> None:
    answer = _stream(gateway, "before")
    assert answer.status_code == 502
    assert "limits.max_sse_line_bytes" in answer.json()["error"]["message"]
