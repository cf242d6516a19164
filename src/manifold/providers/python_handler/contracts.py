"""A handler's answer → the route's OpenAI object: converted to JSON values, filtered to the documented keys,
required keys checked, so the SDKs' typed deserializers accept it.

A handler may return a dict, a msgspec Struct, a dataclass, a pydantic model (the SDK's own types included) or,
where a route has an obvious text answer, a plain string. Unknown keys are dropped (nested too, where the spec
describes the nesting); constants such as `object` are filled in; a required key the handler left out is a 500
naming it (logged): the gateway never invents content.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple

import msgspec

from manifold import _json
from manifold.api.chat_response import normalize_completion
from manifold.providers.python_handler.errors import HandlerContractError, HandlerReply, reply_parts

log = logging.getLogger("manifold.handler")


class Shape(NamedTuple):
    keys: frozenset[str]
    required: tuple[str, ...] = ()  # present, and not null unless also in `nullable`
    constants: tuple[tuple[str, Any], ...] = ()
    nested: tuple[tuple[str, Shape], ...] = ()  # a dict value, or each dict in a list value
    nullable: frozenset[str] = frozenset()


def _shape(
    keys: str,
    required: str = "",
    constants: tuple[tuple[str, Any], ...] = (),
    nested: tuple[tuple[str, Shape], ...] = (),
    nullable: str = "",
) -> Shape:
    return Shape(frozenset(keys.split()), tuple(required.split()), constants, nested, frozenset(nullable.split()))


_MESSAGE = _shape("role content refusal tool_calls annotations audio function_call")
_CHAT_CHOICE = _shape("index message finish_reason logprobs", "message", nested=(("message", _MESSAGE),))
CHAT_COMPLETION = _shape(
    "id object created model choices usage service_tier system_fingerprint metadata moderation",
    "choices",
    nested=(("choices", _CHAT_CHOICE),),
)
_DELTA = _shape("role content refusal tool_calls function_call")
_CHUNK_CHOICE = _shape("index delta finish_reason logprobs", nested=(("delta", _DELTA),))
CHAT_CHUNK = _shape(
    "id object created model choices usage service_tier system_fingerprint obfuscation moderation",
    nested=(("choices", _CHUNK_CHOICE),),
)
_TEXT_CHOICE = _shape("index text finish_reason logprobs", "text")
TEXT_COMPLETION = _shape(
    "id object created model choices usage system_fingerprint", "choices", nested=(("choices", _TEXT_CHOICE),)
)
TEXT_CHUNK = _shape("id object created model choices usage system_fingerprint", nested=(("choices", _TEXT_CHOICE),))
_EMBEDDING = _shape("index embedding object", "embedding")
EMBEDDINGS = _shape("object data model usage", "data", nested=(("data", _EMBEDDING),))
_IMAGE = _shape("b64_json url revised_prompt")
IMAGES = _shape("created data background output_format quality size usage", "data", nested=(("data", _IMAGE),))

# Objects the handler answers directly (stored objects, models): everything the spec requires must be there.
_STORED_COMPLETION = _shape(
    "id object created model choices usage service_tier system_fingerprint metadata moderation",
    "id created model choices",
    (("object", "chat.completion"),),
    (("choices", _CHAT_CHOICE),),
)
_PAGE_KEYS = "object data first_id last_id has_more"
_PAGE = _shape(_PAGE_KEYS, "data first_id last_id has_more", (("object", "list"),), nullable="first_id last_id")
_RESPONSE = _shape(
    "id object created_at status background completed_at conversation error incomplete_details instructions "
    "max_output_tokens max_tool_calls metadata model moderation output output_text parallel_tool_calls "
    "previous_response_id prompt prompt_cache_key prompt_cache_options prompt_cache_retention reasoning "
    "safety_identifier service_tier store temperature text tool_choice tools top_logprobs top_p truncation usage user",
    "id created_at error incomplete_details instructions metadata model output parallel_tool_calls temperature "
    "tool_choice tools top_p",
    (("object", "response"),),
    nullable="error incomplete_details instructions metadata temperature top_p",
)
_MODEL = _shape("id object created owned_by", "id", (("object", "model"),))

DIRECT: dict[str, Shape] = {
    "list_chat_completions": _PAGE,
    "retrieve_chat_completion": _STORED_COMPLETION,
    "update_chat_completion": _STORED_COMPLETION,
    "delete_chat_completion": _shape("id object deleted", "id deleted", (("object", "chat.completion.deleted"),)),
    "list_chat_completion_messages": _PAGE,
    "retrieve_response": _RESPONSE,
    "cancel_response": _RESPONSE,
    # The spec has no schema for it; its example (and the gateway's own route) says `"object": "response"`.
    "delete_response": _shape("id object deleted", "id deleted", (("object", "response"),)),
    "list_response_input_items": _PAGE,
    "count_response_input_tokens": _shape(
        "object input_tokens", "input_tokens", (("object", "response.input_tokens"),)
    ),
    "compact_response": _shape(
        "id object created_at output usage", "id created_at output usage", (("object", "response.compaction"),)
    ),
    "list_models": _shape("object data", "data", (("object", "list"),), (("data", _MODEL),)),
    "retrieve_model": _MODEL,
}


def _enc_hook(obj: Any) -> Any:
    dump = getattr(obj, "model_dump", None)  # pydantic v2 (the openai SDK's types)
    if callable(dump):
        return dump(mode="json", exclude_unset=True)
    raise NotImplementedError(f"objects of type {type(obj).__name__} are not JSON values")


def to_plain(value: Any, what: str) -> Any:
    """JSON values (dict, list, str, numbers, bool, None) from whatever the handler returned."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    try:
        return msgspec.to_builtins(value, enc_hook=_enc_hook, str_keys=True)
    except (TypeError, NotImplementedError) as exc:
        raise contract_error(what, f"cannot be sent as JSON: {exc}") from None


def contract_error(what: str, problem: str) -> HandlerContractError:
    message = f"The handler's answer to {what} {problem}."
    log.error("%s", message)
    return HandlerContractError(message)


def conform(value: Any, shape: Shape, what: str, where: str = "") -> dict[str, Any]:
    """`value` (JSON values) filtered to `shape`, its constants set; a missing required key raises."""
    if not isinstance(value, dict):
        name = where or "the answer"
        raise contract_error(what, f"is not an object at {name} (got {_type_name(value)})")
    out = {k: v for k, v in value.items() if k in shape.keys}
    for key in shape.required:
        if key not in out or (out[key] is None and key not in shape.nullable):
            raise contract_error(what, f"lacks the required field '{where + key}'")
    for key, constant in shape.constants:
        out[key] = constant
    for key, inner in shape.nested:
        held = out.get(key)
        if isinstance(held, dict):
            out[key] = conform(held, inner, what, f"{where}{key}.")
        elif isinstance(held, list):
            out[key] = [conform(item, inner, what, f"{where}{key}[{i}].") for i, item in enumerate(held)]
    return out


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


# -- the answers of operations the gateway serves through the provider (it then fills ids, times, model) ---------


def in_spec_order(obj: dict[str, Any], leading: tuple[str, ...]) -> dict[str, Any]:
    """`obj` with the spec's leading keys first (None where absent: the gateway's normalization fills them), so
    an answer built here reads like OpenAI's."""
    return {**dict.fromkeys(leading), **obj}


_COMPLETION_LEADING = ("id", "object", "created", "model", "choices")


def chat_completion(value: Any, what: str) -> dict[str, Any]:
    plain = to_plain(value, what)
    if isinstance(plain, str):
        plain = {"choices": [{"index": 0, "message": {"role": "assistant", "content": plain}, "finish_reason": "stop"}]}
    return in_spec_order(conform(plain, CHAT_COMPLETION, what), _COMPLETION_LEADING)


def chat_from_response(value: Any, what: str) -> dict[str, Any]:
    """`create_response`'s answer as the chat answer the Responses engine builds its `Response` from: a string,
    a chat completion, or a `Response` (its `output` messages and function calls, or just `output_text`)."""
    plain = to_plain(value, what)
    if isinstance(plain, str) or (isinstance(plain, dict) and "choices" in plain):
        return chat_completion(plain, what)
    if not isinstance(plain, dict) or not ("output" in plain or "output_text" in plain):
        raise contract_error(what, "is neither text, a chat completion nor a Response (with 'output')")
    texts: list[str] = []
    refusals: list[str] = []
    tool_calls: list[dict[str, Any]] = []
    output = plain.get("output")
    for i, item in enumerate(output if isinstance(output, list) else ()):
        if not isinstance(item, dict):
            raise contract_error(what, f"is not an object at output[{i}]")
        if item.get("type") == "function_call":
            call = conform(item, _FUNCTION_CALL, what, f"output[{i}].")
            function = {"name": call["name"], "arguments": call["arguments"]}
            tool_calls.append({"id": call["call_id"], "type": "function", "function": function})
        elif item.get("type", "message") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal") or ""))
    if not texts and isinstance(plain.get("output_text"), str):
        texts.append(plain["output_text"])
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not tool_calls else None}
    if refusals:
        message["refusal"] = "".join(refusals)
    if tool_calls:
        message["tool_calls"] = tool_calls
    out: dict[str, Any] = {
        "choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if tool_calls else "stop"}]
    }
    usage = plain.get("usage")
    if isinstance(usage, dict):
        out["usage"] = {
            "prompt_tokens": usage.get("input_tokens", 0),
            "completion_tokens": usage.get("output_tokens", 0),
            "total_tokens": usage.get("total_tokens", 0),
        }
    return in_spec_order(out, _COMPLETION_LEADING)


_FUNCTION_CALL = _shape("type id call_id name arguments status", "call_id name arguments")


def text_completion(value: Any, what: str) -> dict[str, Any]:
    plain = to_plain(value, what)
    if isinstance(plain, str):
        plain = {"choices": [{"index": 0, "text": plain, "finish_reason": "stop", "logprobs": None}]}
    return in_spec_order(conform(plain, TEXT_COMPLETION, what), _COMPLETION_LEADING)


def embeddings(value: Any, what: str) -> dict[str, Any]:
    """A `CreateEmbeddingResponse`, or simply the vectors: `[[0.1, …], …]` (one per input)."""
    plain = to_plain(value, what)
    if isinstance(plain, list):
        plain = {"data": [{"object": "embedding", "index": i, "embedding": vector} for i, vector in enumerate(plain)]}
    return in_spec_order(conform(plain, EMBEDDINGS, what), ("object", "data", "model"))


def images(value: Any, what: str) -> dict[str, Any]:
    out = in_spec_order(conform(to_plain(value, what), IMAGES, what), ("created",))
    if out["created"] is None:
        out["created"] = int(time.time())
    return out


# -- the answers of operations the handler serves directly -----------------------------------------------------------


def direct(operation: str, value: Any, what: str, path_params: dict[str, str], created: int) -> dict[str, Any]:
    """The body of a stored-object or model operation the handler answered itself."""
    plain = to_plain(value, what)
    if operation in ("list_chat_completions", "list_chat_completion_messages", "list_response_input_items"):
        if isinstance(plain, list):
            plain = page(plain)
        elif isinstance(plain, dict) and isinstance(plain.get("data"), list):
            # The cursor fields follow from the items when the handler leaves them out.
            plain = {**page(plain["data"]), **plain}
    elif operation in ("delete_chat_completion", "delete_response"):
        if isinstance(plain, bool):
            plain = {"id": path_params.get("completion_id") or path_params.get("response_id"), "deleted": plain}
    elif operation == "count_response_input_tokens":
        if isinstance(plain, int) and not isinstance(plain, bool):
            plain = {"input_tokens": plain}
    elif operation == "list_models":
        if isinstance(plain, list):
            plain = {"data": [model_entry(m, created) for m in plain]}
        elif isinstance(plain, dict) and isinstance(plain.get("data"), list):
            plain = {**plain, "data": [model_entry(m, created) for m in plain["data"]]}
    elif operation == "retrieve_model":
        plain = model_entry(plain, created)
    out = conform(plain, DIRECT[operation], what)
    if operation in ("retrieve_chat_completion", "update_chat_completion"):
        normalize_completion(out, out["model"])
    elif operation == "list_chat_completions":
        out["data"] = [
            normalize_completion(conform(item, _STORED_COMPLETION, what, f"data[{i}]."), item["model"])
            for i, item in enumerate(out["data"])
        ]
    return out


def page(items: list[Any]) -> dict[str, Any]:
    """A cursor page of all `items` (ids taken from them)."""

    def item_id(item: Any) -> Any:
        return item.get("id") if isinstance(item, dict) else None

    return {
        "object": "list",
        "data": items,
        "first_id": item_id(items[0]) if items else None,
        "last_id": item_id(items[-1]) if items else None,
        "has_more": False,
    }


def model_entry(value: Any, created: int) -> Any:
    """A model's name, or a partial `Model`, completed with `created` and `owned_by`."""
    if isinstance(value, str):
        value = {"id": value}
    if isinstance(value, dict):
        value = {"object": "model", "created": created, "owned_by": "manifold", **value}
    return value


# -- `Response` bodies ----------------------------------------------------------------------------------------------


def encoded_body(body: Any) -> bytes:
    """A `Response` body as bytes: bytes are taken as they are, anything else is encoded as JSON."""
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    return _json.encode(to_plain(body, "a Response body"))


def decoded_body(body: Any) -> Any:
    """A 2xx `Response` body as a value to map: bytes are decoded as JSON (kept as text if they are not JSON)."""
    if isinstance(body, bytes | bytearray):
        try:
            return _json.decode(bytes(body))
        except msgspec.DecodeError:
            return bytes(body).decode("utf-8", "replace")
    return body


def unwrapped(result: Any) -> Any:
    """A handler's answer as a value: a 2xx `Response` (or Starlette response) gives its body, decoded; a non-2xx
    one is raised as it is (`HandlerReply`); any other value is the answer itself."""
    parts = reply_parts(result)
    if parts is None:
        return result
    status, reply_body, headers = parts
    if not 200 <= status < 300:
        raise HandlerReply(status, encoded_body(reply_body), headers)
    return decoded_body(reply_body)
