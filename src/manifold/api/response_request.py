"""The Responses API on the wire: `CreateResponse` (and the token-count and compact bodies), modelled in the spec's
order with the spec's names and constraints, and the input items, checked one by one and normalized into the
item objects `GET /responses/{id}/input_items` lists.

Input items are a union whose members are told apart by `type`, which a message may leave out (`{"role":
"user", "content": "hi"}`), so they are dispatched by hand and each is validated by its own type; a problem
names its place (`input[2].content[0].image_url`) like any other parameter.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal, get_args

import msgspec
from msgspec import Meta, Struct

from manifold.api.chat import (
    CreateModelResponseProperties,
    FunctionName,
    NonEmptyStr,
    PromptCacheOptions,
)
from manifold.api.validation import translate
from manifold.errors import InvalidRequestError, UnsupportedError

ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]
Include = Literal[
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
]
INCLUDE_VALUES: tuple[str, ...] = get_args(Include)


# -- option objects ---------------------------------------------------------------------------------------------


class Reasoning(Struct, kw_only=True):
    mode: str | None = None
    effort: ReasoningEffort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    context: Literal["auto", "current_turn", "all_turns"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class FormatText(Struct, tag_field="type", tag="text"):
    pass


class FormatJSONSchema(Struct, tag_field="type", tag="json_schema", kw_only=True):
    name: FunctionName
    schema: dict[str, Any]
    description: str | None = None
    strict: bool | None = None


class FormatJSONObject(Struct, tag_field="type", tag="json_object"):
    pass


class TextParam(Struct, kw_only=True):
    format: FormatText | FormatJSONSchema | FormatJSONObject | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class StreamOptions(Struct, kw_only=True):
    include_obfuscation: bool | None = None


class ContextManagement(Struct, kw_only=True):
    type: str
    compact_threshold: Annotated[int, Meta(ge=1000)] | None = None


class FunctionTool(Struct, tag_field="type", tag="function", kw_only=True):
    name: FunctionName
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    description: str | None = None


class McpToolFilter(Struct, kw_only=True, forbid_unknown_fields=True):
    tool_names: list[str] | None = None
    read_only: bool | None = None


class McpApprovalFilter(Struct, kw_only=True, forbid_unknown_fields=True):
    always: McpToolFilter | None = None
    never: McpToolFilter | None = None


class McpTool(Struct, tag_field="type", tag="mcp", kw_only=True):
    """`MCPTool`: a Model Context Protocol server whose tools the engine runs for the model (docs/mcp.md)."""

    server_label: NonEmptyStr
    server_url: str | None = None
    connector_id: str | None = None
    tunnel_id: str | None = None
    authorization: str | None = None
    server_description: str | None = None
    headers: dict[str, str] | None = None
    allowed_tools: list[str] | McpToolFilter | None = None
    allowed_callers: list[Any] | None = None
    require_approval: Literal["always", "never"] | McpApprovalFilter | None = None
    defer_loading: bool | None = None


class ToolChoiceFunction(Struct, tag_field="type", tag="function"):
    name: str


class ToolChoiceAllowed(Struct, tag_field="type", tag="allowed_tools"):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction | ToolChoiceAllowed
Input = str | list[dict[str, Any]]


# -- request bodies ---------------------------------------------------------------------------------------------


class CreateResponseRequest(CreateModelResponseProperties, kw_only=True):
    """`CreateResponse` (CreateModelResponseProperties + ResponseProperties + its own), in the spec's order."""

    # ResponseProperties
    previous_response_id: str | None = None
    model: NonEmptyStr
    background: bool | None = None
    max_tool_calls: int | None = None
    text: TextParam | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice | None = None
    prompt: dict[str, Any] | None = None
    # CreateResponse
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    reasoning: Reasoning | None = None
    input: Input | None = None
    include: list[Include] | None = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    instructions: str | None = None
    moderation: dict[str, Any] | None = None
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    conversation: str | dict[str, Any] | None = None
    context_management: Annotated[list[ContextManagement], Meta(min_length=1)] | None = None
    max_output_tokens: Annotated[int, Meta(ge=16)] | None = None


class TokenCountRequest(Struct, kw_only=True):
    """`TokenCountsBody` (nothing is required)."""

    model: str | None = None
    input: Input | None = None
    previous_response_id: str | None = None
    tools: list[dict[str, Any]] | None = None
    text: TextParam | None = None
    reasoning: Reasoning | None = None
    truncation: Literal["auto", "disabled"] | None = None
    instructions: str | None = None
    personality: str | None = None
    conversation: str | dict[str, Any] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None


class CompactRequest(Struct, kw_only=True):
    """`CompactResponseMethodPublicBody` (`model` is required)."""

    model: NonEmptyStr
    input: Input | None = None
    previous_response_id: str | None = None
    instructions: str | None = None
    prompt_cache_key: Annotated[str, Meta(max_length=64)] | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    prompt_cache_options: PromptCacheOptions | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast", "ultrafast"] | None = None


def check_create(req: CreateResponseRequest) -> None:
    """Rules between fields that a type cannot express (a 400 naming the parameter)."""
    if req.previous_response_id is not None and req.conversation is not None:
        raise InvalidRequestError(
            "Mutually exclusive parameters: 'previous_response_id' and 'conversation' cannot be used together.",
            param="conversation",
            code="mutually_exclusive_parameters",
        )
    if req.background and req.store is False:
        raise InvalidRequestError(
            "Background responses must be stored: 'background' requires 'store' to be true.",
            param="background",
            code="invalid_value",
        )
    if req.stream_options is not None and not req.stream:
        raise InvalidRequestError(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    for i, cm in enumerate(req.context_management or ()):
        if cm.type != "compaction":
            raise InvalidRequestError(
                f"Invalid value: '{cm.type}'. Supported values are: 'compaction'.",
                param=f"context_management[{i}].type",
                code="invalid_value",
            )


def check_translatable(req: CreateResponseRequest) -> None:
    """What the engine cannot do on a chat backend (a native Responses upstream may)."""
    if req.conversation is not None:
        raise UnsupportedError(
            "Conversations are not supported by this server; chain responses with 'previous_response_id'.",
            param="conversation",
        )
    if req.prompt is not None:
        raise UnsupportedError("Prompt templates ('prompt') are not supported by this server.", param="prompt")
    if req.input is None and req.previous_response_id is None:
        raise InvalidRequestError(
            "Missing required parameter: 'input'.", param="input", code="missing_required_parameter"
        )


def function_tools(tools: list[dict[str, Any]] | None, where: str = "tools") -> list[FunctionTool]:
    """The request's tools, each a function tool (the only kind a chat backend can run)."""
    out: list[FunctionTool] = []
    for i, tool in enumerate(tools or ()):
        if not isinstance(tool, dict):
            raise InvalidRequestError(
                f"Invalid type for '{where}[{i}]': expected an object.", param=f"{where}[{i}]", code="invalid_type"
            )
        kind = tool.get("type")
        if kind == "mcp":
            continue  # `mcp_tools`
        if kind != "function":
            raise UnsupportedError(
                f"Tool type '{kind}' is not supported by this server; only 'function' and 'mcp' tools are.",
                param=f"{where}[{i}].type",
            )
        out.append(_convert(tool, FunctionTool, f"{where}[{i}]"))
    return out


def mcp_tools(tools: list[dict[str, Any]] | None, where: str = "tools") -> list[tuple[int, McpTool]]:
    """The request's `mcp` tools, each with its index in `tools` (for errors naming it)."""
    out: list[tuple[int, McpTool]] = []
    for i, tool in enumerate(tools or ()):
        if isinstance(tool, dict) and tool.get("type") == "mcp":
            out.append((i, _convert(tool, McpTool, f"{where}[{i}]")))
    return out


# -- input items -------------------------------------------------------------------------------------------------


class InputText(Struct, tag_field="type", tag="input_text", kw_only=True):
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = None


class InputImage(Struct, tag_field="type", tag="input_image", kw_only=True):
    image_url: str | None = None
    file_id: str | None = None
    detail: Literal["auto", "low", "high", "original"] = "auto"
    prompt_cache_breakpoint: dict[str, Any] | None = None


class InputFile(Struct, tag_field="type", tag="input_file", kw_only=True):
    file_id: str | None = None
    filename: str | None = None
    file_data: str | None = None
    file_url: str | None = None
    detail: str | None = None
    prompt_cache_breakpoint: dict[str, Any] | None = None


class OutputText(Struct, tag_field="type", tag="output_text", kw_only=True):
    text: str
    annotations: list[dict[str, Any]] = []
    logprobs: list[dict[str, Any]] | None = None


class Refusal(Struct, tag_field="type", tag="refusal", kw_only=True):
    refusal: str


ContentPart = InputText | InputImage | InputFile | OutputText | Refusal


class MessageItem(Struct, kw_only=True):
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]
    type: Literal["message"] = "message"
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: str | None = None


class FunctionCallItem(Struct, kw_only=True):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    namespace: str | None = None


class FunctionCallOutputItem(Struct, kw_only=True):
    type: Literal["function_call_output"]
    call_id: Annotated[str, Meta(min_length=1, max_length=64)]
    output: str | list[InputText | InputImage | InputFile]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    name: str | None = None


class ReasoningItem(Struct, kw_only=True):
    type: Literal["reasoning"]
    summary: list[dict[str, Any]]
    id: str | None = None
    encrypted_content: str | None = None
    content: list[dict[str, Any]] | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class McpApprovalResponseItem(Struct, kw_only=True):
    type: Literal["mcp_approval_response"]
    approval_request_id: NonEmptyStr
    approve: bool
    id: str | None = None
    reason: str | None = None
    request_id: str | None = None


class CompactionItem(Struct, kw_only=True):
    type: Literal["compaction"]
    encrypted_content: Annotated[str, Meta(max_length=20_971_520)]
    id: str | None = None
    created_by: str | None = None


_ITEM_TYPES: dict[str, type[Struct]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
    "compaction": CompactionItem,
    "mcp_approval_response": McpApprovalResponseItem,
}
_ID_PREFIXES = {
    "message": "msg_",
    "function_call": "fc_",
    "function_call_output": "fco_",
    "reasoning": "rs_",
    "compaction": "cmp_",
    "mcp_approval_response": "mcpa_",
}


def new_id(prefix: str) -> str:
    return prefix + os.urandom(16).hex()


def input_items(raw: Input | None, where: str = "input") -> list[dict[str, Any]]:
    """The request's `input` as normalized items: each with its `id` (given, or a new one), messages with their
    content as parts, assistant messages as output messages, as `GET /responses/{id}/input_items` lists them."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [_message("user", [{"type": "input_text", "text": raw}], None)]
    out: list[dict[str, Any]] = []
    for i, item in enumerate(raw):
        param = f"{where}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequestError(
                f"Invalid type for '{param}': expected an object.", param=param, code="invalid_type"
            )
        kind = item.get("type", "message" if "role" in item else None)
        typ = _ITEM_TYPES.get(kind) if isinstance(kind, str) else None
        if typ is None:
            if kind in ("item_reference", "compaction_trigger") or isinstance(kind, str):
                raise UnsupportedError(
                    f"Input items of type '{kind}' are not supported by this server.", param=f"{param}.type"
                )
            raise InvalidRequestError(
                f"Missing required parameter: '{param}.type'.", param=f"{param}.type", code="missing_required_parameter"
            )
        parsed = _convert(item, typ, param)
        out.append(_normalize(parsed))
    return out


def _convert(item: dict[str, Any], typ: type[Any], param: str) -> Any:
    try:
        return msgspec.convert(item, typ)
    except msgspec.ValidationError as exc:
        message = str(exc)
        # Name the parameter from the request's root: `$.content[0]` of input[2] is `input[2].content[0]`.
        if " - at `$" in message:
            message = message.replace(" - at `$", f" - at `$.{param}", 1)
        else:
            message += f" - at `$.{param}`"
        raise _rooted(message, param, item) from None


def _rooted(message: str, param: str, item: dict[str, Any]) -> InvalidRequestError:
    # `translate` looks values up in the data it is given; rebuild the path from the root for it.
    root: Any = item
    for part in reversed(_path_parts(param)):
        root = {part: root} if isinstance(part, str) else _list_at(part, root)
    return translate(message, root)


def _path_parts(param: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in param.replace("]", "").split("."):
        name, *indices = piece.split("[")
        if name:
            parts.append(name)
        parts.extend(int(i) for i in indices)
    return parts


def _list_at(index: int, value: Any) -> list[Any]:
    out: list[Any] = [None] * index
    out.append(value)
    return out


def _part(part: Any) -> dict[str, Any]:
    if isinstance(part, InputText):
        return {"type": "input_text", "text": part.text}
    if isinstance(part, InputImage):
        out: dict[str, Any] = {"type": "input_image", "detail": part.detail}
        if part.image_url is not None:
            out["image_url"] = part.image_url
        if part.file_id is not None:
            out["file_id"] = part.file_id
        return out
    if isinstance(part, InputFile):
        return {k: v for k, v in msgspec.to_builtins(part).items() if v is not None} | {"type": "input_file"}
    if isinstance(part, OutputText):
        return {"type": "output_text", "text": part.text, "annotations": part.annotations, "logprobs": []}
    assert isinstance(part, Refusal)
    return {"type": "refusal", "refusal": part.refusal}


def _message(role: str, content: list[dict[str, Any]], item_id: str | None) -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id or new_id("msg_"),
        "status": "completed",
        "role": role,
        "content": content,
    }


def _normalize(parsed: Any) -> dict[str, Any]:
    if isinstance(parsed, MessageItem):
        if isinstance(parsed.content, str):
            kind = "output_text" if parsed.role == "assistant" else "input_text"
            parts: list[dict[str, Any]] = [{"type": kind, "text": parsed.content}]
            if kind == "output_text":
                parts[0] |= {"annotations": [], "logprobs": []}
        else:
            parts = [_part(p) for p in parsed.content]
            if parsed.role == "assistant":
                # An assistant message is listed as an output message: its text parts are output_text.
                parts = [
                    {"type": "output_text", "text": p["text"], "annotations": [], "logprobs": []}
                    if p["type"] == "input_text"
                    else p
                    for p in parts
                ]
        return _message(parsed.role, parts, parsed.id)
    builtins: dict[str, Any] = {k: v for k, v in msgspec.to_builtins(parsed).items() if v is not None}
    kind = builtins["type"]
    builtins.setdefault("id", new_id(_ID_PREFIXES[kind]))
    if kind in ("function_call", "function_call_output"):
        builtins.setdefault("status", "completed")
    return builtins
