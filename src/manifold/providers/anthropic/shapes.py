"""The shapes an Anthropic Messages answer and its stream events must have before the translators read them.

Strict where the `anthropic` SDK is: a field that is present has the SDK's type (`content` a list of blocks,
every block a `type` string, a text block's `text` a string, a tool_use block's `input` an object, token counts
integers, an event's `index` an integer). Lenient where the SDK and the versioning policy are: unknown fields,
block types and event types are ignored, and fields that Messages-compatible servers leave out (`id`, `usage`,
`model`) may be absent. What does not fit is `UpstreamShapeError` (a 502, or a stream's error event) naming the
path, e.g. "at 'content[0].text': Expected `str`, got `int`".

Blocks and deltas are checked by their `type` one at a time (msgspec's tagged unions refuse unknown tags, which
the SDK skips), and only the types the translators read are decoded further.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

from manifold.api.upstream import UpstreamShapeError

T = TypeVar("T")
Object = dict[str, Any]


class OutputTokensDetails(Struct, gc=False):
    thinking_tokens: int | None = None


class Usage(Struct, gc=False):
    # The SDK requires input/output counts in a Message's usage and output_tokens in message_delta's: absent ones
    # are taken as unknown, as servers that speak the Messages API leave them out.
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    output_tokens_details: OutputTokensDetails | None = None


class Message(Struct, gc=False):
    content: list[Object]
    id: str | None = None
    type: str | None = None
    role: str | None = None
    model: str | None = None
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: Usage | None = None


class StartMessage(Struct, gc=False):
    # message_start's message: its content is empty (blocks come as events).
    id: str | None = None
    content: list[Object] | None = None
    usage: Usage | None = None


# -- content blocks and deltas -------------------------------------------------------------------------------------


class Block(Struct, gc=False):
    """Any block: only its `type` is read (thinking, server tools, and types added later)."""

    type: str


class TextBlock(Struct, gc=False):
    text: str = ""


class ToolUseBlock(Struct, gc=False):
    id: str
    name: str
    input: Object


class ThinkingBlock(Struct, gc=False):
    thinking: str


class TextDelta(Struct, gc=False):
    text: str


class InputJSONDelta(Struct, gc=False):
    partial_json: str


class ThinkingDelta(Struct, gc=False):
    thinking: str


class SignatureDelta(Struct, gc=False):
    signature: str


BLOCKS: dict[str, type[Any]] = {
    "text": TextBlock,
    "tool_use": ToolUseBlock,
    "thinking": ThinkingBlock,
}
DELTAS: dict[str, type[Any]] = {
    "text_delta": TextDelta,
    "input_json_delta": InputJSONDelta,
    "thinking_delta": ThinkingDelta,
    "signature_delta": SignatureDelta,
}


# -- stream events -------------------------------------------------------------------------------------------------


class MessageStart(Struct, gc=False):
    message: StartMessage


class BlockStart(Struct, gc=False):
    index: int
    content_block: Object


class BlockDelta(Struct, gc=False):
    index: int
    delta: Object


class BlockStop(Struct, gc=False):
    index: int


class MessageDeltaBody(Struct, gc=False):
    stop_reason: str | None = None
    stop_sequence: str | None = None


class MessageDelta(Struct, gc=False):
    delta: MessageDeltaBody
    usage: Usage | None = None


class ErrorBody(Struct, gc=False):
    type: str | None = None
    message: str | None = None


class ErrorEvent(Struct, gc=False):
    error: ErrorBody | None = None


# Each event type the translators read: (its shape, what an error calls it).
EVENTS: dict[str, tuple[type[Any], str]] = {
    kind: (typ, f"{kind!r} stream event")
    for kind, typ in (
        ("message_start", MessageStart),
        ("content_block_start", BlockStart),
        ("content_block_delta", BlockDelta),
        ("content_block_stop", BlockStop),
        ("message_delta", MessageDelta),
        ("error", ErrorEvent),
    )
}


# -- checking ------------------------------------------------------------------------------------------------------

_AT = re.compile(r" - at `\$(.*)`$")


def conform(data: Any, typ: type[T], what: str, at: str = "") -> T:
    """`data` (decoded JSON) as `typ`, or `UpstreamShapeError` naming the path (below `at`) that does not fit."""
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        raise shape_error(what, str(exc), at) from None


def typed_part(part: Object, table: dict[str, type[Any]], what: str, at: str) -> tuple[str, Any]:
    """(type, the typed part) of a block or delta; the typed part is None for a type the table does not know."""
    kind = part.get("type")
    if not isinstance(kind, str):
        kind = conform(part, Block, what, at).type  # raises, naming `type`
    typ = table.get(kind)
    return kind, (conform(part, typ, what, at) if typ is not None else None)


def shape_error(what: str, problem: str, at: str = "") -> UpstreamShapeError:
    m = _AT.search(problem)
    if m is not None:
        path = (at + m.group(1)).lstrip(".") or "the top level"
        problem = f"at '{path}': {problem[: m.start()]}"
    elif at:
        problem = f"at '{at.lstrip('.')}': {problem}"
    return UpstreamShapeError(f"The upstream's {what} does not fit the Anthropic Messages schema: {problem}.")
