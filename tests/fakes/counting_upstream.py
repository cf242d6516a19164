"""A fake OpenAI-compatible upstream that counts what reaches it, per deployment, and how much at once.

``CountingUpstream().start()`` serves ``POST /d/<name>/v1/chat/completions`` on 127.0.0.1 in a thread of its
own. Each answer has a fixed usage (``PROMPT_TOKENS`` in, ``COMPLETION_TOKENS`` out) so that its cost is known;
``stream: true`` answers in SSE with a usage chunk when ``stream_options.include_usage`` is set. ``<name>`` may
end with ``@<seconds>``: the answer waits that long first (a slow upstream). ``count(name)`` is the number of
requests that reached ``name``; ``max_in_flight`` the most requests it was answering at one moment.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from aiohttp import web

PROMPT_TOKENS = 10
COMPLETION_TOKENS = 5


class CountingUpstream:
    def __init__(self) -> None:
        self.url = ""
        self.counts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="counting-upstream", daemon=True)
        self._runner: web.AppRunner | None = None

    def start(self) -> CountingUpstream:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._astart(), self._loop).result(timeout=10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def base(self, name: str) -> str:
        return f"{self.url}/d/{name}/v1"

    def count(self, name: str) -> int:
        with self._lock:
            return self.counts.get(name, 0)

    def reset(self) -> None:
        with self._lock:
            self.counts.clear()
            self.max_in_flight = self.in_flight

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    async def _astart(self) -> int:
        app = web.Application()
        app.router.add_post("/d/{name}/v1/chat/completions", self._chat)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        body: dict[str, Any] = await request.json()
        with self._lock:
            self.counts[name] = self.counts.get(name, 0) + 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if "@" in name:
                await asyncio.sleep(float(name.rsplit("@", 1)[1]))
            usage = {
                "prompt_tokens": PROMPT_TOKENS,
                "completion_tokens": COMPLETION_TOKENS,
                "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
            }
            base = {"id": "chatcmpl-count", "created": 1, "model": body.get("model", "m")}
            if not body.get("stream"):
                message = {"role": "assistant", "content": "ok"}
                choice = {"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}
                return web.json_response({**base, "object": "chat.completion", "choices": [choice], "usage": usage})
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            chunk = {**base, "object": "chat.completion.chunk"}
            for delta, finish in (({"role": "assistant", "content": "ok"}, None), ({}, "stop")):
                choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
                await resp.write(f"data: {json.dumps({**chunk, 'choices': [choice]})}\n\n".encode())
            if (body.get("stream_options") or {}).get("include_usage"):
                await resp.write(f"data: {json.dumps({**chunk, 'choices': [], 'usage': usage})}\n\n".encode())
            await resp.write(b"data: [DONE]\n\n")
            await resp.write_eof()
            return resp
        finally:
            with self._lock:
                self.in_flight -= 1
