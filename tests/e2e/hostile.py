"""A real `manifold serve` in front of the hostile upstream (tests/fakes/hostile_upstream.py), and the checks every
answer must pass whatever the request and whatever the upstream did: a documented status, OpenAI's error envelope
on every 4xx/5xx, and a stream that ends with `[DONE]` or an error event."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conformance.schema import assert_valid
from tests.e2e.conftest import ManifoldProcess
from tests.fakes.hostile_upstream import HostileUpstream

MODEL = "hostile"
NATIVE = "hostile-native"
# The translating backends, pointed at the same upstream (it answers every POST, whatever the path).
ANTHROPIC = "hostile-anthropic"
OIP = "hostile-oip"
OIP_GENERATE = "hostile-oip-generate"
# The upstream faults a gateway may answer with (docs/errors.md): bad gateway, unavailable, timeout.
UPSTREAM_FAULTS = frozenset({502, 503, 504})
RESPONSES_TERMINAL = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})


def gateway_config(upstream: HostileUpstream, data_dir: Path) -> dict[str, Any]:
    timeouts = {"connect": 2, "first_byte": 3, "total": 6}
    root = upstream.base_url.removesuffix("/v1")
    return {
        "model_list": [
            {"model_name": MODEL, "provider": "openai", "api_base": upstream.base_url, "timeouts": timeouts},
            {
                "model_name": NATIVE,
                "provider": "openai",
                "api_base": upstream.base_url,
                "responses": "native",
                "timeouts": timeouts,
            },
            {"model_name": ANTHROPIC, "provider": "anthropic", "api_base": upstream.base_url, "timeouts": timeouts},
            {"model_name": OIP, "provider": "kserve_v2", "api_base": root, "model": "m", "timeouts": timeouts},
            {
                "model_name": OIP_GENERATE,
                "provider": "kserve_v2",
                "mode": "generate",
                "api_base": root,
                "model": "g",
                "timeouts": timeouts,
            },
        ],
        # One upstream exchange per request: what the client gets is what that exchange deserves.
        "router": {"num_retries": 0, "cooldown_time": 0},
        "server": {"keepalive_interval": 0.5, "max_body_size": 65536, "log_level": "info"},
        "storage": {"data_dir": str(data_dir)},
    }


def start_gateway(upstream: HostileUpstream, workdir: Path) -> ManifoldProcess:
    return ManifoldProcess(gateway_config(upstream, workdir / "data"), workdir)


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def streamed(self) -> bool:
        return self.content_type.startswith("text/event-stream")


def post(http: httpx.Client, path: str, body: bytes | dict[str, Any]) -> Answer:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with http.stream("POST", path, content=content, headers={"content-type": "application/json"}) as resp:
        data = resp.read()
    return Answer(resp.status_code, resp.headers.get("content-type", ""), data)


def sse_payloads(body: bytes) -> list[tuple[str | None, str]]:
    """(event name, data) of each SSE event."""
    out = []
    for block in body.decode().split("\n\n"):
        event = None
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((event, "\n".join(data)))
    return out


def check_error_envelope(answer: Answer) -> dict[str, Any]:
    assert answer.content_type.startswith("application/json"), answer
    body = answer.json()
    assert_valid("ErrorResponse", body)
    assert set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"], body
    return dict(body["error"])


def check_stream_end(answer: Answer, responses_api: bool) -> str:
    """The stream ends as OpenAI's do; returns "done", "error" or the terminal Responses event's type."""
    events = sse_payloads(answer.body)
    assert events, answer.body[:500]
    name, last = events[-1]
    if responses_api:
        decoded = json.loads(last)
        assert decoded["type"] in RESPONSES_TERMINAL, answer.body[-500:]
        assert name == decoded["type"]
        return str(decoded["type"])
    if last == "[DONE]":
        for _, data in events[:-1]:
            assert "error" not in json.loads(data), answer.body[-500:]
        return "done"
    decoded = json.loads(last)
    assert set(decoded) == {"error"}, answer.body[-500:]
    assert set(decoded["error"]) == {"message", "type", "param", "code"}
    return "error"


def check_answer(answer: Answer, responses_api: bool = False) -> None:
    """What holds for every answer, whatever the request and the upstream did."""
    if answer.status >= 500:
        assert answer.status in UPSTREAM_FAULTS, answer
    if answer.status >= 400:
        check_error_envelope(answer)
    elif answer.streamed:
        check_stream_end(answer, responses_api)
    else:
        assert answer.content_type.startswith("application/json"), answer
        assert isinstance(answer.json(), dict)


def check_log_clean(log: str) -> None:
    for marker in ("Traceback", "Exception in ASGI", "ASGI callable returned without"):
        assert marker not in log, log[log.find(marker) - 2000 : log.find(marker) + 2000]
