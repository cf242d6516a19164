"""Anthropic Messages API upstreams (api.anthropic.com, or anything that speaks it): `POST {api_base}/v1/messages`
with `x-api-key` and `anthropic-version`, the body translated by `translate`, streams by `stream`."""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any, ClassVar

from manifold import _json
from manifold.config import AnthropicDeployment, DeploymentBase
from manifold.errors import ManifoldError
from manifold.providers.anthropic.stream import AnthropicStreamParser
from manifold.providers.anthropic.translate import (
    api_version,
    from_anthropic,
    response_tool_name,
    to_anthropic,
)
from manifold.providers.anthropic.upstream_errors import anthropic_error, parse_error_body
from manifold.providers.base import Call, Capability, ChunkStream, Provider, of_kind
from manifold.providers.upstream_http import SSEStream, UpstreamSession

DEFAULT_API_BASE = "https://api.anthropic.com"


def endpoint(api_base: str, path: str) -> str:
    """`{api_base}/v1/{path}`; an `api_base` that already ends in `/v1` is taken as it is."""
    base = api_base.rstrip("/")
    return f"{base}/{path}" if base.endswith("/v1") else f"{base}/v1/{path}"


class AnthropicSession(UpstreamSession):
    def error_for_status(self, status: int, body: bytes, headers: Mapping[str, str]) -> ManifoldError:
        etype, message = parse_error_body(body)
        return anthropic_error(status, etype, message, self.label, headers)


class AnthropicProvider(Provider):
    capabilities: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.CHAT, Capability.STREAM, Capability.TOOLS, Capability.VISION}
    )

    deployment: AnthropicDeployment

    def __init__(self, deployment: AnthropicDeployment) -> None:
        super().__init__(deployment)
        api_base = deployment.api_base or DEFAULT_API_BASE
        self.http = AnthropicSession(deployment, base_url=api_base)
        self.messages_url = endpoint(api_base, "messages")
        self.models_url = endpoint(api_base, "models")
        headers = {"content-type": "application/json", "anthropic-version": api_version(deployment)}
        if deployment.api_key:
            headers["x-api-key"] = deployment.api_key
        self.headers = {**headers, **deployment.headers}
        self._stream_headers = {**self.headers, "accept": "text/event-stream"}

    @classmethod
    def check(cls, deployment: DeploymentBase) -> list[str]:
        deployment = of_kind(deployment, AnthropicDeployment)
        if deployment.api_base and not deployment.api_base.startswith(("http://", "https://")):
            return [f"api_base: {deployment.api_base!r} must start with http:// or https://"]
        return []

    async def start(self) -> None:
        await self.http.start()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def ready(self) -> bool:
        """Reachable = `GET /v1/models` answers below 500 (a bad key still means the upstream is up)."""
        status = await self.http.probe(self.models_url, self.headers, min(5.0, self.deployment.timeouts.first_byte))
        return status is not None and status < 500

    def _headers(self, call: Call, stream: bool) -> dict[str, str]:
        return {**(self._stream_headers if stream else self.headers), "x-request-id": call.request_id}

    async def chat(self, call: Call) -> dict[str, Any]:
        request = to_anthropic(call.body, self.deployment, call.upstream_model)
        request.pop("stream", None)
        message = await self.http.post_json(self.messages_url, _json.encode(request), self._headers(call, False))
        return from_anthropic(message, call.public_model, response_tool=response_tool_name(call.body))

    async def open_chat_stream(self, call: Call) -> ChunkStream:
        request = to_anthropic(call.body, self.deployment, call.upstream_model)
        request["stream"] = True
        resp = await self.http.request(
            "POST", self.messages_url, data=_json.encode(request), headers=self._headers(call, True)
        )
        parser = AnthropicStreamParser(
            call.public_model, response_tool=response_tool_name(call.body), label=self.http.label
        )
        return _ChunkStream(self.http.sse(resp), parser)


class _ChunkStream:
    """`chat.completion.chunk` dicts from an Anthropic event stream (one event gives zero or more chunks)."""

    __slots__ = ("_events", "_parser", "_pending")

    def __init__(self, events: SSEStream, parser: AnthropicStreamParser) -> None:
        self._events = events
        self._parser = parser
        self._pending: collections.deque[dict[str, Any]] = collections.deque()

    def __aiter__(self) -> _ChunkStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        # After message_stop the body is read to its end, so the connection goes back to the pool.
        while not self._pending:
            try:
                event = await self._events.__anext__()
            except StopAsyncIteration:
                self._events.close()
                self._parser.check_complete()
                raise
            try:
                self._pending.extend(self._parser.feed(event))
            except ManifoldError:
                self._events.close()
                raise
        return self._pending.popleft()

    def buffered(self) -> bool:
        """Whether the next chunk (or the event that makes it) has already arrived: the server batches writes."""
        return bool(self._pending) or self._events.buffered()

    async def aclose(self) -> None:
        self._events.close()
