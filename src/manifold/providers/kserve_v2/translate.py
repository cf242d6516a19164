"""Pure translations between OpenAI's wire format and the Open Inference Protocol (KServe v2).

Two conventions, chosen per deployment by `mode`:

``tensors`` — Seldon Core 2's OpenAI ⇄ OIP convention (``scheduler/pkg/translator/openai/*.go``, Core 2.10+), which
its MLServer runtimes read. A chat request becomes BYTES tensors, one element per message:

=============  ======================================================================================
``role``       the message's role
``content``    one message: its values directly (a string; or one element per content part, non-text parts
               as the JSON of ``part[part.type]``); several messages: each message's list JSON-encoded
``type``       the matching part types (``"text"`` for string content), encoded like ``content``
``tool_calls`` the JSON of each tool call; several messages: a JSON list of those strings per message (``""``)
``tool_call_id`` the id of a ``tool`` message (``""`` for the others)
``tools``      the JSON of each tool; then ``parallel_tool_calls`` (``"true"``) and ``tool_choice`` (the string
               or the JSON of the object), both only with tools
=============  ======================================================================================

A tensor whose elements are all ``""`` is left out. Every other body field (not ``model``, ``messages``, ``tools``,
``parallel_tool_calls``, ``tool_choice``) goes verbatim to ``parameters.llm_parameters`` and again to
``parameters.kwargs`` (Seldon's API runtime reads the first, its local runtime the second). The reply is either
``output_all`` (the raw OpenAI JSON, Seldon's API runtime) or ``role``/``content`` tensors (its local runtime; a
``tool_calls`` tensor of JSON tool calls and a ``finish_reason`` tensor are read too when present). Embeddings: an
``input`` BYTES tensor, options in ``llm_parameters`` and ``embedding_parameters``, an FP32 ``embedding`` tensor of
shape ``[rows, cols]`` back. Images: a ``prompt`` tensor, options in ``llm_parameters``, ``output_all`` back.

``generate`` — the generate extension (Triton ``extension_generate.md``, OIP ``generate_rest.yaml``):
``{"text_input", "parameters": {max_tokens, temperature, top_p, stop, …}}`` → ``{"text_output", "model_name"}``;
``generate_stream`` events add ``done``.

Unlike Seldon, every inference request carries an ``id`` (KServe's Python server fails with a 500 without one).
Nothing here mutates its input: requests are built from copies, so a retry can run a translation again.
"""

from __future__ import annotations

import base64
import struct
from collections.abc import Mapping
from typing import Any, TypeVar

import msgspec

from manifold import _json
from manifold.api import upstream
from manifold.api.chat import ChatCompletionRequest
from manifold.errors import UnsupportedError
from manifold.providers.kserve_v2 import shapes
from manifold.providers.kserve_v2.shapes import OIPFormatError as OIPFormatError

T = TypeVar("T")

# Body fields the tensors carry themselves (everything else goes to the parameters).
_CHAT_TENSOR_FIELDS = frozenset({"model", "messages", "tools", "parallel_tool_calls", "tool_choice"})
_OPENAI_CHAT_FIELDS = frozenset(ChatCompletionRequest.__struct_fields__)
# OpenAI options a generate server understands under the same name (OIP generate_rest.yaml, Triton, vLLM).
_GENERATE_OPTIONS = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "seed")


class OIPStreamError(Exception):
    """An ``{"error": …}`` event inside a stream that had started (the provider reports it as a 502)."""


# -- tensors mode: chat --------------------------------------------------------------------------------------------


def bytes_tensor(name: str, data: list[str]) -> dict[str, Any]:
    return {"name": name, "shape": [len(data)], "datatype": "BYTES", "data": data}


def _json_text(value: Any) -> str:
    return value if isinstance(value, str) else _json.dumps_text(value)


def _content_and_types(message: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    content = message.get("content")
    if content is None:
        return [""], ["text"]
    if isinstance(content, str):
        return [content], ["text"]
    values: list[str] = []
    kinds: list[str] = []
    for part in content:
        kind = part["type"]
        values.append(_json_text(part.get(kind)))
        kinds.append(kind)
    return values, kinds


def _field(items: list[str | list[str]]) -> list[str]:
    """One message: its values as they are; several: one element per message, lists JSON-encoded."""
    if len(items) == 1:
        only = items[0]
        if isinstance(only, str):
            return [only] if only else []
        return list(only)
    return [item if isinstance(item, str) else (_json.dumps_text(item) if item else "") for item in items]


def _add(inputs: list[dict[str, Any]], name: str, items: list[str | list[str]]) -> None:
    data = _field(items)
    if any(data):
        inputs.append(bytes_tensor(name, data))


def to_infer_chat(body: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    """A chat completion request as an OIP inference request in Seldon's tensor convention."""
    messages = body["messages"]
    roles: list[str | list[str]] = []
    contents: list[str | list[str]] = []
    types: list[str | list[str]] = []
    tool_calls: list[str | list[str]] = []
    tool_call_ids: list[str | list[str]] = []
    for message in messages:
        values, kinds = _content_and_types(message)
        roles.append(message["role"])
        contents.append(values)
        types.append(kinds)
        tool_calls.append([_json.dumps_text(tc) for tc in message.get("tool_calls") or ()])
        tool_call_id = message.get("tool_call_id")
        tool_call_ids.append(tool_call_id if isinstance(tool_call_id, str) else "")
    inputs: list[dict[str, Any]] = []
    _add(inputs, "role", roles)
    _add(inputs, "content", contents)
    _add(inputs, "type", types)
    _add(inputs, "tool_calls", tool_calls)
    _add(inputs, "tool_call_id", tool_call_ids)
    tools = body.get("tools")
    if tools:
        inputs.append(bytes_tensor("tools", [_json.dumps_text(t) for t in tools]))
        if "parallel_tool_calls" in body:
            inputs.append(bytes_tensor("parallel_tool_calls", [_json.dumps_text(body["parallel_tool_calls"])]))
        if "tool_choice" in body:
            inputs.append(bytes_tensor("tool_choice", [_json_text(body["tool_choice"])]))
    options = {k: v for k, v in body.items() if k not in _CHAT_TENSOR_FIELDS}
    return {"id": request_id, "inputs": inputs, "parameters": {"llm_parameters": options, "kwargs": dict(options)}}


_Tensor = tuple[int, shapes.OutputTensor]  # (its place in `outputs`, the tensor)


def _outputs(response: Any, what: str = "inference response") -> dict[str, _Tensor]:
    if not isinstance(response, dict):
        raise OIPFormatError(f"the {what} is not a JSON object")
    typed = shapes.conform(response, shapes.InferResponse, what)
    return {tensor.name: (i, tensor) for i, tensor in enumerate(typed.outputs)}


def _strings(entry: _Tensor) -> list[str]:
    index, tensor = entry
    values: list[str] = shapes.tensor_values(tensor, index, "BYTES")
    return values


def _first_string(entry: _Tensor | None) -> str | None:
    if entry is None:
        return None
    values = _strings(entry)
    return values[0] if values else None


def _decode_object(text: str | None, what: str) -> dict[str, Any]:
    try:
        value = _json.decode(text) if text is not None else None
    except _json.DecodeError:
        raise OIPFormatError(f"'{what}' is not valid JSON") from None
    if not isinstance(value, dict):
        raise OIPFormatError(f"'{what}' does not hold a JSON object")
    return value


def _tool_calls(entry: _Tensor | None) -> list[dict[str, Any]]:
    if entry is None:
        return []
    return [_decode_object(text, "tool_calls") for text in _strings(entry) if text]


def from_infer_chat(response: Any) -> dict[str, Any]:
    """A `chat.completion` (without `id`/`created`/`model`, which the caller fills) from an inference response."""
    tensors = _outputs(response)
    if "output_all" in tensors:
        return _decode_object(_first_string(tensors["output_all"]), "output_all")
    content = _first_string(tensors.get("content"))
    tool_calls = _tool_calls(tensors.get("tool_calls"))
    if content is None and not tool_calls:
        raise OIPFormatError("the inference response has neither an 'output_all' nor a 'content' output")
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["content"] = content or None  # OpenAI's shape for a reply that is only tool calls
        message["tool_calls"] = tool_calls
    finish = _first_string(tensors.get("finish_reason")) or ("tool_calls" if tool_calls else "stop")
    return {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
    }


def chunk_from_infer_event(event: Any) -> dict[str, Any]:
    """One `/infer_stream` event (a whole inference response) as a `chat.completion.chunk` (or a usage chunk)."""
    if isinstance(event, dict) and "error" in event and "outputs" not in event:
        raise OIPStreamError(error_text(event))
    tensors = _outputs(event)
    if "output_all" in tensors:
        # Whatever the runtime sent: checked before the stream parser reads its choices.
        chunk = _decode_object(_first_string(tensors["output_all"]), "output_all")
        upstream.conform(chunk, upstream.ChatChunk, "stream chunk")
        return chunk
    content = _first_string(tensors.get("content"))
    tool_calls = _tool_calls(tensors.get("tool_calls"))
    delta: dict[str, Any] = {}
    if content:
        delta["content"] = content
    if tool_calls:
        delta["tool_calls"] = [{**tc, "index": tc.get("index", i)} for i, tc in enumerate(tool_calls)]
    finish = _first_string(tensors.get("finish_reason")) or None
    if content is None and not tool_calls and finish is None:
        raise OIPFormatError("a stream event has neither an 'output_all' nor a 'content' output")
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def completion_as_chunks(completion: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A whole completion replayed as chunks (a server that answered a stream request with one reply);
    `UpstreamShapeError` when it is not a chat completion (an `output_all` holds whatever the runtime sent)."""
    typed = upstream.conform(completion, upstream.ChatCompletion, "chat completion")
    chunks: list[dict[str, Any]] = []
    for choice, checked in zip(completion["choices"], typed.choices, strict=True):
        index = checked.index or 0
        delta = {k: v for k, v in choice["message"].items() if v is not None and k != "role"}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{**tc, "index": i} for i, tc in enumerate(delta["tool_calls"])]
        chunks.append({"choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        chunks.append({"choices": [{"index": index, "delta": {}, "finish_reason": checked.finish_reason}]})
    if completion.get("usage"):
        chunks.append({"choices": [], "usage": completion["usage"]})
    return chunks


# -- tensors mode: embeddings and images ---------------------------------------------------------------------------


def to_infer_embeddings(body: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    value = body.get("input")
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        texts = list(value)
    else:
        raise UnsupportedError(
            "This model takes 'input' as a string or an array of strings (token arrays are not supported).",
            param="input",
        )
    options = {k: v for k, v in body.items() if k not in ("model", "input")}
    return {
        "id": request_id,
        "inputs": [bytes_tensor("input", texts)],
        "parameters": {"llm_parameters": options, "embedding_parameters": dict(options)},
    }


def _as_base64(vector: list[float]) -> str:
    # OpenAI's base64 encoding: the float32 values, little-endian, as the SDKs decode them.
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def from_infer_embeddings(response: Any, encoding_format: str | None = None) -> dict[str, Any]:
    """A `CreateEmbeddingResponse` (without `model`) from an inference response."""
    tensors = _outputs(response)
    if "output_all" in tensors:
        return _decode_object(_first_string(tensors["output_all"]), "output_all")
    entry = tensors.get("embedding")
    if entry is None:
        raise OIPFormatError("the inference response has neither an 'output_all' nor an 'embedding' output")
    index, tensor = entry
    shape = tensor.shape
    if shape is None or len(shape) != 2:
        raise OIPFormatError(
            f"at 'outputs[{index}].shape': the 'embedding' output must have a 2-D shape [rows, cols], got {shape!r}"
        )
    rows, cols = shape
    values = shapes.tensor_values(tensor, index, "FP64")
    data = []
    for i in range(rows):
        vector = values[i * cols : (i + 1) * cols]
        embedding: list[float] | str = _as_base64(vector) if encoding_format == "base64" else vector
        data.append({"object": "embedding", "index": i, "embedding": embedding})
    return {"object": "list", "data": data, "usage": {"prompt_tokens": 0, "total_tokens": 0}}


def to_infer_images(body: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise UnsupportedError("This model takes 'prompt' as a string.", param="prompt")
    options = {k: v for k, v in body.items() if k not in ("model", "prompt")}
    return {"id": request_id, "inputs": [bytes_tensor("prompt", [prompt])], "parameters": {"llm_parameters": options}}


def from_infer_images(response: Any) -> dict[str, Any]:
    """An `ImagesResponse` from an inference response (only `output_all` carries images in the convention)."""
    tensors = _outputs(response)
    if "output_all" not in tensors:
        raise OIPFormatError("the inference response has no 'output_all' output (the image runtime's reply)")
    return _decode_object(_first_string(tensors["output_all"]), "output_all")


# -- generate mode -------------------------------------------------------------------------------------------------


def text_of(content: Any, where: str) -> str:
    """String content, or text parts joined; any other part cannot be rendered into a prompt."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type")
        if kind not in ("text", "refusal"):
            raise UnsupportedError(
                f"This model takes text only; '{kind}' content parts are not supported.", param=f"{where}[{j}]"
            )
        texts.append(part.get(kind) or "")
    return "".join(texts)


def check_generate_request(body: Mapping[str, Any], public_model: str) -> None:
    """What a text-in, text-out generate endpoint cannot do: a clear 400 naming the parameter."""
    label = f"The model '{public_model}' (a text generation endpoint)"
    for key in ("tools", "functions"):
        if body.get(key):
            raise UnsupportedError(f"{label} does not support '{key}'.", param=key)
    if (body.get("n") or 1) != 1:
        raise UnsupportedError(f"{label} supports only n=1.", param="n")
    if body.get("logprobs"):
        raise UnsupportedError(f"{label} does not return logprobs.", param="logprobs")
    if body.get("audio") or "audio" in (body.get("modalities") or ()):
        raise UnsupportedError(f"{label} does not produce audio.", param="modalities")
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        raise UnsupportedError(
            f"{label} does not support response_format '{fmt.get('type')}'.", param="response_format"
        )
    for i, message in enumerate(body["messages"]):
        if message.get("tool_calls") or message.get("role") in ("tool", "function"):
            raise UnsupportedError(f"{label} does not support tool calls in messages.", param=f"messages[{i}]")


def prompt_messages(body: Mapping[str, Any]) -> list[dict[str, str]]:
    """The conversation as `{role, content}` with text content, ready for a chat template."""
    out = []
    for i, message in enumerate(body["messages"]):
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": text_of(message.get("content"), f"messages[{i}].content")})
    return out


def bare_prompt(messages: list[dict[str, str]], public_model: str) -> str:
    """Without a chat template the server applies its own: it gets the one user message's text."""
    if len(messages) != 1 or messages[0]["role"] != "user":
        raise UnsupportedError(
            f"The model '{public_model}' takes a single user message: its deployment names no chat_template "
            "to render a conversation with.",
            param="messages",
        )
    return messages[0]["content"]


def generate_parameters(body: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI options under their generate names, plus the client's non-OpenAI scalar extras (top_k, …)."""
    params: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens")
    if max_tokens is None:
        max_tokens = body.get("max_tokens")
    if max_tokens is not None:
        params["max_tokens"] = max_tokens
    for key in _GENERATE_OPTIONS:
        if body.get(key) is not None:
            params[key] = body[key]
    stop = body.get("stop")
    if stop is not None:
        params["stop"] = [stop] if isinstance(stop, str) else list(stop)
    for key, value in body.items():
        if key in _OPENAI_CHAT_FIELDS or key in params:
            continue
        if isinstance(value, str | int | float | bool) or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        ):
            params[key] = value
    return params


def to_generate(
    body: Mapping[str, Any], prompt: str, *, stream: bool, parameters_in: str = "parameters"
) -> dict[str, Any]:
    """A generate request. `parameters_in="body"` puts the options at the top level, where Triton maps them to
    the model's input tensors (TensorRT-LLM ensembles need `max_tokens` there)."""
    params = generate_parameters(body)
    if stream:
        params["stream"] = True
    if parameters_in == "body":
        return {"text_input": prompt, **params}
    request: dict[str, Any] = {"text_input": prompt}
    if params:
        request["parameters"] = params
    return request


_GENERATE = "generate response"


def _scalar(value: T | list[T] | None, where: str) -> T | None:
    # Triton returns an output tensor of one element as a scalar, some servers as a one-element list.
    if not isinstance(value, list):
        return value
    if len(value) != 1:
        raise OIPFormatError(f"the {_GENERATE} has {len(value)} elements at '{where}' where one was expected")
    return value[0]


def _generate(response: Any) -> tuple[shapes.GenerateResponse, str]:
    if not isinstance(response, dict):
        raise OIPFormatError(f"the {_GENERATE} is not a JSON object")
    typed = shapes.conform(response, shapes.GenerateResponse, _GENERATE)
    return typed, _scalar(typed.text_output, "text_output") or ""


def _generate_usage(response: shapes.GenerateResponse) -> dict[str, int] | None:
    prompt = _scalar(response.num_input_tokens, "num_input_tokens")
    completion = _scalar(response.num_output_tokens, "num_output_tokens")
    if prompt is not None and completion is not None:
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
    return None


def from_generate(response: Any) -> dict[str, Any]:
    """A `chat.completion` (without `id`/`created`/`model`) from a generate response."""
    typed, text = _generate(response)
    finish = _scalar(typed.finish_reason, "finish_reason")
    completion: dict[str, Any] = {
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "logprobs": None,
                "finish_reason": finish or "stop",
            }
        ],
    }
    usage = _generate_usage(typed)
    if usage is not None:
        completion["usage"] = usage
    return completion


def chunks_from_generate_event(event: Any) -> tuple[list[dict[str, Any]], bool]:
    """One `generate_stream` event as chunks, and whether it was the last (`done`, or a finish reason)."""
    if isinstance(event, dict) and "error" in event and "text_output" not in event:
        raise OIPStreamError(error_text(event))
    typed, text = _generate(event)
    finish = _scalar(typed.finish_reason, "finish_reason") or None
    if finish is None and typed.done is True:
        finish = "stop"
    chunks: list[dict[str, Any]] = []
    if text or finish is not None:
        delta = {"content": text} if text else {}
        chunks.append({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    usage = _generate_usage(typed)
    if usage is not None and finish is not None:
        chunks.append({"choices": [], "usage": usage})
    return chunks, finish is not None


# -- errors --------------------------------------------------------------------------------------------------------


def _detail_text(detail: list[Any]) -> str:
    """FastAPI's validation list (MLServer, KServe) as `loc: msg; …` (an item of another shape as its JSON)."""
    parts = []
    for item in detail:
        try:
            typed = msgspec.convert(item, shapes.ValidationDetail)
        except msgspec.ValidationError:
            parts.append(item if isinstance(item, str) else _json.dumps_text(item))
            continue
        loc = ".".join(str(x) for x in typed.loc or ())
        msg = typed.msg or _json.dumps_text(item)
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def error_text(body: Any) -> str:
    """The message of an OIP error body: `{"error": "..."}` (the spec), `{"detail": [...]}` (FastAPI-based
    servers), `{"error": {"message": ...}}`, or plain text."""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, str):
            return err
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return str(err["message"])
        detail = body.get("detail")
        if isinstance(detail, str):
            return detail
        if isinstance(detail, list):
            return _detail_text(detail)
        return _json.dumps_text(body)[:1000]
    if isinstance(body, str):
        return body.strip()[:1000]
    return _json.dumps_text(body)[:1000]


def error_body_text(raw: bytes) -> str:
    try:
        return error_text(_json.decode(raw)) if raw else ""
    except _json.DecodeError:
        return raw.decode("utf-8", "replace").strip()[:1000]
