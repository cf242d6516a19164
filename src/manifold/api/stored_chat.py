"""Stored chat completions on the wire: list query parameters (the Responses API's lists use them too), the
update body, cursor pages, stored messages.

Query parameters arrive in the SDKs' bracket style (`metadata%5Bk1%5D=v1` is `metadata[k1]=v1`); a bad value
answers 400 naming the parameter, as a bad body field does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple
from urllib.parse import parse_qsl

from msgspec import Struct

from manifold.api.chat import Metadata
from manifold.errors import InvalidRequestError

Order = Literal["asc", "desc"]
MAX_LIMIT = 100
DEFAULT_LIMIT = 20
# content_parts may only hold these (ChatCompletionMessageList items: text and image_url parts).
_STORED_PART_KEYS = {"text": "text", "image_url": "image_url"}


class ListParams(NamedTuple):
    after: str | None
    limit: int
    order: Order
    model: str | None
    metadata: dict[str, str]


class UpdateChatCompletionRequest(Struct, kw_only=True):
    """The body of `POST /chat/completions/{completion_id}`: `metadata` is required (null clears it)."""

    metadata: Metadata | None


def parse_list_params(
    query_string: bytes,
    *,
    filters: bool,
    order: Order = "asc",
    other: Callable[[str, str], None] | None = None,
) -> ListParams:
    """A cursor list's query: `after`, `limit` (1 to 100), `order` (asc|desc, `order` when absent), with `filters`
    also `model` and `metadata[key]`; any other parameter goes to `other` (to check), else is ignored."""
    after: str | None = None
    limit = DEFAULT_LIMIT
    model: str | None = None
    metadata: dict[str, str] = {}
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="replace")
    for name, value in pairs:
        if name == "after":
            after = value or None
        elif name == "limit":
            limit = _limit(value)
        elif name == "order":
            if value not in ("asc", "desc"):
                raise InvalidRequestError(
                    f"Invalid value for 'order': {value!r}. Supported values are: 'asc' and 'desc'.",
                    param="order",
                    code="invalid_value",
                )
            order = "asc" if value == "asc" else "desc"
        elif filters and name == "model":
            model = value or None
        elif filters and name.startswith("metadata[") and name.endswith("]"):
            key = name[len("metadata[") : -1]
            if not key:
                raise InvalidRequestError(
                    "Invalid 'metadata': filter keys are sent as metadata[key]=value.", param="metadata"
                )
            metadata[key] = value
        elif other is not None:
            other(name, value)
    return ListParams(after, limit, order, model, metadata)


def _limit(value: str) -> int:
    try:
        limit = int(value)
    except ValueError:
        raise InvalidRequestError(
            f"Invalid type for 'limit': expected an integer, but got {value!r} instead.",
            param="limit",
            code="invalid_type",
        ) from None
    if limit < 1:
        raise InvalidRequestError(
            f"Invalid 'limit': integer below minimum value. Expected a value >= 1, but got {limit} instead.",
            param="limit",
            code="integer_below_min_value",
        )
    if limit > MAX_LIMIT:
        raise InvalidRequestError(
            f"Invalid 'limit': integer above maximum value. Expected a value <= {MAX_LIMIT}, but got {limit} instead.",
            param="limit",
            code="integer_above_max_value",
        )
    return limit


def cursor_page(items: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    """A cursor page. The spec requires string `first_id`/`last_id`; an empty page has no ids to give, so
    they are null there (both SDKs ignore them and page on `data` and `has_more`)."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": has_more,
    }


def deleted(completion_id: str) -> dict[str, Any]:
    return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}


def message_id(completion_id: str, position: int) -> str:
    return f"{completion_id}-{position}"


def message_position(completion_id: str, after: str) -> int:
    """The position named by a message id (`<completion_id>-<n>`) used as the `after` cursor."""
    prefix = completion_id + "-"
    tail = after[len(prefix) :] if after.startswith(prefix) else ""
    if not tail.isdigit():
        raise InvalidRequestError(
            f"Invalid 'after': '{after}' is not the id of a message of chat completion '{completion_id}'.",
            param="after",
            code="invalid_value",
        )
    return int(tail)


def stored_message(completion_id: str, position: int, message: dict[str, Any]) -> dict[str, Any]:
    """A request message as `GET /chat/completions/{id}/messages` lists it: `content` is a string (text parts
    joined with newlines) or null, and `content_parts` the text and image parts when parts were sent."""
    role = message.get("role")
    content = message.get("content")
    parts: list[dict[str, Any]] | None = None
    if isinstance(content, list):
        parts = []
        texts = []
        for part in content:
            if not isinstance(part, dict):
                continue
            key = _STORED_PART_KEYS.get(part.get("type", ""))
            if key is None or key not in part:
                continue
            parts.append({"type": part["type"], key: part[key]})
            if key == "text":
                texts.append(str(part["text"]))
        content = "\n".join(texts) if texts else None
    elif not isinstance(content, str):
        content = None
    out: dict[str, Any] = {"id": message_id(completion_id, position), "role": role, "content": content}
    if role == "assistant":
        out["refusal"] = message.get("refusal")
        if message.get("tool_calls"):
            out["tool_calls"] = message["tool_calls"]
        if message.get("function_call"):
            out["function_call"] = message["function_call"]
    if role == "tool" and "tool_call_id" in message:
        out["tool_call_id"] = message["tool_call_id"]
    if message.get("name") is not None:
        out["name"] = message["name"]
    out["content_parts"] = parts or None
    return out
