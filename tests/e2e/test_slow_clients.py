"""Slow and oversized requests (slowloris): `server.header_timeout`, `server.body_timeout` and
`server.max_header_size` close them with a 408 / 431, while other clients keep being served
(src/manifold/server/protocol.py)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ManifoldProcess
from tests.fakes.openai_upstream import FakeUpstream

HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.0
# Far beyond the timeouts, so that "closed before this" proves the timeout acted (and a loaded box cannot flake).
GIVE_UP = 20.0


@pytest.fixture(scope="module")
def server(fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    config = {
        "model_list": [{"model_name": "echo", "provider": "openai", "api_base": fake.base("echo")}],
        "server": {
            "header_timeout": HEADER_TIMEOUT,
            "body_timeout": BODY_TIMEOUT,
            "max_header_size": 4096,
            "log_level": "info",
        },
    }
    proc = ManifoldProcess(config, tmp_path_factory.mktemp("slow"))
    yield proc
    proc.stop()


def dribble(server: ManifoldProcess, first: bytes, then: bytes) -> tuple[bytes, float]:
    """Send `first`, then `then` one byte every 0.1 s until the server answers or closes. Returns what it
    answered (up to its closing) and how long that took."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    started = time.monotonic()
    received = b""
    try:
        if first:
            sock.sendall(first)
        sock.settimeout(0.1)
        position = 0
        while time.monotonic() - started < GIVE_UP:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                if position < len(then):
                    try:
                        sock.send(then[position : position + 1])
                    except OSError:
                        break
                    position += 1
                continue
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
        return received, time.monotonic() - started
    finally:
        sock.close()


def status_and_error(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split(b" ", 2)[1]), json.loads(body)["error"]


def test_slow_headers_get_a_408_and_the_connection_closes(server: ManifoldProcess) -> None:
    answer, took = dribble(server, b"POST /v1/chat/completions HTTP/1.1\r\n", b"x-slow: " + b"a" * 400)
    assert took < GIVE_UP, "the server kept the slow connection open"
    status, error = status_and_error(answer)
    assert status == 408 and error["code"] == "request_timeout" and "headers" in error["message"]


def test_a_silent_connection_is_closed(server: ManifoldProcess) -> None:
    answer, took = dribble(server, b"", b"")
    assert took < GIVE_UP
    assert status_and_error(answer)[0] == 408


def test_slow_body_gets_a_408(server: ManifoldProcess) -> None:
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi " * 100}]}).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode()
    answer, took = dribble(server, head + body[:10], body[10:])
    assert took < GIVE_UP
    status, error = status_and_error(answer)
    assert status == 408 and "body" in error["message"]


def test_oversized_headers_get_a_431(server: ManifoldProcess) -> None:
    big = b"GET /health HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-filler-%d: %s\r\n" % (i, b"v" * 100) for i in range(60))
    answer, _ = dribble(server, big, b"")
    status, error = status_and_error(answer)
    assert status == 431 and error["code"] == "request_header_fields_too_large"


def test_others_are_served_while_slow_clients_wait(server: ManifoldProcess) -> None:
    slow = [
        threading.Thread(target=dribble, args=(server, b"POST /v1/chat/completions HTTP/1.1\r\n", b"x-a: " * 40))
        for _ in range(20)
    ]
    for thread in slow:
        thread.start()
    try:
        with httpx.Client(base_url=server.base_url, timeout=10) as http:
            for _ in range(5):
                resp = http.post(
                    "/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "hi"}]}
                )
                assert resp.status_code == 200
                assert resp.json()["choices"][0]["message"]["content"] == "echo: hi"
    finally:
        for thread in slow:
            thread.join()


def test_keep_alive_requests_within_the_limits_still_work(server: ManifoldProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for _ in range(3):
            assert http.get("/health").status_code == 200
            time.sleep(HEADER_TIMEOUT * 1.5)  # idle between requests: the keep-alive rules, not the head's
        assert http.get("/health").status_code == 200
    assert "Traceback" not in server.log()


def test_a_head_growing_past_the_limit_is_refused_before_it_ends(server: ManifoldProcess) -> None:
    filler = b"".join(b"x-filler-%d: %s\r\n" % (i, b"v" * 100) for i in range(25))  # ~2.8 KB per part
    with socket.create_connection(("127.0.0.1", server.port), timeout=GIVE_UP) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nhost: x\r\n" + filler)
        time.sleep(0.2)  # a separate read: the head is incomplete after the first
        sock.sendall(filler)  # past 4096 bytes, and still no end of the head
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, error = status_and_error(answer)
    assert status == 431 and "4096 bytes" in error["message"]
