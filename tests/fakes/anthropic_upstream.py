"""A fake Anthropic Messages API upstream that judges every request by Anthropic's own types.

``FakeAnthropic`` runs a real aiohttp server on ``127.0.0.1`` (a random free port) in a background thread::

    with FakeAnthropic(api_key="sk-ant-test") as fake:
        api_base = fake.base("status:529")     # "http://127.0.0.1:PORT/b/status:529"
        ...                                     # point a deployment (provider: anthropic) at api_base
        assert fake.invalid == []               # every request it got was a valid MessageCreateParams
        assert fake.requests[-1].headers["anthropic-version"] == "2023-06-01"

Routes (under any prefix; ``/b/<behavior>`` selects the behavior, default ``echo``)
---------------------------------------------------------------------------------
``POST …/v1/messages``
    Checked first, like the real API: ``x-api-key`` (401 ``authentication_error`` when it differs from the
    fake's ``api_key``), ``anthropic-version`` (one of 2023-06-01, 2026-10-21), a JSON body valid against the
    ``anthropic`` SDK's ``MessageCreateParams`` for that version (see ``anthropic_schema``). A request that
    fails is answered 400 ``invalid_request_error`` naming the problems, and listed in ``invalid``.
``GET …/v1/models``
    A one-model ``ModelInfo`` page.
Anything else
    404 ``not_found_error``.

Behaviors (``stream: true`` gives SSE events ``event: <type>\\ndata: <json>\\n\\n`` in Anthropic's order:
``message_start``, ``ping``, per block ``content_block_start``/``_delta``…/``_stop``, ``message_delta``,
``message_stop``)
----------------------------------------------------------------------------------------------------------
``echo`` (default)
    Answers from the request, as a model would: after ``tool_result`` blocks, a text naming each result
    (``"Tool results: <id>=<content>; …"``); with ``tools`` and a ``tool_choice`` other than ``none``, one
    ``tool_use`` per tool asked for (the named one; else the first, or every tool when there are 2+ and
    ``disable_parallel_tool_use`` is not set), inputs generated from each tool's ``input_schema``, preceded by a
    short text only under ``auto``; otherwise the text ``"echo: " + <last user text>`` followed by a note per
    image (``[image base64 image/png 68 bytes]``, ``[image url …]``) and document. ``stop_sequences`` and
    ``max_tokens`` (counted in words) cut the text with the matching ``stop_reason``. Usage counts words
    (the system prompt's included).
``cache``
    Echo, with ``cache_read_input_tokens`` 100 and ``cache_creation_input_tokens`` 20 in the usage.
``status:<code>``
    That status with Anthropic's error body for it (``{"type": "error", "error": {"type", "message"},
    "request_id"}``); 429 and 529 add ``retry-after: 1``.
``stream_error``
    Stream: ``message_start``, a text block with one delta, then ``event: error`` ``overloaded_error`` (how
    Anthropic reports overload after the 200). Non-stream: echo.
``cut``
    Stream: ``message_start`` and one delta, then the connection is aborted. Non-stream: echo.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

from aiohttp import web

from tests.fakes.anthropic_schema import API_VERSIONS, request_problems, response_problems, stream_event_problems

__all__ = ["ERROR_TYPES", "FakeAnthropic", "Received"]

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
ERROR_MESSAGES = {529: "Overloaded", 429: "Number of request tokens has exceeded your per-minute rate limit"}
MODEL_PAGE = {
    "data": [
        {
            "type": "model",
            "id": "claude-sonnet-4-5-20250929",
            "display_name": "Claude Sonnet 4.5",
            "created_at": "2025-09-29T00:00:00Z",
        }
    ],
    "has_more": False,
    "first_id": "claude-sonnet-4-5-20250929",
    "last_id": "claude-sonnet-4-5-20250929",
}
_SAMPLE_STRINGS = {"location": "Paris", "city": "Paris", "timezone": "Europe/Paris", "unit": "celsius"}


@dataclass
class Received:
    """One request the fake got."""

    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None
    behavior: str
    problems: list[str] = field(default_factory=list)  # why it is not a valid Messages request

    @property
    def api_version(self) -> str | None:
        return self.headers.get("anthropic-version")

    @property
    def api_key(self) -> str | None:
        """`x-api-key`, else the `Authorization: Bearer` token (the SDK 2.x way; the API takes x-api-key first)."""
        if "x-api-key" in self.headers:
            return self.headers["x-api-key"]
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        return token if scheme.lower() == "bearer" else None


def _error(status: int, message: str, etype: str | None = None) -> web.Response:
    body = {
        "type": "error",
        "error": {"type": etype or ERROR_TYPES.get(status, "api_error"), "message": message},
        "request_id": f"req_fake{uuid.uuid4().hex[:20]}",
    }
    headers = {"retry-after": "1"} if status in (429, 529) else {}
    return web.json_response(body, status=status, headers=headers)


def _words(text: str) -> int:
    return len(text.split())


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [b["text"] for b in content if b.get("type") == "text"]


def _sample(schema: Any, name: str) -> Any:
    """A value that satisfies a (simple) JSON schema, as a model would fill in tool input."""
    if not isinstance(schema, dict):
        return f"{name}-value"
    if schema.get("enum"):
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties") or {}
        keys = schema.get("required") or list(props)
        return {k: _sample(props.get(k), k) for k in keys}
    if kind == "array":
        return [_sample(schema.get("items"), name)]
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.5
    if kind == "boolean":
        return True
    return _SAMPLE_STRINGS.get(name, f"{name}-value")


class _Reply:
    """The message the fake answers, computed from a valid request."""

    def __init__(self, body: dict[str, Any], behavior: str) -> None:
        self.body = body
        self.behavior = behavior
        self.id = f"msg_fake{uuid.uuid4().hex[:20]}"
        self.blocks: list[dict[str, Any]] = []
        self.stop_reason = "end_turn"
        self.stop_sequence: str | None = None
        self._compose()

    def _compose(self) -> None:
        messages = self.body["messages"]
        last = messages[-1] if messages else {"content": ""}
        content = last.get("content")
        results = [b for b in content if b.get("type") == "tool_result"] if isinstance(content, list) else []
        tools = self.body.get("tools") or []
        choice = self.body.get("tool_choice") or {"type": "auto"}
        if results:
            self._text("Tool results: " + "; ".join(f"{r['tool_use_id']}={self._result_text(r)}" for r in results))
        elif tools and choice["type"] != "none":
            self._call_tools(tools, choice)
        else:
            self._text(self._echo(content))

    @staticmethod
    def _result_text(result: dict[str, Any]) -> str:
        content = result.get("content", "")
        return content if isinstance(content, str) else " ".join(_texts(content))

    def _echo(self, content: Any) -> str:
        if isinstance(content, str):
            return "echo: " + content
        parts = _texts(content)
        notes = []
        for block in content:
            source = block.get("source") or {}
            if block.get("type") in ("image", "document") and source.get("type") == "base64":
                size = len(base64.b64decode(source["data"]))
                notes.append(f"[{block['type']} base64 {source['media_type']} {size} bytes]")
            elif block.get("type") == "image" and source.get("type") == "url":
                notes.append(f"[image url {source['url']}]")
        return " ".join(["echo:", *parts, *notes])

    def _text(self, text: str) -> None:
        for stop in self.body.get("stop_sequences") or ():
            at = text.find(stop)
            if at >= 0:
                text, self.stop_reason, self.stop_sequence = text[:at], "stop_sequence", stop
                break
        words = text.split(" ")
        if len(words) > self.body["max_tokens"]:
            text, self.stop_reason = " ".join(words[: self.body["max_tokens"]]), "max_tokens"
        self.blocks.append({"type": "text", "text": text})

    def _call_tools(self, tools: list[dict[str, Any]], choice: dict[str, Any]) -> None:
        if choice["type"] == "tool":
            chosen = [t for t in tools if t["name"] == choice["name"]]
        elif len(tools) > 1 and not choice.get("disable_parallel_tool_use"):
            chosen = tools
        else:
            chosen = tools[:1]
        if choice["type"] == "auto":
            self.blocks.append({"type": "text", "text": "Let me call the tools."})
        for i, tool in enumerate(chosen):
            self.blocks.append(
                {
                    "type": "tool_use",
                    "id": f"toolu_fake{i}{uuid.uuid4().hex[:12]}",
                    "name": tool["name"],
                    "input": _sample(tool.get("input_schema"), tool["name"]),
                }
            )
        self.stop_reason = "tool_use"

    def usage(self, output: bool = True) -> dict[str, Any]:
        words = sum(_words(t) for t in _texts(self.body.get("system") or []))
        for message in self.body["messages"]:
            content = message["content"]
            words += sum(_words(t) for t in _texts(content))
        usage: dict[str, Any] = {"input_tokens": max(words, 1), "output_tokens": 1}
        if output:
            usage["output_tokens"] = max(
                1, sum(_words(b.get("text", "")) + 3 * (b["type"] == "tool_use") for b in self.blocks)
            )
        if self.behavior == "cache":
            usage["cache_creation_input_tokens"] = 20
            usage["cache_read_input_tokens"] = 100
        return usage

    def message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.body["model"],
            "content": self.blocks,
            "stop_reason": self.stop_reason,
            "stop_sequence": self.stop_sequence,
            "usage": self.usage(),
        }

    def events(self) -> Iterator[dict[str, Any]]:
        start = {**self.message(), "content": [], "stop_reason": None, "stop_sequence": None}
        start["usage"] = self.usage(output=False)
        yield {"type": "message_start", "message": start}
        yield {"type": "ping"}
        for index, block in enumerate(self.blocks):
            if block["type"] == "text":
                yield {"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}}
                for piece in _pieces(block["text"]):
                    yield {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "text_delta", "text": piece},
                    }
            else:
                yield {"type": "content_block_start", "index": index, "content_block": {**block, "input": {}}}
                for piece in ["", *_thirds(json.dumps(block["input"]))]:
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    yield {"type": "content_block_delta", "index": index, "delta": delta}
            yield {"type": "content_block_stop", "index": index}
        usage = self.usage()
        delta_usage = {"output_tokens": usage["output_tokens"]}
        yield {
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason, "stop_sequence": self.stop_sequence},
            "usage": delta_usage,
        }
        yield {"type": "message_stop"}


def _pieces(text: str) -> list[str]:
    """Word by word, spaces kept, so the pieces join back to the text."""
    out: list[str] = []
    for word in text.split(" "):
        out.append(word if not out else " " + word)
    return [p for p in out if p]


def _thirds(text: str) -> list[str]:
    step = max(1, len(text) // 3)
    return [text[i : i + step] for i in range(0, len(text), step)]


class FakeAnthropic:
    """The fake server (see the module docstring)."""

    def __init__(self, api_key: str | None = None) -> None:
        self.api_key = api_key
        self.url = ""
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def start(self) -> FakeAnthropic:
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._serve, args=(loop,), name="fake-anthropic", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
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
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> FakeAnthropic:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _astart(self) -> int:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return int(runner.addresses[0][1])

    # -- inspection ------------------------------------------------------------------------------------------

    def base(self, behavior: str = "echo") -> str:
        """An `api_base` (Anthropic style, without `/v1`) answered by `behavior`."""
        return f"{self.url}/b/{quote(behavior, safe=':.,-_')}"

    @property
    def invalid(self) -> list[Received]:
        """Messages requests that were not valid `MessageCreateParams` (or lacked the required headers)."""
        with self._lock:
            return [r for r in self.requests if r.problems]

    def messages_requests(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.path.endswith("/v1/messages")]

    def clear(self) -> None:
        with self._lock:
            self.requests.clear()

    # -- handling --------------------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        path = request.path
        behavior = "echo"
        parts = request.raw_path.split("/")
        if len(parts) > 2 and parts[1] == "b":
            behavior = unquote(parts[2])
        record = Received(request.method, path, {k.lower(): v for k, v in request.headers.items()}, body, behavior)
        with self._lock:
            self.requests.append(record)
        if path.endswith("/v1/models") and request.method == "GET":
            return web.json_response(MODEL_PAGE)
        if not (path.endswith("/v1/messages") and request.method == "POST"):
            return _error(404, f"Not found: {request.method} {path}")
        record.problems = self._problems(record, raw)
        if record.problems:
            return _error(400, "; ".join(record.problems))
        if self.api_key is not None and record.api_key != self.api_key:
            return _error(401, "invalid x-api-key")
        if behavior.startswith("status:"):
            status = int(behavior.split(":", 1)[1])
            return _error(status, ERROR_MESSAGES.get(status, f"fake {ERROR_TYPES.get(status, 'api_error')}"))
        reply = _Reply(body, behavior)
        if not body.get("stream"):
            message = reply.message()
            assert response_problems(message) == [], response_problems(message)
            return web.json_response(message)
        return await self._stream(request, reply, behavior)

    def _problems(self, record: Received, raw: bytes) -> list[str]:
        problems = []
        version = record.api_version
        if version not in API_VERSIONS:
            problems.append(f"anthropic-version: {version!r} is not one of {', '.join(API_VERSIONS)}")
        if not record.headers.get("content-type", "").startswith("application/json"):
            problems.append(f"content-type: {record.headers.get('content-type')!r}, expected application/json")
        if record.api_key is None:
            problems.append("x-api-key: missing")
        if not isinstance(record.body, dict):
            problems.append(f"body: not a JSON object ({raw[:80]!r})")
        elif version in API_VERSIONS:
            problems.extend(request_problems(record.body, version))
        return problems

    async def _stream(self, request: web.Request, reply: _Reply, behavior: str) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream; charset=utf-8", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)
        sent = 0
        for event in reply.events():
            assert stream_event_problems(event) == [], stream_event_problems(event)
            if behavior in ("stream_error", "cut") and event["type"] == "content_block_delta" and sent:
                if behavior == "cut":
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
                await resp.write(f"event: error\ndata: {json.dumps(error)}\n\n".encode())
                await resp.write_eof()
                return resp
            await resp.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
            sent += event["type"] == "content_block_delta"
        await resp.write_eof()
        return resp
