"""A scriptable fake OpenAI-compatible upstream for the gateway's tests.

``FakeUpstream`` runs a real aiohttp server on ``127.0.0.1`` (a random free port) in a background
thread with its own event loop, so it can serve both synchronous and asynchronous test code::

    with FakeUpstream() as fake:
        api_base = fake.base("status:503")      # "http://127.0.0.1:PORT/b/status:503/v1"
        ...                                     # point a gateway deployment at api_base
        assert fake.count("status:503") == 3
        assert fake.requests[-1].headers["authorization"] == "Bearer sk-upstream"

Routes
------
``POST {anything}/chat/completions``
    Answered by a *behavior* (table below).  The behavior is the URL-decoded path segment after
    ``/b/`` (``/b/<behavior>/v1/chat/completions``); a plain ``/v1/chat/completions`` means
    ``echo``.  A string ``"fake_behavior"`` field in the JSON body overrides the path, which also
    proves that unknown extra body fields reach the upstream.  A behavior may take an argument
    after a colon (``status:429``, ``slow_tokens:0.05``).
``GET {anything}/models``
    ``{"object": "list", "data": [{"id": "fake-model", "object": "model", "created": 0,
    "owned_by": "fake"}]}``, whatever the path behavior; recorded with behavior ``"models"``.
``POST {anything}/completions``, ``/embeddings``, ``/images/generations``
    Legacy completions, embeddings and images: see ``tests/fakes/openai_surface.py``.
``POST {anything}/responses``
    The upstream's own Responses API (for native pass-through): see ``tests/fakes/openai_responses.py``.
Anything else
    404 (recorded with behavior ``"not_found"``); a wrong method on a known path gives 405.

Behaviors (``stream: true`` in the body gives SSE ``text/event-stream`` frames
``data: <json>\\n\\n`` ending with ``data: [DONE]\\n\\n``; otherwise one JSON body)
-------------------------------------------------------------------------------------------------
``echo`` (default)
    content = ``"echo: "`` + text of the last user message (string content, or its text parts
    joined with a space).  Non-stream: a ``chat.completion`` with the request's ``model``
    (``"fake-model"`` if absent), ``id`` ``chatcmpl-fake…``, integer ``created``, ``n`` choices
    (``finish_reason`` ``"stop"``) and ``usage`` from whitespace word counts.  The message
    deliberately has no ``refusal`` key (like vLLM; the gateway must add it).  Stream: a
    ``{"role": "assistant", "content": ""}`` delta, one delta per word (whitespace kept, so the
    joined deltas equal the content), an empty delta with ``finish_reason`` ``"stop"``, and with
    ``stream_options.include_usage`` a last chunk with ``choices: []`` and ``usage``.
``sloppy``
    Like echo, but every stream chunk repeats ``role: "assistant"`` and carries a non-null
    ``usage`` (running totals) and ``system_fingerprint: null``.  Non-stream:
    ``system_fingerprint: null`` and ``usage.prompt_tokens_details: null``.
``details:C,R``
    Like echo, with ``usage.prompt_tokens_details.cached_tokens`` C and
    ``usage.completion_tokens_details.reasoning_tokens`` R (default 2,3).
``tools``
    A function call for the first of the request's ``tools`` (``fake_tool`` if none): id
    ``call_fake_1``, arguments ``{"city": "Paris"}``, ``content: null``, ``finish_reason``
    ``"tool_calls"``.  With 2+ tools and ``parallel_tool_calls`` not false: one call per tool
    (indices 0, 1, …; ids ``call_fake_1``, ``call_fake_2``, …).  Stream: the arguments are split
    across 4 deltas and, like a sloppy upstream, every delta repeats ``index``, ``id``, ``type``
    and ``function.name``.
``status:<code>``
    That HTTP status with ``{"error": {"message": "fake <code>", "type": "fake_error",
    "param": null, "code": "fake_<code>"}}``; 429 and 503 add ``Retry-After: 1``.
``text_error:<code>``
    That HTTP status with the ``text/plain`` body ``plain failure``.
``slow_headers:<seconds>``
    Sleeps before sending anything, then behaves like echo.
``slow_first_token:<seconds>``
    Stream: sends (and flushes) the headers, sleeps, then streams like echo.  Non-stream: like
    ``slow_headers``.
``slow_tokens:<seconds>``
    Echo, sleeping that long before every chunk (stream) or once (non-stream).
``hang``
    Never answers (sleeps up to 300 s) until the client goes away.
``cut``
    Stream: headers and 2 chunks, then the TCP connection is aborted (no terminating chunk).
    Non-stream: headers announcing a ``Content-Length`` larger than the partial body written,
    then abort.  Not recorded in ``cancelled`` (the fake closed the connection, not the client).
``malformed``
    Non-stream: 200 ``application/json`` with the invalid body ``{"id": "x", "choices": [``.
    Stream: one valid chunk, then ``data: {not json}``, then ``data: [DONE]``.
``stream_error``
    Stream: one valid chunk, then ``data: {"error": {"message": "fake mid-stream failure",
    "type": "server_error"}}`` and the stream ends (no ``[DONE]``).  Non-stream: like echo.
``json_for_stream``
    Ignores ``stream`` and always answers the non-stream JSON completion.
``big``
    Echo whose content is the 10 000 words ``"w0 w1 … w9999"`` (no ``echo:`` prefix).
``length``
    Echo that honours ``max_completion_tokens`` (or ``max_tokens``), counting words: a longer answer is cut
    to that many words with ``finish_reason`` ``"length"``.
``tool_loop``
    A function call like ``tools`` while the last message is not a tool result; after one, the text
    ``"result: "`` + that tool message's content (``finish_reason`` ``"stop"``): a whole tool round trip.
``flaky:<n>``
    The first ``n`` requests with this exact behavior string answer like ``status:503`` (without
    ``Retry-After``), every later one like echo.  ``clear()`` resets the count.
``retry_after_ms:<ms>``
    429 with the header ``retry-after-ms: <ms>`` (and no ``Retry-After``).
``reset``
    Headers, then the TCP connection is aborted before any stream event (stream) or in the middle
    of the announced body (non-stream, like ``cut``).
``stall:<seconds>``
    Stream: the role chunk and one content chunk, then silence for that long, then the rest like
    echo.  Non-stream: like ``slow_headers``.
``context_length``
    400 with OpenAI's ``context_length_exceeded`` error (code, ``param: "messages"``).
    ``context_length:message`` gives only the message vLLM sends (``code: null``).

A behavior may end with ``@<tag>`` (``echo@b``, ``status:500@a``): the tag is ignored when answering
but kept in ``Recorded.behavior``, so that several deployments with the same behavior can be told
apart by ``count()``.

An unknown behavior, a bad argument or an unparsable JSON body answers 400 with an OpenAI error.

Every request is recorded in ``requests`` *before* its behavior runs (so slow and hanging ones are
visible at once).  A request whose client connection closes before the fake finished answering
(any behavior: its handler task is cancelled, or a write fails) is also recorded in ``cancelled``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote

import pytest
from aiohttp import web

from tests.fakes import openai_responses, openai_surface

__all__ = ["BEHAVIORS", "BIG_CONTENT", "CONTEXT_LENGTH_MESSAGE", "FakeUpstream", "Recorded", "fake_upstream"]

BEHAVIORS = (
    "echo",
    "sloppy",
    "tools",
    "status",
    "text_error",
    "slow_headers",
    "slow_first_token",
    "slow_tokens",
    "hang",
    "cut",
    "malformed",
    "stream_error",
    "json_for_stream",
    "big",
    "length",
    "tool_loop",
    "flaky",
    "retry_after_ms",
    "reset",
    "stall",
    "context_length",
)
CONTEXT_LENGTH_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted in 9000 tokens. "
    "Please reduce the length of the messages."
)
MODELS_BODY: dict[str, Any] = {
    "object": "list",
    "data": [{"id": "fake-model", "object": "model", "created": 0, "owned_by": "fake"}],
}
TOOL_ARGUMENTS = '{"city": "Paris"}'
HANG_SECONDS = 300.0
BIG_CONTENT = " ".join(f"w{i}" for i in range(10_000))
_SPLIT_AFTER_SPACE = re.compile(r"(?<=\s)(?=\S)")


@dataclass
class Recorded:
    """One request received by the fake."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    body: Any  # parsed JSON, or None when empty / not JSON
    raw: bytes
    behavior: str  # the behavior that answered it ("models" / "not_found" for the other routes)
    received_at: float = field(default_factory=time.monotonic)

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and self.body.get("stream") is True


class _BadRequest(Exception):
    pass


class _Exchange:
    """Per-request state: the response once prepared, so a dead client can be handled cleanly."""

    def __init__(self, request: web.Request, record: Recorded) -> None:
        self.request = request
        self.record = record
        body = record.body if isinstance(record.body, dict) else {}
        self.body: dict[str, Any] = body
        self.model = body.get("model") if isinstance(body.get("model"), str) else "fake-model"
        self.id = f"chatcmpl-fake{uuid.uuid4().hex[:16]}"
        self.created = int(time.time())
        self.resp: web.StreamResponse | None = None
        self.fake_closed = False  # the fake itself aborted the connection ("cut")

    @property
    def wants_stream(self) -> bool:
        return self.body.get("stream") is True

    @property
    def include_usage(self) -> bool:
        opts = self.body.get("stream_options")
        return isinstance(opts, dict) and opts.get("include_usage") is True

    @property
    def n(self) -> int:
        n = self.body.get("n")
        return n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1

    # --- SSE helpers -------------------------------------------------------------------------

    async def open_sse(self) -> web.StreamResponse:
        if self.resp is None:
            resp = web.StreamResponse(
                status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            self.resp = resp
            await resp.prepare(self.request)  # a StreamResponse flushes its headers right away
        return self.resp

    async def send(self, obj: Any, delay: float = 0.0) -> None:
        if delay > 0:
            await asyncio.sleep(delay)
        await self.send_raw(f"data: {json.dumps(obj)}\n\n".encode())

    async def send_raw(self, data: bytes) -> None:
        resp = await self.open_sse()
        await resp.write(data)

    async def done(self) -> web.StreamResponse:
        await self.send_raw(b"data: [DONE]\n\n")
        resp = await self.open_sse()
        await resp.write_eof()
        return resp

    async def end(self) -> web.StreamResponse:
        resp = await self.open_sse()
        await resp.write_eof()
        return resp

    def chunk(
        self,
        delta: dict[str, Any] | None,
        finish_reason: str | None = None,
        index: int = 0,
        **extra: Any,
    ) -> dict[str, Any]:
        choices = (
            []
            if delta is None
            else [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        )
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            **extra,
            "choices": choices,
        }


# --- request helpers ---------------------------------------------------------------------------


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p["text"]
            for p in content
            if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
        )
    return ""


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    msgs = body.get("messages")
    return [m for m in msgs if isinstance(m, dict)] if isinstance(msgs, list) else []


def _words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(body: dict[str, Any]) -> int:
    return sum(_words(_text_of(m.get("content"))) for m in _messages(body))


def _echo_content(body: dict[str, Any]) -> str:
    users = [m for m in _messages(body) if m.get("role") == "user"]
    return "echo: " + (_text_of(users[-1].get("content")) if users else "")


def _pieces(content: str) -> list[str]:
    """Split into words, keeping whitespace so that ``"".join(pieces) == content``."""
    return [p for p in _SPLIT_AFTER_SPACE.split(content) if p] or [""]


def _split_n(text: str, n: int) -> list[str]:
    size = -(-len(text) // n)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _usage(prompt: int, completion: int, **extra: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        **extra,
    }


def _error_body(message: str, type_: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def _tool_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    tools = body.get("tools")
    names = [
        t["function"]["name"]
        for t in (tools if isinstance(tools, list) else [])
        if isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
    ] or ["fake_tool"]
    if body.get("parallel_tool_calls") is False:
        names = names[:1]
    return [
        {
            "id": f"call_fake_{i + 1}",
            "type": "function",
            "function": {"name": name, "arguments": TOOL_ARGUMENTS},
        }
        for i, name in enumerate(names)
    ]


def _parse_seconds(arg: str) -> float:
    try:
        seconds = float(arg)
    except ValueError:
        raise _BadRequest(f"bad seconds argument {arg!r}") from None
    if not 0 <= seconds <= HANG_SECONDS:
        raise _BadRequest(f"seconds argument out of range: {arg!r}")
    return seconds


def _parse_status(arg: str) -> int:
    try:
        code = int(arg)
    except ValueError:
        raise _BadRequest(f"bad status argument {arg!r}") from None
    if not 200 <= code <= 599:
        raise _BadRequest(f"status argument out of range: {arg!r}")
    return code


def _parse_count(arg: str) -> int:
    try:
        n = int(arg)
    except ValueError:
        raise _BadRequest(f"bad count argument {arg!r}") from None
    if not 0 <= n <= 1_000_000:
        raise _BadRequest(f"count argument out of range: {arg!r}")
    return n


def _path_behavior(raw_path: str) -> str:
    segments = raw_path.split("?", 1)[0].split("/")
    for i, seg in enumerate(segments[:-1]):
        if seg == "b" and segments[i + 1]:
            return unquote(segments[i + 1])
    return "echo"


# --- behaviors ---------------------------------------------------------------------------------


def _completion(
    ex: _Exchange, content: str, *, sloppy: bool = False, usage_extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": content},
            "logprobs": None,
            "finish_reason": "stop",
        }
        for i in range(ex.n)
    ]
    extra: dict[str, Any] = {"prompt_tokens_details": None} if sloppy else dict(usage_extra or {})
    out: dict[str, Any] = {
        "id": ex.id,
        "object": "chat.completion",
        "created": ex.created,
        "model": ex.model,
        "choices": choices,
        "usage": _usage(_prompt_tokens(ex.body), _words(content) * ex.n, **extra),
    }
    if sloppy:
        out["system_fingerprint"] = None
    return out


async def _answer_text(
    ex: _Exchange,
    content: str,
    *,
    sloppy: bool = False,
    first_delay: float = 0.0,
    chunk_delay: float = 0.0,
    force_json: bool = False,
    usage_extra: dict[str, Any] | None = None,
) -> web.StreamResponse:
    if not ex.wants_stream or force_json:
        if chunk_delay > 0:
            await asyncio.sleep(chunk_delay)
        return web.json_response(_completion(ex, content, sloppy=sloppy, usage_extra=usage_extra))

    await ex.open_sse()
    if first_delay > 0:
        await asyncio.sleep(first_delay)
    prompt = _prompt_tokens(ex.body)
    pieces = _pieces(content)
    completion = 0

    def frame(delta: dict[str, Any] | None, finish: str | None = None, index: int = 0) -> dict[str, Any]:
        if not sloppy:
            return ex.chunk(delta, finish, index)
        if delta is not None:
            delta = {"role": "assistant", **delta}
        usage = _usage(prompt, completion)
        return ex.chunk(delta, finish, index, system_fingerprint=None, usage=usage)

    for index in range(ex.n):
        await ex.send(frame({"role": "assistant", "content": ""}, index=index), chunk_delay)
        for piece in pieces:
            completion += _words(piece)
            await ex.send(frame({"content": piece}, index=index), chunk_delay)
        await ex.send(frame({}, "stop", index=index), chunk_delay)
    if ex.include_usage:
        await ex.send(frame(None) | {"usage": _usage(prompt, completion, **(usage_extra or {}))}, chunk_delay)
    return await ex.done()


async def _answer_limited(ex: _Exchange, content: str) -> web.StreamResponse:
    limit = ex.body.get("max_completion_tokens") or ex.body.get("max_tokens")
    pieces = _pieces(content)
    if not isinstance(limit, int) or len(pieces) <= limit:
        return await _answer_text(ex, content)
    cut = "".join(pieces[:limit])
    if not ex.wants_stream:
        body = _completion(ex, cut)
        body["choices"][0]["finish_reason"] = "length"
        return web.json_response(body)
    await ex.send(ex.chunk({"role": "assistant", "content": ""}))
    for piece in pieces[:limit]:
        await ex.send(ex.chunk({"content": piece}))
    await ex.send(ex.chunk({}, "length"))
    if ex.include_usage:
        await ex.send(ex.chunk(None, usage=_usage(_prompt_tokens(ex.body), limit)))
    return await ex.done()


async def _answer_tools(ex: _Exchange) -> web.StreamResponse:
    calls = _tool_calls(ex.body)
    prompt = _prompt_tokens(ex.body)
    completion = sum(_words(c["function"]["arguments"]) for c in calls)
    if not ex.wants_stream:
        return web.json_response(
            {
                "id": ex.id,
                "object": "chat.completion",
                "created": ex.created,
                "model": ex.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": None, "tool_calls": calls},
                        "logprobs": None,
                        "finish_reason": "tool_calls",
                    }
                ],
                "usage": _usage(prompt, completion),
            }
        )
    await ex.send(ex.chunk({"role": "assistant", "content": None}))
    for index, call in enumerate(calls):
        for piece in _split_n(call["function"]["arguments"], 4):
            tool_delta = {
                "index": index,
                "id": call["id"],
                "type": "function",
                "function": {"name": call["function"]["name"], "arguments": piece},
            }
            await ex.send(ex.chunk({"tool_calls": [tool_delta]}))
    await ex.send(ex.chunk({}, "tool_calls"))
    if ex.include_usage:
        await ex.send(ex.chunk(None, usage=_usage(prompt, completion)))
    return await ex.done()


async def _answer_cut(ex: _Exchange) -> web.StreamResponse:
    transport = ex.request.transport
    if ex.wants_stream:
        await ex.send(ex.chunk({"role": "assistant", "content": ""}))
        await ex.send(ex.chunk({"content": "partial "}))
        resp = await ex.open_sse()
        # Let the chunks reach the reader before the reset, so the cut is really mid-stream.
        await asyncio.sleep(0.3)
    else:
        partial = json.dumps(_completion(ex, "cut short")).encode()[:20]
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.content_length = len(partial) + 1000
        ex.resp = resp
        await resp.prepare(ex.request)
        await resp.write(partial)
    ex.fake_closed = True
    if transport is not None:
        transport.abort()
    return resp


async def _answer_malformed(ex: _Exchange) -> web.StreamResponse:
    if not ex.wants_stream:
        return web.Response(status=200, body=b'{"id": "x", "choices": [', content_type="application/json")
    await ex.send(ex.chunk({"role": "assistant", "content": ""}))
    await ex.send_raw(b"data: {not json}\n\n")
    return await ex.done()


async def _answer_stream_error(ex: _Exchange) -> web.StreamResponse:
    if not ex.wants_stream:
        return await _answer_text(ex, _echo_content(ex.body))
    await ex.send(ex.chunk({"role": "assistant", "content": ""}))
    await ex.send({"error": {"message": "fake mid-stream failure", "type": "server_error"}})
    return await ex.end()


async def _answer_reset(ex: _Exchange) -> web.StreamResponse:
    if not ex.wants_stream:
        return await _answer_cut(ex)
    resp = await ex.open_sse()
    await asyncio.sleep(0.05)  # the headers reach the reader first
    ex.fake_closed = True
    if ex.request.transport is not None:
        ex.request.transport.abort()
    return resp


async def _answer_stall(ex: _Exchange, seconds: float) -> web.StreamResponse:
    if not ex.wants_stream:
        await asyncio.sleep(seconds)
        return await _answer_text(ex, _echo_content(ex.body))
    await ex.send(ex.chunk({"role": "assistant", "content": ""}))
    await ex.send(ex.chunk({"content": "stalled "}))
    await asyncio.sleep(seconds)
    await ex.send(ex.chunk({}, "stop"))
    return await ex.done()


def _context_length(arg: str) -> web.StreamResponse:
    if arg not in ("", "message"):
        raise _BadRequest(f"bad context_length argument {arg!r}")
    code = None if arg == "message" else "context_length_exceeded"
    body = {"error": {"message": CONTEXT_LENGTH_MESSAGE, "type": "invalid_request_error", "param": "messages"}}
    body["error"]["code"] = code
    return web.json_response(body, status=400)


async def _run_behavior(ex: _Exchange, flaky_seen: int = 0) -> web.StreamResponse:
    name, _, arg = ex.record.behavior.partition("@")[0].partition(":")
    echo = _echo_content(ex.body)
    if name == "echo":
        return await _answer_text(ex, echo)
    if name == "sloppy":
        return await _answer_text(ex, echo, sloppy=True)
    if name == "details":  # echo, with cached input and reasoning tokens in `usage` (details:CACHED,REASONING)
        cached, _, reasoning = (arg or "2,3").partition(",")
        details = {
            "prompt_tokens_details": {"cached_tokens": int(cached)},
            "completion_tokens_details": {"reasoning_tokens": int(reasoning)},
        }
        return await _answer_text(ex, echo, usage_extra=details)
    if name == "big":
        return await _answer_text(ex, BIG_CONTENT)
    if name == "length":
        return await _answer_limited(ex, echo)
    if name == "tool_loop":
        messages = _messages(ex.body)
        if messages and messages[-1].get("role") == "tool":
            return await _answer_text(ex, "result: " + _text_of(messages[-1].get("content")))
        return await _answer_tools(ex)
    if name == "json_for_stream":
        return await _answer_text(ex, echo, force_json=True)
    if name == "tools":
        return await _answer_tools(ex)
    if name == "status":
        code = _parse_status(arg)
        headers = {"Retry-After": "1"} if code in (429, 503) else None
        body = _error_body(f"fake {code}", "fake_error", f"fake_{code}")
        return web.json_response(body, status=code, headers=headers)
    if name == "text_error":
        return web.Response(status=_parse_status(arg), text="plain failure", content_type="text/plain")
    if name == "slow_headers":
        await asyncio.sleep(_parse_seconds(arg))
        return await _answer_text(ex, echo)
    if name == "slow_first_token":
        seconds = _parse_seconds(arg)
        if not ex.wants_stream:
            await asyncio.sleep(seconds)
        return await _answer_text(ex, echo, first_delay=seconds)
    if name == "slow_tokens":
        return await _answer_text(ex, echo, chunk_delay=_parse_seconds(arg))
    if name == "hang":
        await asyncio.sleep(HANG_SECONDS)
        return web.json_response(_error_body("fake hang expired", "fake_error", "fake_hang"), status=504)
    if name == "cut":
        return await _answer_cut(ex)
    if name == "malformed":
        return await _answer_malformed(ex)
    if name == "stream_error":
        return await _answer_stream_error(ex)
    if name == "flaky":
        if flaky_seen < _parse_count(arg):
            return web.json_response(_error_body("fake flaky 503", "fake_error", "fake_503"), status=503)
        return await _answer_text(ex, echo)
    if name == "retry_after_ms":
        ms = _parse_count(arg)
        body = _error_body("fake 429", "fake_error", "fake_429")
        return web.json_response(body, status=429, headers={"retry-after-ms": str(ms)})
    if name == "reset":
        return await _answer_reset(ex)
    if name == "stall":
        return await _answer_stall(ex, _parse_seconds(arg))
    if name == "context_length":
        return _context_length(arg)
    raise _BadRequest(f"unknown fake behavior {ex.record.behavior!r}")


# --- the server --------------------------------------------------------------------------------


class FakeUpstream:
    """The fake upstream server (see the module docstring for routes and behaviors)."""

    def __init__(self) -> None:
        self.url = ""
        self.requests: list[Recorded] = []
        self.cancelled: list[Recorded] = []
        self._seen: dict[str, int] = {}  # chat requests per behavior string, for ``flaky``
        self._cond = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FakeUpstream:
        """Start serving in a background thread; returns once the server is listening."""
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=self._serve, args=(loop,), name="fake-openai-upstream", daemon=True)
        self._loop, self._thread = loop, thread
        thread.start()
        try:
            port = asyncio.run_coroutine_threadsafe(self._astart(), loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Stop the server (in-flight handlers are cancelled) and its thread; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None and thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout=10)
        self._runner = None
        if thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        self._loop = self._thread = None

    def __enter__(self) -> FakeUpstream:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _astart(self) -> int:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # handler_cancellation: aiohttp (>= 3.9) no longer cancels a handler when its client
        # disconnects unless asked to; we need it to notice abandoned requests.
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        self._runner = runner
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host_port = runner.addresses[0]
        return int(host_port[1])

    # --- inspection --------------------------------------------------------------------------

    def base(self, behavior: str = "echo") -> str:
        """An ``api_base`` whose chat completions are answered by ``behavior``."""
        if not self.url:
            raise RuntimeError("FakeUpstream not started")
        return f"{self.url}/b/{quote(behavior, safe=':.,-_')}/v1"

    def clear(self) -> None:
        with self._cond:
            self.requests.clear()
            self.cancelled.clear()
            self._seen.clear()

    def count(self, behavior: str | None = None) -> int:
        with self._cond:
            if behavior is None:
                return len(self.requests)
            return sum(1 for r in self.requests if r.behavior == behavior)

    def wait_cancelled(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` requests were abandoned by their clients."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.cancelled) >= n, timeout=timeout)

    def wait_requests(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least ``n`` requests were received."""
        with self._cond:
            return self._cond.wait_for(lambda: len(self.requests) >= n, timeout=timeout)

    # --- handling ----------------------------------------------------------------------------

    def _record(self, record: Recorded) -> None:
        with self._cond:
            self.requests.append(record)
            self._cond.notify_all()

    def _mark_cancelled(self, record: Recorded) -> None:
        with self._cond:
            if not any(r is record for r in self.cancelled):
                self.cancelled.append(record)
            self._cond.notify_all()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        path = request.path
        is_chat = path.endswith("/chat/completions")
        is_models = path.endswith("/models")
        surface = openai_surface.route_of(path)  # legacy completions, embeddings, images
        if surface is None and path.endswith("/responses"):
            surface = "responses"
        if (is_chat or surface is not None) and request.method == "POST":
            behavior = _path_behavior(request.raw_path)
            if isinstance(body, dict) and isinstance(body.get("fake_behavior"), str):
                behavior = body["fake_behavior"]
        elif is_models and request.method == "GET":
            behavior = "models"
        elif is_chat or is_models:
            behavior = "method_not_allowed"
        else:
            behavior = "not_found"
        record = Recorded(
            method=request.method,
            path=path,
            query=dict(request.query),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
            raw=raw,
            behavior=behavior,
        )
        self._record(record)

        if behavior == "models":
            return web.json_response(MODELS_BODY)
        if behavior in ("not_found", "method_not_allowed"):
            status = 404 if behavior == "not_found" else 405
            msg = f"fake upstream: no route for {request.method} {path}"
            return web.json_response(_error_body(msg, "invalid_request_error", behavior), status=status)
        if not isinstance(body, dict):
            err = _error_body("fake upstream: body is not a JSON object", "invalid_request_error", None)
            return web.json_response(err, status=400)

        ex = _Exchange(request, record)
        with self._cond:
            seen = self._seen.get(behavior, 0)
            self._seen[behavior] = seen + 1
        try:
            if surface == "responses":
                return await openai_responses.answer(ex)
            if surface is not None:
                return await openai_surface.answer(surface, ex)
            return await _run_behavior(ex, seen)
        except _BadRequest as e:
            err = _error_body(str(e), "invalid_request_error", "fake_bad_behavior")
            return web.json_response(err, status=400)
        except asyncio.CancelledError:
            if not ex.fake_closed:
                self._mark_cancelled(record)
            raise
        except ConnectionError:
            # The client went away while we were writing: aiohttp ignores a ConnectionError
            # from finishing the returned response, so hand back what we have.
            if not ex.fake_closed:
                self._mark_cancelled(record)
            return ex.resp if ex.resp is not None else web.Response(status=499)


@pytest.fixture
def fake_upstream() -> Iterator[FakeUpstream]:
    """A started ``FakeUpstream``, stopped after the test (import it into a test module or conftest)."""
    with FakeUpstream() as fake:
        yield fake
