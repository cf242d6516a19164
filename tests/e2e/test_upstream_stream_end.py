"""An upstream stream that ends without `data: [DONE]` (issue 10 §4: never a 200 that drops content):

- before any choice finished, the answer was cut short: the client gets the chunks so far, then one error event,
  and no `[DONE]` (a `[DONE]` would tell it the answer is whole);
- after a `finish_reason`, the answer is whole (some servers leave the sentinel out): it ends with `[DONE]`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ManifoldProcess
from tests.e2e.test_chat import sse_events
from tests.fakes import raw_sse_upstream


def _chunk(content: str | None, finish: str | None) -> bytes:
    delta = {"content": content} if content is not None else {}
    body = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


STREAMS = {
    "cut": _chunk("Hel", None) + _chunk("lo", None),
    "finished": _chunk("Hel", None) + _chunk("lo", None) + _chunk(None, "stop"),
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    socks = []
    models = []
    for name, body in STREAMS.items():
        # Close-delimited, ended cleanly: the body is whole as HTTP goes, only the SSE stream is short.
        sock, api_base = raw_sse_upstream.start(lambda conn, body=body: conn.sendall(body))
        socks.append(sock)
        models.append({"model_name": name, "provider": "openai", "api_base": api_base})
    proc = ManifoldProcess(
        {"model_list": models, "router": {"num_retries": 0, "cooldown_time": 0}},
        Path(tmp_path_factory.mktemp("stream-end")),
    )
    yield proc
    proc.stop()
    for sock in socks:
        sock.close()


def _stream(gateway: ManifoldProcess, model: str) -> list[object]:
    answer = httpx.post(
        gateway.base_url + "/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True},
        timeout=30,
    )
    assert answer.status_code == 200
    return sse_events(answer.text)


def test_a_stream_cut_before_it_finished_ends_in_an_error_event(gateway: ManifoldProcess) -> None:
    events = _stream(gateway, "cut")
    assert "[DONE]" not in events
    assert [e["choices"][0]["delta"].get("content") for e in events[:-1]] == ["Hel", "lo"]  # type: ignore[index]
    error = events[-1]["error"]  # type: ignore[index]
    assert "before the answer finished" in error["message"]
    assert "Traceback" not in gateway.log()


def test_a_finished_stream_without_the_sentinel_is_whole(gateway: ManifoldProcess) -> None:
    events = _stream(gateway, "finished")
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"  # type: ignore[index]
