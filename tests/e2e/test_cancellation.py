"""A client that leaves stops the upstream work, on every route, every time (docs/responses.md, "Cancellation").

The fake upstream answers for 5 s (one chunk every 0.25 s when streamed) and records when Manifold closed the
connection. Each case is repeated: the bug this guards against was a race that lost only some of the time.
The bound asserted is far from the 5 s the upstream would otherwise run (a loaded machine must not make it
flake); bench/cancellation.py prints the real distribution.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ManifoldProcess
from tests.fakes.drip_upstream import DripUpstream

REPEATS = 30

CASES = {
    "chat-stream": (
        "/v1/chat/completions",
        {"model": "drip", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ),
    "chat": ("/v1/chat/completions", {"model": "drip", "messages": [{"role": "user", "content": "hi"}]}),
    "completions-stream": ("/v1/completions", {"model": "drip", "prompt": "hi", "stream": True}),
    "completions": ("/v1/completions", {"model": "drip", "prompt": "hi"}),
    "completions-via-chat-stream": ("/v1/completions", {"model": "drip-chat", "prompt": "hi", "stream": True}),
    "completions-via-chat": ("/v1/completions", {"model": "drip-chat", "prompt": "hi"}),
    "responses-stream": ("/v1/responses", {"model": "drip", "input": "hi", "stream": True}),
    "responses": ("/v1/responses", {"model": "drip", "input": "hi"}),
}


def drip_config(drip: DripUpstream) -> dict[str, Any]:
    return {
        "model_list": [
            {"model_name": "drip", "provider": "openai", "api_base": drip.base(), "supports_completions": True},
            {"model_name": "drip-chat", "provider": "openai", "api_base": drip.base(), "supports_completions": False},
        ],
        "router": {"num_retries": 0, "cooldown_time": 0},
        "server": {"log_level": "info"},
    }


@pytest.fixture(scope="module")
def drip() -> Iterator[DripUpstream]:
    with DripUpstream(interval=0.25, duration=5.0) as upstream:
        yield upstream


@pytest.fixture(scope="module")
def gateway(drip: DripUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    proc = ManifoldProcess(drip_config(drip), tmp_path_factory.mktemp("cancel"))
    yield proc
    proc.stop()


def leave_mid_answer(gateway: ManifoldProcess, drip: DripUpstream, path: str, body: dict[str, Any]) -> float:
    """Send the request, wait for the first SSE event (streamed) or for the upstream to get it (not streamed),
    then reset the connection. Returns how long after the reset the upstream saw its connection close."""
    before = len(drip.exchanges)
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    try:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            f"content-length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        if body.get("stream"):
            received = b""
            while b"data:" not in received or not received.split(b"data:", 1)[1].count(b"\n\n"):
                data = sock.recv(65536)
                assert data, f"the stream ended before its first event: {received!r}"
                received += data
        else:
            deadline = time.monotonic() + 10
            while len(drip.exchanges) == before and time.monotonic() < deadline:
                time.sleep(0.002)
        assert len(drip.exchanges) > before, "the request never reached the upstream"
        exchange = drip.exchanges[before]
    finally:
        # SO_LINGER 0: close() sends a reset, as a client that crashes or is killed does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        left = time.monotonic()
        sock.close()
    assert drip.wait_ended(exchange, timeout=8), "the upstream exchange neither closed nor finished"
    assert exchange.finished is None, f"the upstream answer ran to its end ({exchange.path})"
    assert exchange.closed is not None
    return exchange.closed - left


@pytest.mark.parametrize("case", list(CASES))
def test_leaving_closes_the_upstream_every_time(
    case: str, gateway: ManifoldProcess, drip: DripUpstream, tmp_path: Path
) -> None:
    path, body = CASES[case]
    delays = [leave_mid_answer(gateway, drip, path, body) for _ in range(REPEATS)]
    # The upstream would run 5 s; 1 s leaves room for a loaded machine (the bench prints the real figures).
    assert max(delays) < 1.0, f"{case}: upstream closed {max(delays):.3f} s after the client left"
    assert "Traceback" not in gateway.log()
