"""The redaction sweep: every fault path, with debug logging on, in both log formats; then every secret's
plaintext is searched for in all the output (the server's log, the answers the clients got, `manifold check`).

One upstream here echoes the key it was sent in its 401 message, as some providers and proxies do: without
redaction that key would reach both the log and the client."""

from __future__ import annotations

import http.server
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import ManifoldProcess, free_port
from tests.fakes.openai_upstream import FakeUpstream

UPSTREAM_KEY = "sk-upstream-redact-0123456789abcdef"
HEADER_SECRET = "vendor-header-secret-4242"
COMPACTION_KEY = "compaction-secret-9876543210"
CLIENT_BEARER = "sk-client-secret-abcdef123456"
CLIENT_API_KEY = "client-api-key-secret-777777"
CLIENT_X_API_KEY = "client-x-api-key-secret-888888"
SECRETS = (UPSTREAM_KEY, HEADER_SECRET, COMPACTION_KEY, CLIENT_BEARER, CLIENT_API_KEY, CLIENT_X_API_KEY)
MESSAGES = [{"role": "user", "content": "hello"}]


class KeyEchoingUpstream:
    """Answers every request 401 with the credentials it was sent in the message."""

    def __init__(self) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                sent = self.headers.get("authorization", "")
                body = json.dumps(
                    {
                        "error": {
                            "message": f"Incorrect API key provided: {sent.removeprefix('Bearer ')} "
                            f"(x-vendor-token={self.headers.get('x-vendor-token')})",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": "invalid_api_key",
                        }
                    }
                ).encode()
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def echoing() -> Iterator[KeyEchoingUpstream]:
    upstream = KeyEchoingUpstream()
    yield upstream
    upstream.server.shutdown()


def secret_config(fake: FakeUpstream, echoing: KeyEchoingUpstream, log_format: str) -> dict[str, Any]:
    def dep(name: str, api_base: str, **extra: Any) -> dict[str, Any]:
        return {
            "model_name": name,
            "provider": "openai",
            "api_base": api_base,
            "api_key": UPSTREAM_KEY,
            "headers": {"x-vendor-token": HEADER_SECRET},
            "timeouts": {"connect": 1, "first_byte": 1},
            **extra,
        }

    behaviors = ["status:401", "status:429", "status:500", "cut", "stream_error", "malformed", "hang", "echo"]
    deployments = [dep(f"r-{b}", fake.base(f"{b}@redact")) for b in behaviors]
    deployments.append(dep("r-echo-key", echoing.base))
    deployments.append(dep("r-refused", f"http://127.0.0.1:{free_port()}/v1"))
    return {
        "model_list": deployments,
        "router": {"num_retries": 1, "retry_backoff": 0.01, "max_retry_after": 0},
        "responses": {"compaction_key": COMPACTION_KEY},
        "server": {"log_level": "debug", "log_format": log_format, "max_body_size": 4096},
    }


def drive_every_fault(url: str) -> list[str]:
    """Every fault path a client can reach; returns everything the clients were sent. The clients' own keys
    travel only in their headers (a client that puts its key in a message gets it echoed to itself, as from
    OpenAI)."""
    headers = {
        "authorization": f"Bearer {CLIENT_BEARER}",
        "api-key": CLIENT_API_KEY,
        "x-api-key": CLIENT_X_API_KEY,
    }
    seen: list[str] = []
    with httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        for model in (
            "r-status:401",
            "r-status:429",
            "r-status:500",
            "r-hang",
            "r-malformed",
            "r-echo-key",
            "r-refused",
            "no-such-model",
        ):
            for stream in (False, True):
                resp = http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "stream": stream})
                seen.append(resp.text)
        for model in ("r-cut", "r-stream_error"):
            resp = http.post("/v1/chat/completions", json={"model": model, "messages": MESSAGES, "stream": True})
            seen.append(resp.text)
        # Bad input: not JSON, wrong types, too large, a wrong method, a wrong path.
        seen.append(http.post("/v1/chat/completions", content=b"{not json").text)
        seen.append(http.post("/v1/chat/completions", json={"model": "r-echo", "messages": "x", "temperature": 9}).text)
        seen.append(
            http.post("/v1/chat/completions", json={"model": "r-echo", "messages": [{"role": "not-a-role"}]}).text
        )
        seen.append(http.post("/v1/chat/completions", content=b"x" * 10_000).text)
        seen.append(http.delete("/v1/chat/completions").text)
        seen.append(http.get("/v1/no/such/path").text)
        seen.append(http.post("/v1/embeddings", json={"model": "r-status:401", "input": "hi"}).text)
        seen.append(http.get("/health/ready?detail=1").text)
        # A client that leaves mid-stream.
        with http.stream(
            "POST", "/v1/chat/completions", json={"model": "r-echo", "messages": MESSAGES, "stream": True}
        ) as r:
            next(r.iter_bytes())
    return seen


def assert_no_secret(where: str, text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"{where} shows the secret {secret!r}:\n" + "\n".join(
            line for line in text.splitlines() if secret in line
        )


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_no_secret_in_any_output(
    fake: FakeUpstream, echoing: KeyEchoingUpstream, tmp_path: Path, log_format: str
) -> None:
    proc = ManifoldProcess(secret_config(fake, echoing, log_format), tmp_path)
    try:
        answers = drive_every_fault(proc.url)
        # The key-echoing upstream was really reached with the key, and said it back.
        assert any("Incorrect API key provided" in a for a in answers)
    finally:
        proc.stop()
    log = proc.log()
    # Debug logging was on and the faults were logged.
    assert "r-status:500" in log or "status:500" in log
    assert "[REDACTED]" in log
    for answer in answers:
        assert_no_secret("an answer", answer)
    assert_no_secret("the log", log)


def test_no_secret_in_config_errors(tmp_path: Path) -> None:
    config = {
        "model_list": [
            {
                "model_name": "x",
                "provider": "openai",
                "api_key": UPSTREAM_KEY,
                "headers": {"x-vendor-token": HEADER_SECRET},
                "max_connections": -1,
                "timeouts": {"connect": UPSTREAM_KEY},
            },
            {"model_name": "y", "provider": UPSTREAM_KEY, "api_key": UPSTREAM_KEY},
        ],
        "responses": {"compaction_key": COMPACTION_KEY, "stream_buffer_events": 1},
        "server": {"log_level": "debug"},
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    for command in ("check", "serve"):
        started = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "manifold", command, "--config", str(path), "--port", str(free_port())]
            if command == "serve"
            else [sys.executable, "-m", "manifold", command, "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1 and time.monotonic() - started < 60
        assert "problem" in out.stderr
        assert_no_secret(f"manifold {command}", out.stdout + out.stderr)
