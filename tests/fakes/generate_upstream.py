"""A fake server for the generate extension (Triton ``extension_generate.md``, OIP ``generate_rest.yaml``).

``FakeGenerateServer`` runs an aiohttp server on 127.0.0.1 in a background thread. It checks every request it
receives against ``GenerateRequest`` and answers 422 ``{"error": ...}`` (recording the problem in ``problems``)
when the request breaks it:

- ``text_input``: a string (required);
- ``parameters`` (optional): an object of ``$string | $number | $boolean`` (or, for ``stop``, an array of at most
  5 strings); ``max_tokens`` an integer in [0, 512], ``temperature`` >= 0, ``top_p`` in [0, 1];
- other top-level keys only when the model is served with ``top_level=True`` (Triton maps them to tensors), and
  then with the same value rules.

Routes: ``GET /v2/health/ready`` (200, empty body, like MLServer), ``GET /v2/models/{m}[/versions/{v}]/ready``
(200, or 404 for an unknown model), ``GET /v2/models/{m}`` (metadata), ``POST …/generate`` and
``…/generate_stream``. The model name selects the behavior:

``echo``           ``text_output`` = ``"echo: "`` + the prompt's last user turn (the text after the last
                   ``<|im_start|>user\\n`` up to ``<|im_end|>``, else the whole ``text_input``). Stream: one event
                   per word with ``done: false``, then ``{"text_output": "", "done": true}``.
``triton``         like echo, but events carry no ``done`` (Triton) and ``model_version: "1"``.
``usage``          like echo, plus ``finish_reason: "length"``, ``num_input_tokens`` and ``num_output_tokens`` (the
                   vLLM backend's extra outputs); in a stream on the last event.
``json_stream``    ``generate_stream`` answers one ``application/json`` body instead of SSE.
``stream_error``   stream: one event, then ``{"error": "Request failed during generation"}`` under the 200.
``cut``            stream: one event, then the connection is aborted.
``status_<code>``  that status with ``{"error": "fake <code>"}`` (429 adds ``Retry-After: 1``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from dataclasses import dataclass
from typing import Any

from aiohttp import web

MODELS = ("echo", "triton", "usage", "json_stream", "stream_error", "cut", "status_422", "status_424", "status_429")
_PATH = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/generate|/generate_stream|/ready)?$")
_USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.S)


@dataclass
class GenerateCall:
    model: str
    version: str | None
    stream: bool
    body: Any
    headers: dict[str, str]


def _scalar_problem(key: str, value: Any) -> str | None:
    if key == "stop":
        if not (isinstance(value, list) and len(value) <= 5 and all(isinstance(v, str) for v in value)):
            return "stop must be an array of at most 5 strings"
        return None
    if not isinstance(value, str | int | float | bool):
        return f"{key} must be a string, a number or a boolean"
    if key == "max_tokens" and not (isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 512):
        return "max_tokens must be an integer in [0, 512]"
    if key == "temperature" and not (isinstance(value, int | float) and value >= 0):
        return "temperature must be >= 0"
    if key == "top_p" and not (isinstance(value, int | float) and 0 <= value <= 1):
        return "top_p must be in [0, 1]"
    return None


def request_problems(body: Any, top_level: bool) -> list[str]:
    """Everything in `body` that breaks GenerateRequest (empty: valid)."""
    if not isinstance(body, dict):
        return ["the body must be a JSON object"]
    problems = []
    if not isinstance(body.get("text_input"), str):
        problems.append("text_input: required string")
    params = body.get("parameters", {})
    if not isinstance(params, dict):
        problems.append("parameters must be an object")
    else:
        problems.extend(p for k, v in params.items() if (p := _scalar_problem(k, v)))
    extra = {k: v for k, v in body.items() if k not in ("text_input", "parameters")}
    if extra and not top_level:
        problems.append(f"unexpected top-level keys {sorted(extra)} (this model takes options in 'parameters')")
    problems.extend(p for k, v in extra.items() if (p := _scalar_problem(k, v)))
    return problems


def _answer_text(text_input: str) -> str:
    turns = _USER_TURN.findall(text_input)
    return "echo: " + (turns[-1] if turns else text_input)


class FakeGenerateServer:
    def __init__(self, top_level_models: tuple[str, ...] = ()) -> None:
        self.url = ""
        self.calls: list[GenerateCall] = []
        self.problems: list[str] = []
        self.top_level_models = set(top_level_models)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    def start(self) -> FakeGenerateServer:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="fake-generate", daemon=True)
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._astart(), loop).result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        self._loop = self._thread = None

    async def _astart(self) -> int:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    def last(self, model: str) -> GenerateCall:
        return [c for c in self.calls if c.model == model][-1]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/v2/health/ready" and request.method == "GET":
            return web.Response(status=200)
        m = _PATH.match(request.path)
        if m is None or m.group(1) not in MODELS:
            return web.json_response({"error": f"Request for unknown model: '{request.path}'"}, status=404)
        model, version, action = m.group(1), m.group(2), m.group(3)
        if request.method == "GET" and action is None:
            return web.json_response(
                {
                    "name": model,
                    "versions": ["1"],
                    "platform": "fake_generate",
                    "inputs": [{"name": "text_input", "datatype": "BYTES", "shape": [1]}],
                    "outputs": [{"name": "text_output", "datatype": "BYTES", "shape": [-1]}],
                }
            )
        if request.method == "GET" and action == "/ready":
            return web.Response(status=200)
        if request.method != "POST" or action not in ("/generate", "/generate_stream"):
            return web.json_response({"error": "method not allowed"}, status=405)
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        stream = action == "/generate_stream"
        self.calls.append(
            GenerateCall(model, version, stream, body, {k.lower(): v for k, v in request.headers.items()})
        )
        problems = request_problems(body, model in self.top_level_models)
        if problems:
            self.problems.extend(problems)
            return web.json_response({"error": "; ".join(problems)}, status=422)
        if model.startswith("status_"):
            code = int(model.removeprefix("status_"))
            headers = {"Retry-After": "1"} if code == 429 else None
            return web.json_response({"error": f"fake {code}"}, status=code, headers=headers)
        text = _answer_text(body["text_input"])
        if not stream or model == "json_stream":
            return web.json_response(self._reply(model, text, final=True))
        return await self._stream(request, model, text)

    def _reply(self, model: str, text: str, *, final: bool, done: bool | None = None) -> dict[str, Any]:
        reply: dict[str, Any] = {"model_name": model, "text_output": text}
        if model == "triton":
            reply["model_version"] = "1"
        elif done is not None:
            reply["done"] = done
        if model == "usage" and final:
            reply.update(finish_reason="length", num_input_tokens=7, num_output_tokens=len(text.split()))
        return reply

    async def _stream(self, request: web.Request, model: str, text: str) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        words = text.split(" ")
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]

        async def send(obj: Any) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        if model in ("stream_error", "cut"):
            await send(self._reply(model, pieces[0], final=False, done=False))
            if model == "cut":
                assert request.transport is not None
                request.transport.abort()
                return resp
            await send({"error": "Request failed during generation"})
            return resp
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            final = last and model == "usage"
            await send(self._reply(model, piece, final=final, done=False if model != "usage" else None))
        if model == "echo":
            await send(self._reply(model, "", final=True, done=True))
        await resp.write_eof()
        return resp
