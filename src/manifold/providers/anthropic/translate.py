"""OpenAI Chat Completions ↔ Anthropic Messages, as pure functions (they copy, never mutate, their input).

- `to_anthropic(body, deployment)`: a validated `CreateChatCompletionRequest` → a Messages API request body
  (`MessageCreateParams` in the `anthropic` SDK);
- `from_anthropic(message, public_model)`: an Anthropic `Message` → a `chat.completion`;
- `usage_from_anthropic`, `finish_reason`: shared with the stream parser.

What maps how (docs/backends-anthropic.md has the user's view):

- `system` and `developer` messages, wherever they are, become the top-level `system` (Anthropic has no
  system turn); `tool` messages become `tool_result` blocks in a user turn; consecutive turns of one role are
  merged, tool results first, as the Messages API requires;
- `response_format` becomes a forced tool (`json_schema`: named after the schema; `json_object`: the tool
  `json_object`) whose input is returned as the message content, with `finish_reason` "stop";
- `temperature`, `top_p` and the extra `top_k` are sent for API version 2023-06-01 (the default) and refused
  for 2026-10-21 and later, which removed them;
- parameters that would change what the client gets back and that Anthropic cannot honour (`n`>1,
  `logprobs`, audio, …) are refused with a 400 naming them, never silently dropped.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec

from manifold import _json
from manifold.api.chat_response import new_completion_id
from manifold.config import AnthropicDeployment
from manifold.errors import InvalidRequestError, UnsupportedError
from manifold.providers.anthropic import shapes

ANTHROPIC_VERSION = "2023-06-01"
# API version 2026-10-21 (the `anthropic` SDK 2.x default) rejects temperature, top_p and top_k at any value;
# 2023-06-01 takes them (temperature from 0 to 1).
SAMPLING_REMOVED_IN = "2026-10-21"
SAMPLING = ("temperature", "top_p", "top_k")
DEFAULT_MAX_TOKENS = 4096
JSON_OBJECT_TOOL = "json_object"
MAX_TEMPERATURE = 1.0
# Anthropic's image source media types (Base64ImageSourceParam.media_type).
IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
DOCUMENT_MEDIA_TYPES = frozenset({"application/pdf"})
# Parameters whose effect Anthropic cannot give: any value is a 400 naming it.
_UNSUPPORTED_WHEN_SET = ("audio", "prediction", "web_search_options", "functions", "function_call")
_RESPONSE_TOOL_DESCRIPTION = "Respond to the user with this tool: its input is your whole answer."
_JSON_OBJECT_DESCRIPTION = "Respond to the user with this tool: its input, a JSON object, is your whole answer."

_MESSAGE = "message"
_FINISH = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "refusal": "content_filter",
}


# -- request ---------------------------------------------------------------------------------------------------


def to_anthropic(body: dict[str, Any], deployment: AnthropicDeployment, model: str | None = None) -> dict[str, Any]:
    """The Messages API request for a validated chat completion request (`stream` included when asked);
    `model`: the upstream model when it is not the deployment's (a wildcard group's)."""
    public_model = str(body.get("model"))
    _refuse_unsupported(body, public_model)
    system, messages = _convert_messages(body["messages"], public_model)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is None:
        max_tokens = deployment.default_max_tokens or DEFAULT_MAX_TOKENS
    out: dict[str, Any] = {"model": model or deployment.upstream_model, "max_tokens": max_tokens, "messages": messages}
    if system is not None:
        out["system"] = system
    stop = body.get("stop")
    if stop is not None:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    out.update(_sampling(body, api_version(deployment), public_model))
    user = body.get("user") or body.get("safety_identifier")
    if user:
        out["metadata"] = {"user_id": user}
    tools, tool_choice = _convert_tools(body)
    if tools:
        out["tools"] = tools
        if tool_choice is not None:
            out["tool_choice"] = tool_choice
    if body.get("stream"):
        out["stream"] = True
    return out


def api_version(deployment: AnthropicDeployment) -> str:
    """The `anthropic-version` the deployment speaks (its `api_version`, else 2023-06-01)."""
    return deployment.api_version or ANTHROPIC_VERSION


def _sampling(body: dict[str, Any], version: str, public_model: str) -> dict[str, Any]:
    """temperature, top_p and top_k (top_k is not OpenAI's: an extra body field), as the API version allows."""
    out = {key: body[key] for key in SAMPLING if body.get(key) is not None}
    if out and version >= SAMPLING_REMOVED_IN:
        key = next(iter(out))
        raise UnsupportedError(
            f"The model '{public_model}' is served with Anthropic API version {version}, which does not accept "
            f"'{key}' (sampling parameters were removed in {SAMPLING_REMOVED_IN}).",
            param=key,
        )
    top_k = out.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise InvalidRequestError(
            f"Invalid 'top_k': expected a non-negative integer, got {top_k!r}.", param="top_k", code="invalid_value"
        )
    temperature = out.get("temperature")
    if temperature is not None and temperature > MAX_TEMPERATURE:
        raise InvalidRequestError(
            f"Invalid 'temperature': the model '{public_model}' (Anthropic) accepts values from 0 to 1, "
            f"got {temperature}.",
            param="temperature",
            code="invalid_value",
        )
    return out


def response_tool_name(body: dict[str, Any]) -> str | None:
    """The tool that carries the answer when `response_format` asks for JSON (None when there is none)."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or _named_choice(body.get("tool_choice")) is not None:
        return None
    if fmt.get("type") == "json_schema":
        return str(fmt["json_schema"]["name"])
    if fmt.get("type") == "json_object":
        return JSON_OBJECT_TOOL
    return None


def _refuse_unsupported(body: dict[str, Any], public_model: str) -> None:
    def refuse(param: str, what: str | None = None) -> UnsupportedError:
        return UnsupportedError(
            f"The model '{public_model}' is served by an Anthropic Messages backend, which does not support "
            f"{what or repr(param)}.",
            param=param,
        )

    n = body.get("n")
    if n is not None and n != 1:
        raise refuse("n", "'n' other than 1 (one choice per request)")
    if body.get("logprobs"):
        raise refuse("logprobs")
    if body.get("top_logprobs"):
        raise refuse("top_logprobs")
    if "audio" in (body.get("modalities") or ()):
        raise refuse("modalities", "audio output")
    for key in _UNSUPPORTED_WHEN_SET:
        if body.get(key) is not None:
            raise refuse(key)
    if body.get("logit_bias"):
        raise refuse("logit_bias")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key):
            raise refuse(key)


# -- messages --------------------------------------------------------------------------------------------------


def _convert_messages(
    messages: list[dict[str, Any]], public_model: str
) -> tuple[str | list[dict[str, Any]] | None, list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    turns: list[tuple[str, str | list[dict[str, Any]]]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message["role"]
        if role in ("system", "developer"):
            system.extend(_text_blocks(message["content"]))
        elif role == "user":
            turns.append(("user", _user_content(message["content"], f"{where}.content", public_model)))
        elif role == "assistant":
            content = _assistant_content(message, where, public_model)
            if content:
                turns.append(("assistant", content))
        elif role == "tool":
            turns.append(("user", [_tool_result(message)]))
        else:
            raise UnsupportedError(
                f"The model '{public_model}' (Anthropic) does not support '{role}' messages; use 'tool' messages.",
                param=f"{where}.role",
            )
    return _system_value(system), _merge_turns(turns)


def _system_value(blocks: list[dict[str, Any]]) -> str | list[dict[str, Any]] | None:
    if not blocks:
        return None
    if len(blocks) == 1 and "cache_control" not in blocks[0]:
        return str(blocks[0]["text"])
    return blocks


def _merge_turns(turns: list[tuple[str, str | list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """One message per run of same-role turns; in user turns `tool_result` blocks go first (a Messages API
    rule: text after the tool results of the turn)."""
    out: list[dict[str, Any]] = []
    for role, content in turns:
        if out and out[-1]["role"] == role:
            out[-1]["content"] = _as_blocks(out[-1]["content"]) + _as_blocks(content)
        else:
            out.append({"role": role, "content": content})
    for message in out:
        content = message["content"]
        if message["role"] == "user" and isinstance(content, list):
            results = [b for b in content if b.get("type") == "tool_result"]
            if results and len(results) < len(content):
                message["content"] = results + [b for b in content if b.get("type") != "tool_result"]
    return out


def _as_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return content


def _cached(block: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    # OpenAI's explicit prompt-cache breakpoint is Anthropic's cache_control marker on the same block.
    if part.get("prompt_cache_breakpoint") is not None:
        block["cache_control"] = {"type": "ephemeral"}
    return block


def _text_blocks(content: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    return [_cached({"type": "text", "text": part["text"]}, part) for part in content if part["text"]]


def _user_content(content: str | list[dict[str, Any]], where: str, public_model: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    blocks: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part["type"]
        at = f"{where}[{j}]"
        if kind == "text":
            if part["text"]:
                blocks.append(_cached({"type": "text", "text": part["text"]}, part))
        elif kind == "image_url":
            blocks.append(_cached(_image_block(part["image_url"]["url"], f"{at}.image_url.url"), part))
        elif kind == "file":
            blocks.append(_cached(_document_block(part["file"], f"{at}.file", public_model), part))
        else:
            raise UnsupportedError(
                f"The model '{public_model}' (Anthropic) does not support '{kind}' content parts.", param=f"{at}.type"
            )
    return blocks


def _data_url(url: str, param: str) -> tuple[str, str]:
    """(media type, base64 data) of a `data:<type>;base64,<data>` URL."""
    header, sep, data = url[5:].partition(",")
    params = header.split(";")
    if not sep or "base64" not in (p.strip().lower() for p in params[1:]) or not data:
        raise InvalidRequestError(
            f"Invalid '{param}': expected a base64 data URL (data:<media type>;base64,<data>).",
            param=param,
            code="invalid_value",
        )
    return params[0].lower(), data


def _image_block(url: str, param: str) -> dict[str, Any]:
    if url.startswith("data:"):
        media_type, data = _data_url(url, param)
        if media_type not in IMAGE_MEDIA_TYPES:
            raise InvalidRequestError(
                f"Invalid '{param}': image type {media_type or 'unknown'!r} is not supported; "
                f"use one of {', '.join(sorted(IMAGE_MEDIA_TYPES))}.",
                param=param,
                code="invalid_image_format",
            )
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequestError(
        f"Invalid '{param}': expected an https URL or a base64 data URL.", param=param, code="invalid_image_url"
    )


def _document_block(file: dict[str, Any], param: str, public_model: str) -> dict[str, Any]:
    data = file.get("file_data")
    if not data:
        raise UnsupportedError(
            f"The model '{public_model}' (Anthropic) takes files inline only: set 'file_data', not 'file_id'.",
            param=f"{param}.file_id" if file.get("file_id") else f"{param}.file_data",
        )
    media_type = "application/pdf"
    if data.startswith("data:"):
        media_type, data = _data_url(data, f"{param}.file_data")
    if media_type not in DOCUMENT_MEDIA_TYPES:
        raise UnsupportedError(
            f"The model '{public_model}' (Anthropic) reads PDF files only, got {media_type!r}.",
            param=f"{param}.file_data",
        )
    return {"type": "document", "source": {"type": "base64", "media_type": media_type, "data": data}}


def _assistant_content(message: dict[str, Any], where: str, public_model: str) -> str | list[dict[str, Any]]:
    content = message.get("content")
    tool_calls = message.get("tool_calls") or []
    if isinstance(content, str) and not tool_calls:
        return content
    blocks: list[dict[str, Any]] = []
    if isinstance(content, str):
        blocks.extend(_as_blocks(content))
    elif content:
        for part in content:
            text = part.get("text") if part["type"] == "text" else part.get("refusal")
            if text:
                blocks.append({"type": "text", "text": text})
    for j, call in enumerate(tool_calls):
        at = f"{where}.tool_calls[{j}]"
        if call.get("type", "function") != "function":
            raise UnsupportedError(
                f"The model '{public_model}' (Anthropic) supports function tool calls only.", param=f"{at}.type"
            )
        function = call["function"]
        blocks.append(
            {
                "type": "tool_use",
                "id": call["id"],
                "name": function["name"],
                "input": _arguments(function["arguments"], f"{at}.function.arguments"),
            }
        )
    return blocks


def _arguments(arguments: str, param: str) -> dict[str, Any]:
    if not arguments.strip():
        return {}
    try:
        value = _json.decode(arguments)
    except msgspec.DecodeError:
        value = None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"Invalid '{param}': Anthropic needs tool call arguments that are a JSON object.",
            param=param,
            code="invalid_value",
        )
    return value


def _tool_result(message: dict[str, Any]) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message["tool_call_id"]}
    content = message["content"]
    if isinstance(content, str):
        if content:
            block["content"] = content
    else:
        texts = [{"type": "text", "text": part["text"]} for part in content if part["text"]]
        if texts:
            block["content"] = texts
    return block


# -- tools and response_format ---------------------------------------------------------------------------------


def _named_choice(choice: Any) -> str | None:
    if isinstance(choice, dict) and choice.get("type") == "function":
        return str(choice["function"]["name"])
    return None


def _convert_tools(body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    tools = [_tool(tool, i, str(body.get("model"))) for i, tool in enumerate(body.get("tools") or ())]
    choice = body.get("tool_choice")
    # OpenAI's choice → Anthropic's type: auto | any | tool | none (None: not given).
    kind: str | None
    name: str | None = None
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        allowed = choice["allowed_tools"]
        names = {(t.get("function") or {}).get("name") for t in allowed["tools"]}
        tools = [t for t in tools if t["name"] in names]
        kind = "any" if allowed["mode"] == "required" else "auto"
    elif isinstance(choice, dict) and choice.get("type") == "custom":
        raise UnsupportedError("Anthropic backends support function tools only.", param="tool_choice")
    elif isinstance(choice, dict):
        kind, name = "tool", _named_choice(choice)
    else:
        kind = {"auto": "auto", "required": "any", "none": "none", None: None}[choice]
    answer = _response_tool(body, {t["name"] for t in tools})
    if answer is not None and kind != "tool":
        kind = "any" if tools and kind != "none" else "tool"
        name = answer["name"] if kind == "tool" else None
        tools = [*tools, answer]
    if not tools:
        return [], None
    parallel = body.get("parallel_tool_calls")
    if kind is None:
        if parallel is not False:
            return tools, None
        kind = "auto"
    out: dict[str, Any] = {"type": kind}
    if name is not None:
        out["name"] = name
    if parallel is False and kind != "none":
        out["disable_parallel_tool_use"] = True
    return tools, out


def _tool(tool: dict[str, Any], i: int, public_model: str) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise UnsupportedError(
            f"The model '{public_model}' (Anthropic) supports function tools only, not '{tool.get('type')}'.",
            param=f"tools[{i}].type",
        )
    function = tool["function"]
    out: dict[str, Any] = {"name": function["name"]}
    if function.get("description"):
        out["description"] = function["description"]
    out["input_schema"] = _input_schema(function.get("parameters"))
    if function.get("strict"):
        out["strict"] = True
    return out


def _input_schema(parameters: dict[str, Any] | None) -> dict[str, Any]:
    # Anthropic requires an object schema with `type`; OpenAI allows omitting the parameters (no arguments).
    if not parameters:
        return {"type": "object", "properties": {}}
    if "type" not in parameters:
        return {"type": "object", **parameters}
    return parameters


def _response_tool(body: dict[str, Any], taken: set[str]) -> dict[str, Any] | None:
    name = response_tool_name(body)
    if name is None:
        return None
    fmt = body["response_format"]
    param = "response_format.json_schema.name" if fmt["type"] == "json_schema" else "response_format"
    if name in taken:
        raise InvalidRequestError(
            f"Invalid '{param}': {name!r} is also the name of a tool; Anthropic backends answer a response_format "
            "through a tool of that name, so the names must differ.",
            param=param,
            code="invalid_value",
        )
    if fmt["type"] == "json_object":
        return {"name": name, "description": _JSON_OBJECT_DESCRIPTION, "input_schema": {"type": "object"}}
    spec = fmt["json_schema"]
    schema = spec.get("schema") or {"type": "object"}
    if schema.get("type") != "object":
        raise InvalidRequestError(
            "Invalid 'response_format.json_schema.schema': Anthropic backends need an object schema at the root "
            '("type": "object").',
            param="response_format.json_schema.schema",
            code="invalid_value",
        )
    out: dict[str, Any] = {
        "name": name,
        "description": spec.get("description") or _RESPONSE_TOOL_DESCRIPTION,
        "input_schema": schema,
    }
    if spec.get("strict"):
        out["strict"] = True
    return out


# -- response --------------------------------------------------------------------------------------------------


def finish_reason(stop_reason: Any, has_tool_calls: bool) -> str:
    if stop_reason == "tool_use":
        return "tool_calls" if has_tool_calls else "stop"
    return _FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def usage_from_anthropic(usage: shapes.Usage | None) -> dict[str, Any] | None:
    """OpenAI usage: prompt tokens = input + cache read + cache write (Anthropic counts them apart)."""
    if usage is None:
        return None
    read = usage.cache_read_input_tokens or 0
    written = usage.cache_creation_input_tokens or 0
    prompt = (usage.input_tokens or 0) + read + written
    completion = usage.output_tokens or 0
    details: dict[str, int] = {"cached_tokens": read}
    if written:
        details["cache_write_tokens"] = written
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": details,
    }
    thinking = usage.output_tokens_details.thinking_tokens if usage.output_tokens_details is not None else None
    if thinking:
        out["completion_tokens_details"] = {"reasoning_tokens": thinking}
    return out


def arguments_text(value: Any) -> str:
    return _json.dumps_text(value if isinstance(value, dict) else {})


def from_anthropic(
    message: Any, public_model: str, *, response_tool: str | None = None, created: int | None = None
) -> dict[str, Any]:
    """A `chat.completion` for an Anthropic `Message` (decoded JSON), or `UpstreamShapeError` (502) when it does
    not fit the Messages schema. Text blocks are joined into `content`; `tool_use` blocks become `tool_calls`,
    except the `response_tool`'s, whose input is the content. Thinking and server-tool blocks have no Chat
    Completions form and are left out."""
    typed = shapes.conform(message, shapes.Message, _MESSAGE)
    if typed.type != "message":
        raise shapes.shape_error(_MESSAGE, f"at 'type': expected 'message', got {typed.type!r}")
    texts: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    for i, raw in enumerate(typed.content):
        kind, block = shapes.typed_part(raw, shapes.BLOCKS, _MESSAGE, f"content[{i}]")
        if kind == "text":
            texts.append(block.text)
        elif kind == "tool_use" and response_tool is not None and block.name == response_tool:
            texts.append(arguments_text(block.input))
        elif kind == "tool_use":
            tool_calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": arguments_text(block.input)},
                }
            )
    reply: dict[str, Any] = {
        "role": "assistant",
        "content": "".join(texts) if texts or not tool_calls else None,
        "refusal": None,
    }
    if tool_calls:
        reply["tool_calls"] = tool_calls
    completion: dict[str, Any] = {
        "id": typed.id if typed.id is not None else new_completion_id(),
        "object": "chat.completion",
        "created": created if created is not None else int(time.time()),
        "model": public_model,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": finish_reason(typed.stop_reason, bool(tool_calls)),
            }
        ],
    }
    usage = usage_from_anthropic(typed.usage)
    if usage is not None:
        completion["usage"] = usage
    return completion
