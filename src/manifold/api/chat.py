"""`CreateChatCompletionRequest`, modelled in the spec's order with the spec's names.

These types validate; they are not what is forwarded. The gateway forwards the client's own JSON object (with
`model` mapped), so fields this module does not know (`top_k`, `repetition_penalty`, …) reach the upstream
untouched. Constraints follow OpenAI's openapi.yaml.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

NonEmptyStr = Annotated[str, Meta(min_length=1)]
FunctionName = Annotated[str, Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
MetadataKey = Annotated[str, Meta(max_length=64)]
MetadataValue = Annotated[str, Meta(max_length=512)]
Metadata = Annotated[dict[MetadataKey, MetadataValue], Meta(max_length=16)]


# -- content parts ---------------------------------------------------------------------------------------------


class TextPart(Struct, tag_field="type", tag="text"):
    text: str
    prompt_cache_breakpoint: dict[str, Any] | None = None


class ImageURL(Struct):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class ImagePart(Struct, tag_field="type", tag="image_url"):
    image_url: ImageURL
    prompt_cache_breakpoint: dict[str, Any] | None = None


class InputAudio(Struct):
    data: str
    format: Literal["wav", "mp3"]


class AudioPart(Struct, tag_field="type", tag="input_audio"):
    input_audio: InputAudio
    prompt_cache_breakpoint: dict[str, Any] | None = None


class FileRef(Struct):
    filename: str | None = None
    file_data: str | None = None
    file_id: str | None = None


class FilePart(Struct, tag_field="type", tag="file"):
    file: FileRef
    prompt_cache_breakpoint: dict[str, Any] | None = None


class RefusalPart(Struct, tag_field="type", tag="refusal"):
    refusal: str


UserContentPart = TextPart | ImagePart | AudioPart | FilePart
AssistantContentPart = TextPart | RefusalPart
TextParts = Annotated[list[TextPart], Meta(min_length=1)]


# -- tool calls in assistant messages --------------------------------------------------------------------------


class FunctionCall(Struct):
    name: str
    arguments: str


class FunctionToolCall(Struct, tag_field="type", tag="function"):
    id: str
    function: FunctionCall


class CustomCall(Struct):
    name: str
    input: str


class CustomToolCall(Struct, tag_field="type", tag="custom"):
    id: str
    custom: CustomCall


class AssistantAudioRef(Struct):
    id: str


# -- messages (tagged by `role`) -------------------------------------------------------------------------------


class DeveloperMessage(Struct, tag_field="role", tag="developer"):
    content: str | TextParts
    name: str | None = None


class SystemMessage(Struct, tag_field="role", tag="system"):
    content: str | TextParts
    name: str | None = None


class UserMessage(Struct, tag_field="role", tag="user"):
    content: str | Annotated[list[UserContentPart], Meta(min_length=1)]
    name: str | None = None


class AssistantMessage(Struct, tag_field="role", tag="assistant"):
    content: str | Annotated[list[AssistantContentPart], Meta(min_length=1)] | None = None
    refusal: str | None = None
    name: str | None = None
    audio: AssistantAudioRef | None = None
    tool_calls: list[FunctionToolCall | CustomToolCall] | None = None
    function_call: FunctionCall | None = None


class ToolMessage(Struct, tag_field="role", tag="tool"):
    content: str | TextParts
    tool_call_id: str


class FunctionMessage(Struct, tag_field="role", tag="function"):
    content: str | None
    name: str


Message = DeveloperMessage | SystemMessage | UserMessage | AssistantMessage | ToolMessage | FunctionMessage


# -- tools -----------------------------------------------------------------------------------------------------


class FunctionDefinition(Struct):
    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Struct, tag_field="type", tag="function"):
    function: FunctionDefinition


class CustomToolFormatText(Struct, tag_field="type", tag="text"):
    pass


class Grammar(Struct):
    definition: str
    syntax: Literal["lark", "regex"]


class CustomToolFormatGrammar(Struct, tag_field="type", tag="grammar"):
    grammar: Grammar


class CustomToolDefinition(Struct):
    name: str
    description: str | None = None
    format: CustomToolFormatText | CustomToolFormatGrammar | None = None


class CustomTool(Struct, tag_field="type", tag="custom"):
    custom: CustomToolDefinition


class NamedFunction(Struct):
    name: str


class NamedToolChoice(Struct, tag_field="type", tag="function"):
    function: NamedFunction


class NamedCustomToolChoice(Struct, tag_field="type", tag="custom"):
    custom: NamedFunction


class AllowedTools(Struct):
    mode: Literal["auto", "required"]
    tools: list[dict[str, Any]]


class AllowedToolsChoice(Struct, tag_field="type", tag="allowed_tools"):
    allowed_tools: AllowedTools


ToolChoice = Literal["none", "auto", "required"] | AllowedToolsChoice | NamedToolChoice | NamedCustomToolChoice


class FunctionsEntry(Struct):
    """Deprecated `functions` entry."""

    name: FunctionName
    description: str | None = None
    parameters: dict[str, Any] | None = None


# -- response_format -------------------------------------------------------------------------------------------


class ResponseFormatText(Struct, tag_field="type", tag="text"):
    pass


class JSONSchemaFormat(Struct):
    name: FunctionName
    description: str | None = None
    schema: dict[str, Any] | None = None
    strict: bool | None = None


class ResponseFormatJSONSchema(Struct, tag_field="type", tag="json_schema"):
    json_schema: JSONSchemaFormat


class ResponseFormatJSONObject(Struct, tag_field="type", tag="json_object"):
    pass


ResponseFormat = ResponseFormatText | ResponseFormatJSONSchema | ResponseFormatJSONObject


# -- the other option objects ----------------------------------------------------------------------------------


class StreamOptions(Struct):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


class AudioOutput(Struct):
    voice: str | dict[str, Any]
    format: Literal["wav", "aac", "mp3", "flac", "opus", "pcm16"]


class Prediction(Struct, tag_field="type", tag="content"):
    content: str | TextParts


class ApproximateLocation(Struct):
    city: str | None = None
    country: str | None = None
    region: str | None = None
    timezone: str | None = None


class UserLocation(Struct):
    type: Literal["approximate"]
    approximate: ApproximateLocation


class WebSearchOptions(Struct):
    user_location: UserLocation | None = None
    search_context_size: Literal["low", "medium", "high"] | None = None


class PromptCacheOptions(Struct):
    ttl: str | None = None
    mode: str | None = None


class FunctionCallOption(Struct):
    name: str


Temperature = Annotated[float, Meta(ge=0, le=2)]
TopP = Annotated[float, Meta(ge=0, le=1)]
Penalty = Annotated[float, Meta(ge=-2, le=2)]
Stop = str | Annotated[list[str], Meta(min_length=1, max_length=4)]
PositiveInt = Annotated[int, Meta(ge=1)]


class CreateModelResponseProperties(Struct, kw_only=True):
    """The spec's `ModelResponseProperties` + `CreateModelResponseProperties`: the fields chat completions and
    the Responses API share (first in both, as in the spec)."""

    # ModelResponseProperties
    metadata: Metadata | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    user: str | None = None
    safety_identifier: Annotated[str, Meta(max_length=64)] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    # CreateModelResponseProperties
    prompt_cache_options: PromptCacheOptions | None = None


class ChatCompletionRequest(CreateModelResponseProperties, kw_only=True):
    """`CreateChatCompletionRequest` (ModelResponseProperties + CreateModelResponseProperties + its own)."""

    # CreateChatCompletionRequest
    messages: Annotated[list[Message], Meta(min_length=1)]
    model: NonEmptyStr
    service_tier: Literal["auto", "default", "flex", "scale", "priority", "fast"] | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    max_completion_tokens: PositiveInt | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    web_search_options: WebSearchOptions | None = None
    response_format: ResponseFormat | None = None
    audio: AudioOutput | None = None
    store: bool | None = None
    moderation: dict[str, Any] | None = None
    stream: bool | None = None
    stop: Stop | None = None
    logit_bias: dict[str, Annotated[int, Meta(ge=-100, le=100)]] | None = None
    logprobs: bool | None = None
    max_tokens: PositiveInt | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    prediction: Prediction | None = None
    seed: int | None = None
    stream_options: StreamOptions | None = None
    tools: list[FunctionTool | CustomTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    function_call: Literal["none", "auto"] | FunctionCallOption | None = None
    functions: Annotated[list[FunctionsEntry], Meta(min_length=1, max_length=128)] | None = None


def cross_field_problems(req: ChatCompletionRequest) -> tuple[str, str] | None:
    """Rules between fields that a type cannot express: (param, message) of the first broken one."""
    if req.stream_options is not None and not req.stream:
        return "stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled."
    if req.top_logprobs is not None and req.top_logprobs > 0 and not req.logprobs:
        return "top_logprobs", "Invalid value for 'top_logprobs': 'logprobs' must be set to true to use it."
    if req.tool_choice is not None and not isinstance(req.tool_choice, str) and not req.tools:
        return (
            "tool_choice",
            "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are specified.",
        )
    if req.parallel_tool_calls is not None and not req.tools:
        return (
            "parallel_tool_calls",
            "Invalid value for 'parallel_tool_calls': only allowed when 'tools' are specified.",
        )
    for i, key in enumerate(req.logit_bias or {}):
        if not key.lstrip("-").isdigit():
            return f"logit_bias.{key}", f"Invalid key in 'logit_bias': {key!r} is not a token id (entry {i})."
    return None


request_decoder = msgspec.json.Decoder(ChatCompletionRequest)
