"""OpenAI-compatible upstreams: the client's JSON is forwarded as sent, with only `model` mapped."""

from __future__ import annotations

import logging
from typing import Any, ClassVar
from urllib.parse import quote

from manifold import _json
from manifold.api import upstream
from manifold.config import AzureDeployment, DeploymentBase, OpenAIDeployment
from manifold.errors import BadGatewayError, ManifoldError
from manifold.providers.base import Call, Capability, ChunkStream, Provider, of_kind
from manifold.providers.transport import Response
from manifold.providers.upstream_http import SSEStream, UpstreamSession

log = logging.getLogger("manifold.providers")
# OpenAI's 404 for a chat model on /completions: "This is a chat model and not supported in the v1/completions
# endpoint. Did you mean to use v1/chat/completions?" (some compatible servers answer it with a 400).
_CHAT_MODEL_HINT = "not supported in the v1/completions endpoint"


class OpenAICompatibleProvider(Provider):
    capabilities: ClassVar[frozenset[Capability]] = frozenset(Capability)
    deployment: OpenAIDeployment

    def __init__(self, deployment: OpenAIDeployment) -> None:
        super().__init__(deployment)
        self.http = UpstreamSession(deployment)
        self.base_url = (deployment.api_base or "").rstrip("/")
        self.chat_url = self._url("chat/completions")
        self.headers = {"content-type": "application/json", **self._auth_headers(), **deployment.headers}
        self._stream_headers = {**self.headers, "accept": "text/event-stream"}
        self._upstream_model = deployment.upstream_model
        # Upstream models (by `call.upstream_model`; "" for the deployment's own) found to serve no /completions.
        self._chat_only: set[str] = set()

    @classmethod
    def check(cls, deployment: DeploymentBase) -> list[str]:
        deployment = of_kind(deployment, OpenAIDeployment)
        out = []
        if not deployment.api_base:
            out.append("api_base: required for this provider (e.g. http://127.0.0.1:8000/v1)")
        elif not deployment.api_base.startswith(("http://", "https://")):
            out.append(f"api_base: {deployment.api_base!r} must start with http:// or https://")
        return out

    def _auth_headers(self) -> dict[str, str]:
        key = self.deployment.api_key
        return {"authorization": f"Bearer {key}"} if key else {}

    def _url(self, path: str) -> str:
        return f"{self.base_url}/{path}"

    async def start(self) -> None:
        await self.http.start()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def ready(self) -> bool:
        """Reachable = it answers HTTP at all (some upstreams protect /models)."""
        status = await self.http.probe(self._url("models"), self.headers, min(5.0, self.deployment.timeouts.first_byte))
        return status is not None and status < 500

    def _payload(self, call: Call) -> bytes:
        body = call.body
        model = call.upstream_model or self._upstream_model
        if body.get("model") == model:
            return _json.encode(body)
        out = dict(body)  # shallow copy: the client's dict stays as it was received
        out["model"] = model
        return _json.encode(out)

    def _url_for(self, path: str, call: Call) -> str:
        return self.chat_url if path == "chat/completions" else self._url(path)

    def _request_headers(self, call: Call, stream: bool) -> dict[str, str]:
        headers = self._stream_headers if stream else self.headers
        return {**headers, "x-request-id": call.request_id}

    async def chat(self, call: Call) -> dict[str, Any]:
        data = await self.http.post_json(
            self._url_for("chat/completions", call), self._payload(call), self._request_headers(call, False)
        )
        if not isinstance(data, dict):
            raise BadGatewayError(f"The upstream for {self.http.label} returned a non-object completion.")
        return data

    async def open_chat_stream(self, call: Call) -> ChunkStream:
        resp = await self.http.request(
            "POST",
            self._url_for("chat/completions", call),
            data=self._payload(call),
            headers=self._request_headers(call, True),
        )
        if resp.content_type == "application/json":
            # The upstream ignored `stream`; replay its completion as chunks.
            return _completion_as_chunks(await self.http.read_json(resp))
        return self._chunks(resp)

    def _chunks(self, resp: Response) -> ChunkStream:
        return _ChunkStream(self.http.sse(resp), self.http.label)

    # -- legacy completions, embeddings, images: native pass-through, only `model` mapped --------------------

    async def _post_json(self, path: str, call: Call, what: str) -> dict[str, Any]:
        data = await self.http.post_json(
            self._url_for(path, call), self._payload(call), self._request_headers(call, False)
        )
        if not isinstance(data, dict):
            raise BadGatewayError(f"The upstream for {self.http.label} returned a non-object {what}.")
        return data

    def _completions_native(self, call: Call) -> bool:
        support = self.deployment.supports_completions
        return support is True or (support == "auto" and (call.upstream_model or "") not in self._chat_only)

    def _answers_through_chat(self, exc: ManifoldError, call: Call) -> bool:
        """`supports_completions: auto`: a 404 (no such route) or OpenAI's answer for a chat model means this
        upstream model only chats; it is remembered, so later requests go straight to chat."""
        if self.deployment.supports_completions != "auto":
            return False
        if exc.upstream_status != 404 and not (
            exc.upstream_status is not None and 400 <= exc.upstream_status < 500 and _CHAT_MODEL_HINT in exc.message
        ):
            return False
        self._chat_only.add(call.upstream_model or "")
        log.info(
            "deployment %s: its upstream serves no legacy completions (%d); answering them through chat",
            self.http.label,
            exc.upstream_status,
        )
        return True

    async def completions(self, call: Call) -> dict[str, Any]:
        if self._completions_native(call):
            try:
                return await self._post_json("completions", call, "completion")
            except ManifoldError as exc:
                if not self._answers_through_chat(exc, call):
                    raise
        return await super().completions(call)

    async def open_completions_stream(self, call: Call) -> ChunkStream:
        if not self._completions_native(call):
            return await super().open_completions_stream(call)
        try:
            resp = await self.http.request(
                "POST",
                self._url_for("completions", call),
                data=self._payload(call),
                headers=self._request_headers(call, True),
            )
        except ManifoldError as exc:
            if not self._answers_through_chat(exc, call):
                raise
            return await super().open_completions_stream(call)
        if resp.content_type == "application/json":
            return _text_completion_as_chunks(await self.http.read_json(resp))
        return self._chunks(resp)

    async def embeddings(self, call: Call) -> dict[str, Any]:
        return await self._post_json("embeddings", call, "embedding list")

    async def images(self, call: Call) -> dict[str, Any]:
        return await self._post_json("images/generations", call, "images response")

    # -- the native Responses API (deployment `responses: native`): pass-through, only `model` mapped ----------

    async def responses(self, call: Call) -> dict[str, Any]:
        response = await self._post_json("responses", call, "response")
        upstream.conform(response, upstream.Response, "response")
        return response

    async def open_responses_stream(self, call: Call) -> ChunkStream:
        resp = await self.http.request(
            "POST", self._url("responses"), data=self._payload(call), headers=self._request_headers(call, True)
        )
        if resp.content_type == "application/json":
            await self.http.read_json(resp)
            raise BadGatewayError(f"The upstream for {self.http.label} answered a streamed response without a stream.")
        # Responses events: JSON objects with `type`, framed like chat chunks
        return _ResponseEventStream(self.http.sse(resp), self.http.label)


class _ChunkStream:
    """`chat.completion.chunk` dicts from an OpenAI-style SSE stream, ending at `data: [DONE]` (or EOF)."""

    __slots__ = ("_events", "_finished", "_label", "_started")

    def __init__(self, events: SSEStream, label: str) -> None:
        self._events = events
        self._label = label
        self._started = False
        self._finished = False  # a choice has said why it ended (finish_reason)

    def __aiter__(self) -> _ChunkStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        try:
            data = (await self._events.__anext__()).data
        except StopAsyncIteration:
            if not self._started:
                # An HTML page or an empty body where a stream was due: not an empty "success".
                raise BadGatewayError(
                    f"The upstream for {self._label} answered without a single stream event."
                ) from None
            if not self._finished:
                # Ended without `[DONE]` and before any choice finished: the answer was cut short, and a `[DONE]`
                # from us would tell the client it is whole. (Ending without `[DONE]` after a finish_reason is
                # accepted: some servers leave the sentinel out.)
                raise BadGatewayError(
                    f"The upstream for {self._label} ended the stream before the answer finished "
                    "(no finish_reason, no [DONE])."
                ) from None
            raise
        self._started = True
        if data == b"[DONE]":
            self._events.close()
            raise StopAsyncIteration
        try:
            chunk = _json.decode(data)
        except _json.DecodeError:
            self._events.close()
            raise BadGatewayError(f"The upstream for {self._label} sent a malformed stream event.") from None
        if not isinstance(chunk, dict):
            self._events.close()
            raise BadGatewayError(f"The upstream for {self._label} sent a non-object stream event.")
        err = chunk.get("error")
        if err:
            self._events.close()
            message = err.get("message") if isinstance(err, dict) else str(err)
            raise BadGatewayError(f"The upstream for {self._label} failed mid-stream: {message}")
        if not self._finished:
            choices = chunk.get("choices")
            if isinstance(choices, list):
                for choice in choices:
                    if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                        self._finished = True
        return chunk

    def buffered(self) -> bool:
        """Whether the next chunk has already arrived (the server then batches its write)."""
        return self._events.buffered()

    async def aclose(self) -> None:
        self._events.close()


class _ResponseEventStream(_ChunkStream):
    """Responses API events, each checked to be an event (a `type`, and a well-formed `response` or `item`)."""

    __slots__ = ("_ended",)

    def __init__(self, events: SSEStream, label: str) -> None:
        super().__init__(events, label)
        self._ended = False
        self._finished = True  # no choices here: the final event (`_ended`) is what says the stream is whole

    async def __anext__(self) -> dict[str, Any]:
        try:
            event = await super().__anext__()
        except StopAsyncIteration:
            if not self._ended:
                raise BadGatewayError(
                    f"The upstream for {self._label} ended its Responses stream before a final event."
                ) from None
            raise
        try:
            checked = upstream.conform(event, upstream.ResponseEvent, "Responses stream event")
        except BadGatewayError:
            self._events.close()
            raise
        self._ended = checked.type in _FINAL_EVENTS
        return event


_FINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})


async def _completion_as_chunks(completion: Any) -> ChunkStream:
    """An upstream that ignored `stream`: its `chat.completion`, checked, replayed as chunks."""
    typed = upstream.conform(completion, upstream.ChatCompletion, "chat completion")
    base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint") if k in completion}
    for position, (choice, checked) in enumerate(zip(completion["choices"], typed.choices, strict=True)):
        index = checked.index if checked.index is not None else position
        message = dict(choice["message"])
        if checked.message.tool_calls:
            message["tool_calls"] = [{**tc, "index": i} for i, tc in enumerate(message["tool_calls"])]
        delta = {k: v for k, v in message.items() if v is not None}
        yield {**base, "choices": [{"index": index, "delta": delta, "finish_reason": None}]}
        yield {**base, "choices": [{"index": index, "delta": {}, "finish_reason": checked.finish_reason}]}
    if typed.usage is not None:
        yield {**base, "choices": [], "usage": completion["usage"]}


async def _text_completion_as_chunks(completion: Any) -> ChunkStream:
    """An upstream that ignored `stream` on /completions: its `text_completion`, checked, replayed as chunks."""
    typed = upstream.conform(completion, upstream.TextCompletion, "completion")
    base = {k: completion[k] for k in ("id", "created", "model", "system_fingerprint") if k in completion}
    for choice in completion["choices"]:
        yield {**base, "choices": [choice]}
    if typed.usage is not None:
        yield {**base, "choices": [], "usage": completion["usage"]}


class AzureOpenAIProvider(OpenAICompatibleProvider):
    """Azure OpenAI: `api-key` header, `api-version` query, and the deployment in the URL."""

    deployment: AzureDeployment

    def __init__(self, deployment: AzureDeployment) -> None:
        super().__init__(deployment)

    @classmethod
    def check(cls, deployment: DeploymentBase) -> list[str]:
        out = super().check(deployment)
        deployment = of_kind(deployment, AzureDeployment)
        if not deployment.api_version:
            out.append("api_version: required for azure (e.g. 2024-10-21)")
        if not deployment.model:
            out.append("model: required for azure: the Azure deployment name")
        return out

    def _auth_headers(self) -> dict[str, str]:
        key = self.deployment.api_key
        return {"api-key": key} if key else {}

    def _url_for(self, path: str, call: Call) -> str:
        if call.upstream_model is None:
            return super()._url_for(path, call)
        return self._url(path, call.upstream_model)  # a wildcard group: the Azure deployment is per call

    def _url(self, path: str, deployment: str | None = None) -> str:
        dep = quote(deployment or self.deployment.upstream_model, safe="")
        version = quote(self.deployment.api_version or "", safe="")
        if path == "models":
            return f"{self.base_url}/openai/models?api-version={version}"
        if path == "responses":  # not per deployment: the deployment goes in the body's `model`
            return f"{self.base_url}/openai/responses?api-version={version}"
        return f"{self.base_url}/openai/deployments/{dep}/{path}?api-version={version}"
