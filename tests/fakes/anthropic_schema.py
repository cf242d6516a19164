"""Judge Anthropic Messages requests by Anthropic's own types: the `anthropic` SDK's `MessageCreateParams`.

The SDK's request types are TypedDicts. pydantic validates `Iterable[...]` fields lazily (a generator that is
only checked when consumed), so instead of validating with a `TypeAdapter` we derive a JSON Schema from it and
validate with jsonschema, eagerly and with readable paths. Two adjustments make the schema a judge of *wire*
bodies:

* every TypedDict object is closed (`additionalProperties: false`): a misspelled or invented key fails, as the
  API answers "Extra inputs are not permitted";
* the SDK's *response* models (`TextBlock`, `ToolUseBlock`, … pydantic models the SDK lets you pass back as
  content for convenience) are removed from the unions: on the wire only the `*Param` shapes exist.

The installed SDK (2.x) describes API version 2026-10-21. For requests sent with ``anthropic-version:
2023-06-01`` the schema also admits the three sampling parameters that version still takes and that SDK 2.x
removed from its types: ``temperature`` (0 to 1), ``top_p``, ``top_k``, typed as in the last SDK types that had
them (anthropic-sdk-python 0.121.0, ``src/anthropic/types/message_create_params.py``).

Usage::

    from tests.fakes.anthropic_schema import request_problems, response_problems
    assert request_problems(body, "2023-06-01") == []   # a POST /v1/messages body, by its anthropic-version
    assert response_problems(message) == []              # a `Message` the fake (or a golden file) answers
"""

from __future__ import annotations

import functools
from typing import Any

import anthropic.types
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match
from pydantic import BaseModel, ConfigDict, TypeAdapter

__all__ = ["request_problems", "request_schema", "response_problems", "stream_event_problems"]


def _is_response_model(schema: dict[str, Any], name: str) -> bool:
    cls = getattr(anthropic.types, schema.get("title", name), None)
    return isinstance(cls, type) and issubclass(cls, BaseModel)


API_VERSIONS = ("2023-06-01", "2026-10-21")
_SAMPLING_2023 = {
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": 0},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
}
_BODIES = ("MessageCreateParamsNonStreaming", "MessageCreateParamsStreaming")


@functools.cache
def request_schema(api_version: str = "2023-06-01") -> dict[str, Any]:
    from anthropic.types.message_create_params import MessageCreateParams

    if api_version not in API_VERSIONS:
        raise ValueError(f"unknown anthropic-version {api_version!r}")
    schema: dict[str, Any] = TypeAdapter(MessageCreateParams, config=ConfigDict(extra="forbid")).json_schema()
    defs: dict[str, Any] = schema["$defs"]
    for name, sub in list(defs.items()):
        if _is_response_model(sub, name):
            defs[name] = False  # never valid: a union member only the SDK, not the wire, knows
        elif sub.get("type") == "object" and "additionalProperties" not in sub:
            sub["additionalProperties"] = False
    if api_version == "2023-06-01":
        for name in _BODIES:
            defs[name]["properties"].update(_SAMPLING_2023)
    return schema


@functools.cache
def _request_validator(api_version: str, stream: bool) -> Draft202012Validator:
    # Validate against the one member of the streaming/non-streaming union that `stream` selects, so errors
    # name the real problem instead of "'stream' is a required property".
    schema = dict(request_schema(api_version))
    schema.pop("anyOf", None)
    schema["$ref"] = f"#/$defs/{_BODIES[stream]}"
    return Draft202012Validator(schema)


def _discriminated(errors: list[ValidationError]) -> bool:
    """Did this union member fail on its tag (`type` or `role` const) or on the JSON type itself, i.e. was it
    the wrong member?"""
    return any(
        (e.validator in ("const", "enum") and list(e.path) in (["type"], ["role"]))
        or (e.validator in ("type", "const") and not e.path)
        or (e.validator is None and not e.path)  # a response-model member (`False` schema)
        or (e.validator == "anyOf" and not e.path and _all_discriminated(e))
        for e in errors
    )


def _all_discriminated(error: ValidationError) -> bool:
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context or ():
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    return all(_discriminated(errs) for errs in branches.values())


def _best(error: ValidationError) -> ValidationError:
    """The error inside a union (anyOf) that belongs to the member whose tag matched the payload."""
    if not error.context:
        return error
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    tagged = [errs for errs in branches.values() if not _discriminated(errs)]
    if len(tagged) == 1:
        return _best(max(tagged[0], key=lambda e: len(e.path)))
    if not tagged:
        return error  # no member has this tag: the tag itself is wrong
    return best_match(error.context)


def _describe(errors: list[ValidationError]) -> list[str]:
    out = []
    for e in errors:
        best = _best(e)
        where = "/".join(map(str, best.absolute_path)) or "<root>"
        out.append(f"{where}: {best.message[:300]}")
    return out


def request_problems(body: Any, api_version: str = "2023-06-01") -> list[str]:
    """Why `body` is not a valid `MessageCreateParams` for that API version (empty when it is)."""
    if api_version not in API_VERSIONS:
        return [f"anthropic-version: {api_version!r} is not one of {', '.join(API_VERSIONS)}"]
    stream = isinstance(body, dict) and body.get("stream") is True
    return _describe(list(_request_validator(api_version, stream).iter_errors(body)))


@functools.cache
def _message_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(anthropic.types.Message)


@functools.cache
def _event_adapter() -> TypeAdapter[Any]:
    return TypeAdapter(anthropic.types.RawMessageStreamEvent)


def _pydantic_problems(adapter: TypeAdapter[Any], payload: Any) -> list[str]:
    from pydantic import ValidationError as PydanticError

    try:
        adapter.validate_python(payload, strict=False)
    except PydanticError as exc:
        return [f"{'/'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
    return []


def response_problems(message: Any) -> list[str]:
    """Why `message` is not a valid Anthropic `Message` response body."""
    return _pydantic_problems(_message_adapter(), message)


def stream_event_problems(event: Any) -> list[str]:
    """Why `event` is not a valid `RawMessageStreamEvent` (ping and error events are checked by shape)."""
    if isinstance(event, dict) and event.get("type") == "ping":
        return [] if set(event) == {"type"} else [f"ping: unexpected keys {sorted(event)}"]
    if isinstance(event, dict) and event.get("type") == "error":
        err = event.get("error")
        ok = isinstance(err, dict) and isinstance(err.get("type"), str) and isinstance(err.get("message"), str)
        return [] if ok else ["error: expected {type, error: {type, message}}"]
    return _pydantic_problems(_event_adapter(), event)
