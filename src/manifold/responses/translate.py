"""Responses → the hub (chat completions): pure functions that never mutate their input.

`to_chat_body` builds the chat request a `CreateResponse` stands for: `instructions` become the first system
message, input items become chat messages (function calls join the assistant message before them, function
call outputs become tool messages, compaction items expand to their summary), and the options map to their chat
names (`text.format` → `response_format`, `max_output_tokens` → `max_completion_tokens`, `reasoning.effort` →
`reasoning_effort`). Reasoning items have no chat form and are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from manifold.api.response_request import (
    CreateResponseRequest,
    FormatJSONObject,
    FormatJSONSchema,
    FunctionTool,
    ToolChoiceAllowed,
    ToolChoiceFunction,
)
from manifold.errors import UnsupportedError
from manifold.mcp.manager import function_name

mcp_function_name = function_name  # the engine's name for it

# Expands a compaction item's `encrypted_content` (at `param`) to the summary it holds.
Expand = Callable[[str, str], str]
COMPACTION_PREFACE = "Summary of the earlier part of this conversation (compacted):\n"


def context_after_compaction(items: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """A compaction item replaces what came before it, except the user messages (kept verbatim, as
    `/responses/compact` returns them): the context a chain of responses stands for."""
    last = max((i for i, item in enumerate(items) if item.get("type") == "compaction"), default=-1)
    if last <= 0:
        return list(items)
    kept = [item for item in items[:last] if item.get("type") == "message" and item.get("role") == "user"]
    return [*kept, *items[last:]]


def items_to_messages(
    items: Sequence[dict[str, Any]], expand: Expand, params: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """Normalized input items (`api.responses.input_items`) as chat messages. `params[i]` names item i in errors."""
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = params[i] if params is not None else f"input[{i}]"
        kind = item.get("type")
        if kind == "message":
            messages.append(_message(item, param))
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"] = [*last["tool_calls"], call]
            elif last is not None and last["role"] == "assistant" and not last.get("tool_calls"):
                messages[-1] = {**last, "tool_calls": [call]}
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _tool_output(item, param)})
        elif kind == "mcp_call":
            # A tool the engine ran on an MCP server: the model sees it as its function call and the result.
            call = {
                "id": item["id"],
                "type": "function",
                "function": {
                    "name": mcp_function_name(item["server_label"], item["name"]),
                    "arguments": item["arguments"],
                },
            }
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
            messages.append({"role": "tool", "tool_call_id": item["id"], "content": mcp_call_result(item)})
        elif kind == "compaction":
            summary = expand(item["encrypted_content"], f"{param}.encrypted_content")
            messages.append({"role": "system", "content": COMPACTION_PREFACE + summary})
        # reasoning items: chat completions have no way to pass them back; mcp_list_tools, mcp_approval_request
        # and mcp_approval_response items are the engine's, not the model's
    return messages


def mcp_call_result(item: dict[str, Any]) -> str:
    """An `mcp_call` item's outcome as the model reads it: its output, or its error."""
    if item.get("output") is not None:
        return str(item["output"])
    error = item.get("error")
    if isinstance(error, dict):
        content = error.get("content")
        if isinstance(content, list):
            return "Error: " + "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return "Error: " + str(error.get("message") or content or "the tool call failed")
    return "Error: " + str(error or "the tool call failed")


def _message(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item["role"]
    parts = item["content"]
    if role == "assistant":
        texts = [p["text"] for p in parts if p["type"] in ("output_text", "input_text")]
        refusals = [p["refusal"] for p in parts if p["type"] == "refusal"]
        out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not refusals else None}
        if refusals:
            out["refusal"] = "".join(refusals)
        return out
    chat_parts = [_chat_part(p, f"{param}.content[{j}]") for j, p in enumerate(parts)]
    if all(p["type"] == "text" for p in chat_parts):
        content: Any = "".join(p["text"] for p in chat_parts)
    elif role != "user":
        raise UnsupportedError(f"Only text can be sent in a '{role}' message.", param=f"{param}.content")
    else:
        content = chat_parts
    return {"role": role, "content": content}


def _chat_part(part: dict[str, Any], param: str) -> dict[str, Any]:
    kind = part["type"]
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": part["text"]}
    if kind == "input_image":
        url = part.get("image_url")
        if not url:
            raise UnsupportedError(
                "Images by 'file_id' are not supported by this server; send 'image_url' (a URL or a data URL).",
                param=f"{param}.file_id",
            )
        detail = part.get("detail", "auto")
        return {"type": "image_url", "image_url": {"url": url, "detail": "high" if detail == "original" else detail}}
    if kind == "input_file":
        if part.get("file_url"):
            raise UnsupportedError(
                "Files by 'file_url' are not supported by this server; send 'file_data'.", param=f"{param}.file_url"
            )
        file = {k: part[k] for k in ("filename", "file_data", "file_id") if part.get(k) is not None}
        return {"type": "file", "file": file}
    if kind == "refusal":
        return {"type": "text", "text": part["refusal"]}
    raise UnsupportedError(f"Content of type '{kind}' is not supported here.", param=f"{param}.type")


def _tool_output(item: dict[str, Any], param: str) -> str:
    output = item["output"]
    if isinstance(output, str):
        return output
    texts = []
    for j, part in enumerate(output):
        if part["type"] != "input_text":
            raise UnsupportedError(
                "A function call output sent to a chat backend can only hold text.", param=f"{param}.output[{j}]"
            )
        texts.append(part["text"])
    return "".join(texts)


def chat_tools(tools: Sequence[FunctionTool]) -> list[dict[str, Any]]:
    out = []
    for tool in tools:
        function: dict[str, Any] = {"name": tool.name}
        if tool.description is not None:
            function["description"] = tool.description
        if tool.parameters is not None:
            function["parameters"] = tool.parameters
        if tool.strict is not None:
            function["strict"] = tool.strict
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any) -> Any:
    if isinstance(choice, str) or choice is None:
        return choice
    if isinstance(choice, ToolChoiceFunction):
        return {"type": "function", "function": {"name": choice.name}}
    assert isinstance(choice, ToolChoiceAllowed)
    tools = []
    for i, tool in enumerate(choice.tools):
        if tool.get("type") != "function" or not isinstance(tool.get("name"), str):
            raise UnsupportedError("Only function tools can be allowed here.", param=f"tool_choice.tools[{i}]")
        tools.append({"type": "function", "function": {"name": tool["name"]}})
    return {"type": "allowed_tools", "allowed_tools": {"mode": choice.mode, "tools": tools}}


def to_chat_body(
    req: CreateResponseRequest,
    messages: list[dict[str, Any]],
    tools: Sequence[FunctionTool],
    *,
    stream: bool,
) -> dict[str, Any]:
    """The chat request for a response (`messages` already hold the instructions and the whole context)."""
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if tools:
        body["tools"] = chat_tools(tools)
        if req.tool_choice is not None:
            body["tool_choice"] = chat_tool_choice(req.tool_choice)
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    elif req.tool_choice not in (None, "none", "auto"):
        body["tool_choice"] = chat_tool_choice(req.tool_choice)
    fmt = req.text.format if req.text is not None else None
    if isinstance(fmt, FormatJSONObject):
        body["response_format"] = {"type": "json_object"}
    elif isinstance(fmt, FormatJSONSchema):
        schema: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
        if fmt.description is not None:
            schema["description"] = fmt.description
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    if req.text is not None and req.text.verbosity is not None:
        body["verbosity"] = req.text.verbosity
    if req.max_output_tokens is not None:
        body["max_completion_tokens"] = req.max_output_tokens
    for key in ("temperature", "top_p", "user", "safety_identifier", "prompt_cache_key"):
        value = getattr(req, key)
        if value is not None:
            body[key] = value
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["reasoning_effort"] = req.reasoning.effort
    if req.service_tier is not None and req.service_tier != "ultrafast":
        body["service_tier"] = req.service_tier
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def instruction_messages(instructions: str | None) -> list[dict[str, Any]]:
    return [{"role": "system", "content": instructions}] if instructions else []


def response_usage(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat `usage` as the Responses `usage` (with the detail objects the schema requires)."""
    if not isinstance(usage, dict):
        return None
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    total = usage.get("total_tokens")
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": _int(prompt_details.get("cached_tokens")),
            "cache_write_tokens": _int(prompt_details.get("cache_write_tokens")),
        },
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": _int(completion_details.get("reasoning_tokens"))},
        "total_tokens": _int(total) if isinstance(total, int | float) else prompt + completion,
    }


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0
