"""MLServer custom runtimes that follow Seldon Core 2's tensor convention for OpenAI requests.

They run inside a real MLServer 1.7.1 (its own virtualenv, see ``tests/fakes/mlserver.py``), never in the test
process. Each decodes the request the way Seldon's local runtimes read what Seldon's translator
(``scheduler/pkg/translator/openai/*.go``) sends, independently of Manifold's encoder, so a Manifold bug shows as
a wrong answer or a 400 from here:

``SeldonChatRuntime``
    Inputs: BYTES tensors ``role``, ``content``, ``type`` (+ ``tool_calls``, ``tool_call_id``, ``tools``,
    ``tool_choice``, ``parallel_tool_calls``). One message: the tensors hold that message's values directly. Several
    messages: one element per message, ``content``/``type``/``tool_calls`` JSON-encoded lists (``""`` for none).
    Options come in ``parameters.llm_parameters`` and ``parameters.kwargs`` (the same object).

    Replies like Seldon's *local* runtime (``role``/``content``/``type`` tensors, shape ``[1, 1]``) unless the
    request has ``tools`` or ``llm_parameters.fake_response == "output_all"``: then like the *API* runtime, with the
    raw OpenAI JSON in ``output_all``. ``predict_stream`` (``/infer_stream``) yields one response per word.

    Content: ``"echo: "`` + the last user text; after a ``tool`` message, ``"tool said: "`` + its content.
    ``llm_parameters.fake_response == "inspect"``: the content is the JSON of everything decoded (messages,
    tools, options, request id). Last user text ``fail:inference`` raises ``InferenceError`` (MLServer: 400
    ``{"error": ...}``); ``fail:crash`` raises ``RuntimeError`` (MLServer: 500 text).
``SeldonEmbeddingsRuntime``
    ``input`` BYTES ``[n]`` → ``embedding`` FP32 ``[n, dim]`` (flat data), a deterministic hash of each text.
    Requires ``parameters.embedding_parameters`` (what Seldon's local embeddings runtime reads).
``SeldonImagesRuntime``
    ``prompt`` BYTES ``[1]`` → ``output_all`` holding an ``ImagesResponse`` JSON (a 1x1 PNG per image).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

from mlserver import MLModel
from mlserver.codecs import StringCodec
from mlserver.errors import InferenceError
from mlserver.types import InferenceRequest, InferenceResponse, Parameters, RequestInput, ResponseOutput

CREATED = 1_700_000_000
TOOL_ARGUMENTS = '{"city": "Paris"}'
# A valid 1x1 transparent PNG.
PNG_1X1_B64 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="


def _strings(inputs: list[RequestInput], name: str) -> list[str] | None:
    for inp in inputs:
        if inp.name == name:
            if inp.datatype != "BYTES":
                raise InferenceError(f"tensor {name!r} must be BYTES, got {inp.datatype}")
            if list(inp.shape) != [len(_flat(inp.data.root))]:
                raise InferenceError(f"tensor {name!r}: shape {inp.shape} does not match its data")
            return StringCodec.decode_input(inp)
    return None


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for item in data:
            out.extend(_flat(item))
        return out
    return [data]


def _params(payload: InferenceRequest, key: str) -> dict[str, Any]:
    extra = (payload.parameters.model_extra or {}) if payload.parameters else {}
    value = extra.get(key)
    if not isinstance(value, dict):
        raise InferenceError(f"parameters.{key} missing or not an object")
    return value


def _message_content(values: list[str], types: list[str]) -> Any:
    if len(values) != len(types):
        raise InferenceError(f"content/type length mismatch: {values} vs {types}")
    if len(values) == 1 and types[0] == "text":
        return values[0]
    parts = []
    for value, kind in zip(values, types, strict=True):
        parts.append({"type": kind, kind: value if kind == "text" else json.loads(value)})
    return parts


def decode_chat(payload: InferenceRequest) -> dict[str, Any]:
    """Seldon's tensor convention back into an OpenAI-like request (the oracle for Manifold's encoder)."""
    inputs = payload.inputs
    roles = _strings(inputs, "role")
    if not roles:
        raise InferenceError("tensor 'role' is required")
    content = _strings(inputs, "content")
    types = _strings(inputs, "type")
    tool_calls = _strings(inputs, "tool_calls")
    tool_call_id = _strings(inputs, "tool_call_id")
    messages: list[dict[str, Any]] = []
    if len(roles) == 1:
        values = content if content is not None else [""]
        kinds = types if types is not None else ["text"]
        message: dict[str, Any] = {"role": roles[0], "content": _message_content(values, kinds)}
        if tool_calls:
            message["tool_calls"] = [json.loads(tc) for tc in tool_calls]
        if tool_call_id:
            message["tool_call_id"] = tool_call_id[0]
        messages.append(message)
    else:
        n = len(roles)
        for name, tensor in (("content", content), ("type", types), ("tool_calls", tool_calls), ("ids", tool_call_id)):
            if tensor is not None and len(tensor) != n:
                raise InferenceError(f"tensor {name!r} has {len(tensor)} elements for {n} messages")
        if content is None or types is None:
            raise InferenceError("several messages need 'content' and 'type' tensors")
        for i, role in enumerate(roles):
            values = json.loads(content[i]) if content[i] else []
            kinds = json.loads(types[i]) if types[i] else []
            message = {"role": role, "content": _message_content(values, kinds) if values else None}
            if tool_calls is not None and tool_calls[i]:
                message["tool_calls"] = [json.loads(tc) for tc in json.loads(tool_calls[i])]
            if tool_call_id is not None and tool_call_id[i]:
                message["tool_call_id"] = tool_call_id[i]
            messages.append(message)
    decoded: dict[str, Any] = {"id": payload.id, "messages": messages}
    tools = _strings(inputs, "tools")
    if tools is not None:
        decoded["tools"] = [json.loads(t) for t in tools]
    choice = _strings(inputs, "tool_choice")
    if choice is not None:
        decoded["tool_choice"] = json.loads(choice[0]) if choice[0].startswith("{") else choice[0]
    parallel = _strings(inputs, "parallel_tool_calls")
    if parallel is not None:
        decoded["parallel_tool_calls"] = json.loads(parallel[0])
    decoded["llm_parameters"] = _params(payload, "llm_parameters")
    decoded["kwargs"] = _params(payload, "kwargs")
    if decoded["llm_parameters"] != decoded["kwargs"]:
        raise InferenceError("llm_parameters and kwargs differ")
    return decoded


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _answer(decoded: dict[str, Any]) -> str:
    if decoded["llm_parameters"].get("fake_response") == "inspect":
        return json.dumps(decoded, sort_keys=True)
    messages = decoded["messages"]
    last = messages[-1]
    if last["role"] == "tool":
        return "tool said: " + _text(last["content"])
    user = [m for m in messages if m["role"] == "user"]
    text = _text(user[-1]["content"]) if user else ""
    if text == "fail:inference":
        raise InferenceError("the fake model refused: fail:inference")
    if text == "fail:crash":
        raise RuntimeError("the fake model crashed")
    return "echo: " + text


def _wants_tool_call(decoded: dict[str, Any]) -> bool:
    return bool(decoded.get("tools")) and decoded["messages"][-1]["role"] != "tool"


def _tool_call(decoded: dict[str, Any]) -> dict[str, Any]:
    name = decoded["tools"][0]["function"]["name"]
    return {"id": "call_mlserver_1", "type": "function", "function": {"name": name, "arguments": TOOL_ARGUMENTS}}


def _str_output(name: str, value: str) -> ResponseOutput:
    return ResponseOutput(
        name=name, shape=[1, 1], datatype="BYTES", data=[value], parameters=Parameters(content_type="str")
    )


def _words(text: str) -> list[str]:
    pieces: list[str] = []
    for word in text.split(" "):
        pieces.append(word if not pieces else " " + word)
    return pieces


def _usage(decoded: dict[str, Any], completion: str) -> dict[str, int]:
    prompt = sum(len(_text(m["content"]).split()) for m in decoded["messages"])
    done = len(completion.split())
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


class SeldonChatRuntime(MLModel):
    async def load(self) -> bool:
        return True

    def _response(self, outputs: list[ResponseOutput], payload: InferenceRequest) -> InferenceResponse:
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=outputs)

    def _local(self, payload: InferenceRequest, content: str) -> InferenceResponse:
        outputs = [_str_output("role", "assistant"), _str_output("content", content), _str_output("type", "text")]
        return self._response(outputs, payload)

    def _api(self, payload: InferenceRequest, body: dict[str, Any], content: str | None) -> InferenceResponse:
        outputs = [
            _str_output("role", "assistant"),
            _str_output("content", content or ""),
            _str_output("type", "text"),
            _str_output("output_all", json.dumps(body, indent=2)),
        ]
        return self._response(outputs, payload)

    def _uses_output_all(self, decoded: dict[str, Any]) -> bool:
        return bool(decoded.get("tools")) or decoded["llm_parameters"].get("fake_response") == "output_all"

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        decoded = decode_chat(payload)
        if _wants_tool_call(decoded):
            message: dict[str, Any] = {"role": "assistant", "content": None, "tool_calls": [_tool_call(decoded)]}
            finish, content = "tool_calls", None
        else:
            content = _answer(decoded)
            if not self._uses_output_all(decoded):
                return self._local(payload, content)
            message, finish = {"role": "assistant", "content": content, "refusal": None}, "stop"
        body = {
            "id": "chatcmpl-mlserver-1",
            "object": "chat.completion",
            "created": CREATED,
            "model": "upstream-llm",
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
            "usage": _usage(decoded, content or ""),
            "system_fingerprint": None,
        }
        return self._api(payload, body, content)

    async def predict_stream(self, payloads: AsyncIterator[InferenceRequest]) -> AsyncIterator[InferenceResponse]:
        payload = await payloads.__anext__()
        decoded = decode_chat(payload)
        if not self._uses_output_all(decoded):
            for piece in _words(_answer(decoded)):
                await asyncio.sleep(0)
                yield self._local(payload, piece)
            return
        base = {"id": "chatcmpl-mlserver-2", "object": "chat.completion.chunk", "created": CREATED, "model": "m"}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> InferenceResponse:
            body = {**base, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
            return self._api(payload, body, delta.get("content"))

        if _wants_tool_call(decoded):
            call = _tool_call(decoded)
            args = call["function"]["arguments"]
            first = {**call, "index": 0, "function": {"name": call["function"]["name"], "arguments": ""}}
            yield chunk({"role": "assistant", "tool_calls": [first]})
            for i in range(0, len(args), 5):
                # Like some real upstreams, repeat id/type/name in every delta (the gateway must strip them).
                repeat = {"index": 0, "id": call["id"], "type": "function", "function": {"arguments": args[i : i + 5]}}
                repeat["function"]["name"] = call["function"]["name"]
                yield chunk({"tool_calls": [repeat]})
            yield chunk({}, "tool_calls")
            content = ""
        else:
            content = _answer(decoded)
            yield chunk({"role": "assistant", "content": ""})
            for piece in _words(content):
                yield chunk({"content": piece})
            yield chunk({}, "stop")
        options = decoded["llm_parameters"].get("stream_options") or {}
        if options.get("include_usage"):
            usage = {**base, "choices": [], "usage": _usage(decoded, content)}
            yield self._api(payload, usage, None)


class SeldonEmbeddingsRuntime(MLModel):
    async def load(self) -> bool:
        extra = self.settings.parameters.extra if self.settings.parameters else None
        self.dim = int((extra or {}).get("dim", 8))
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        texts = _strings(payload.inputs, "input")
        if texts is None:
            raise InferenceError("tensor 'input' is required")
        _params(payload, "embedding_parameters")
        data: list[float] = []
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            data.extend(round(b / 255.0, 6) for b in digest[: self.dim])
        output = ResponseOutput(name="embedding", shape=[len(texts), self.dim], datatype="FP32", data=data)
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[output])


def expected_embedding(text: str, dim: int = 8) -> list[float]:
    """What `SeldonEmbeddingsRuntime` returns for `text`, rounded to FP32 as it travels."""
    digest = hashlib.sha256(text.encode()).digest()
    return [struct.unpack("<f", struct.pack("<f", round(b / 255.0, 6)))[0] for b in digest[:dim]]


class SeldonImagesRuntime(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        prompt = _strings(payload.inputs, "prompt")
        if not prompt:
            raise InferenceError("tensor 'prompt' is required")
        options = _params(payload, "llm_parameters")
        n = int(options.get("n") or 1)
        body = {"created": CREATED, "data": [{"b64_json": PNG_1X1_B64, "revised_prompt": prompt[0]}] * n}
        output = _str_output("output_all", json.dumps(body))
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[output])
