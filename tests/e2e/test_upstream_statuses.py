"""Only an answer is an answer (issue 10 §5, issue 11 #7): an upstream that redirects or answers 204 / 202 gets a
502 naming the status on every endpoint, streamed or not, never a 200 with nothing in it. And a deployment with
`transport: httpx` serves the same requests as the built-in client does.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.fakes.openai_upstream import FakeUpstream

# path prefix → (status, content type, body) the scripted upstream answers every request under it with
SCRIPTS: dict[str, tuple[int, str | None, bytes]] = {
    "302json": (302, "application/json", b'{"object": "chat.completion", "choices": []}'),
    "302html": (302, "text/html", b"<html><body>Moved</body></html>"),
    "301": (301, None, b""),
    "204": (204, None, b""),
    "202": (202, "application/json", b'{"id": "job_1", "status": "queued"}'),
}


class _Scripted(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        status, content_type, body = SCRIPTS[self.path.strip("/").split("/", 1)[0]]
        self.send_response(status)
        if 300 <= status < 400:
            self.send_header("Location", "https://elsewhere.example/v1/chat/completions")
        if content_type:
            self.send_header("Content-Type", content_type)
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if status != 204:
            self.wfile.write(body)

    do_GET = do_POST

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def scripted() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def gateway(scripted: str, fake: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ManifoldProcess]:
    deployments: list[dict[str, Any]] = [
        {"model_name": f"up-{name}", "provider": "openai", "api_base": f"{scripted}/{name}/v1"} for name in SCRIPTS
    ]
    deployments.append(
        {"model_name": "via-httpx", "provider": "openai", "api_base": fake.base("echo"), "transport": "httpx"}
    )
    config = {"model_list": deployments, "router": {"num_retries": 0, "cooldown_time": 0}}
    proc = ManifoldProcess(config, Path(tmp_path_factory.mktemp("statuses")))
    yield proc
    proc.stop()


def _requests(model: str) -> list[tuple[str, dict[str, Any]]]:
    chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    completion = {"model": model, "prompt": "hi"}
    response = {"model": model, "input": "hi"}
    return [
        ("/v1/chat/completions", chat),
        ("/v1/chat/completions", {**chat, "stream": True}),
        ("/v1/completions", completion),
        ("/v1/completions", {**completion, "stream": True}),
        ("/v1/embeddings", {"model": model, "input": "hi"}),
        ("/v1/images/generations", {"model": model, "prompt": "an otter"}),
        ("/v1/responses", response),
        ("/v1/responses", {**response, "stream": True}),
    ]


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_a_status_that_carries_no_answer_is_a_502_on_every_endpoint(gateway: ManifoldProcess, name: str) -> None:
    status = SCRIPTS[name][0]
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        for path, body in _requests(f"up-{name}"):
            resp = client.post(path, json=body)
            where = f"{path} stream={body.get('stream', False)}"
            assert resp.status_code == 502, (where, resp.text)
            assert resp.headers["content-type"] == "application/json", where
            error = resp.json()["error"]
            assert_valid("ErrorResponse", resp.json())
            assert f"status {status}" in error["message"], where
            assert ("redirect" in error["message"]) == (300 <= status < 400), where
            assert "elsewhere.example" not in error["message"]
    assert "Traceback" not in gateway.log()


def test_a_deployment_with_the_httpx_transport_answers(gateway: ManifoldProcess, fake: FakeUpstream) -> None:
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        chat = {"model": "via-httpx", "messages": [{"role": "user", "content": "hello there"}]}
        resp = client.post("/v1/chat/completions", json=chat)
        assert resp.status_code == 200, resp.text
        assert_valid("CreateChatCompletionResponse", resp.json())
        assert resp.json()["choices"][0]["message"]["content"]
        with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as stream:
            assert stream.status_code == 200
            lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert len(lines) > 2
