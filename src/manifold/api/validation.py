"""Turn a request body into (raw JSON object, typed request), or an OpenAI-shaped 400 naming the parameter.

msgspec reports the first problem as ``Expected `float` <= 2.0 - at `$.temperature```; this module rewrites it the
way OpenAI words it (``Invalid 'temperature': number above maximum value. Expected a value <= 2, but got 5
instead.``) with `param` set to ``temperature`` (or ``messages[1].role``).
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from manifold import _json
from manifold.errors import InvalidRequestError, MissingParameterError

T = TypeVar("T")

_AT = re.compile(r" - at `\$(.*)`$")
_AT_KEY = re.compile(r" - at `key` in `\$(.*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]+)`$")
_RANGE = re.compile(r"^Expected `(\w+)` (>=|<=|>|<) ([-\d.e+]+)$")
_LENGTH = re.compile(r"^Expected `(\w+)` of length (>=|<=) (\d+)$")
_TYPE = re.compile(r"^Expected `([^`]+)`, got `(\w+)`$")
_INVALID = re.compile(r"^Invalid (?:enum )?value (.+)$")
_PATTERN = re.compile(r"^Expected `str` matching regex '(.+)'$")

_TYPE_WORDS = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "object": "an object",
    "array": "an array",
    "null": "null",
}
_PLAIN_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_PATH_PART = re.compile(r"\.([\w-]+)|\[(\d+)\]|\[\"?([^\]\"]*)\"?\]")

BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP "
    "library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)"
)


def decode_json_object(body: bytes) -> dict[str, Any]:
    if not body:
        raise InvalidRequestError(BAD_JSON_MESSAGE + " The body was empty.", code="invalid_json")
    try:
        data = _json.decode_request(body)
    except _json.NestingError:
        raise nesting_error() from None
    except msgspec.DecodeError:
        raise InvalidRequestError(BAD_JSON_MESSAGE, code="invalid_json") from None
    if not isinstance(data, dict):
        raise InvalidRequestError(
            f"The request body must be a JSON object, got {_type_word(data)}.", code="invalid_type"
        )
    return data


def nesting_error() -> InvalidRequestError:
    return InvalidRequestError(
        f"The JSON body of your request is nested too deeply: at most {_json.MAX_REQUEST_DEPTH} levels of arrays "
        "and objects are accepted.",
        code="invalid_json",
    )


def convert(data: dict[str, Any], typ: type[T]) -> T:
    """Validate a decoded JSON object against a wire type."""
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        raise translate(str(exc), data) from None


def translate(message: str, data: Any) -> InvalidRequestError:
    key_error = _AT_KEY.search(message)
    if key_error:
        # A mapping key broke a rule (e.g. a metadata key over 64 characters).
        param = _param(key_error.group(1))
        rule = message[: key_error.start()]
        length = _LENGTH.match(rule)
        if length:
            return InvalidRequestError(
                f"Invalid '{param}': keys must be strings of at most {length.group(3)} characters.",
                param=param,
                code="invalid_value",
            )
        return InvalidRequestError(f"Invalid key in '{param}'.", param=param, code="invalid_value")
    m = _AT.search(message)
    path = m.group(1) if m else ""
    text = message[: m.start()] if m else message
    if path.endswith("[...]"):
        # msgspec does not say which mapping value broke the rule: find it, to name it.
        path = _find_bad_entry(data, path[: -len("[...]")], text)
    param = _param(path)

    missing = _MISSING.match(text)
    if missing:
        field = missing.group(1)
        full = f"{param}.{field}" if param else field
        return MissingParameterError(f"Missing required parameter: '{full}'.", param=full)

    value = _lookup(data, path)
    shown = _show(value)
    rng = _RANGE.match(text)
    if rng:
        kind, op, bound = rng.groups()
        word = "integer" if kind == "int" else "decimal"
        if op in ("<=", "<"):
            return InvalidRequestError(
                f"Invalid '{param}': {word} above maximum value. Expected a value {op} {_num(bound)}, "
                f"but got {shown} instead.",
                param=param,
                code=f"{word}_above_max_value",
            )
        return InvalidRequestError(
            f"Invalid '{param}': {word} below minimum value. Expected a value {op} {_num(bound)}, "
            f"but got {shown} instead.",
            param=param,
            code=f"{word}_below_min_value",
        )
    length = _LENGTH.match(text)
    if length:
        kind, op, bound = length.groups()
        noun = "string" if kind == "str" else "array" if kind == "array" else "object"
        size = len(value) if isinstance(value, str | list | dict) else "?"
        if op == "<=":
            return InvalidRequestError(
                f"Invalid '{param}': {noun} too long. Expected {_a(noun)} with maximum length {bound}, "
                f"but got {_a(noun)} with length {size} instead.",
                param=param,
                code=f"{noun}_above_max_length",
            )
        return InvalidRequestError(
            f"Invalid '{param}': {noun} too short. Expected {_a(noun)} with minimum length {bound}, "
            f"but got {'an empty ' + noun if size == 0 else f'{_a(noun)} with length {size}'} instead.",
            param=param,
            code=f"empty_{noun}" if size == 0 else f"{noun}_below_min_length",
        )
    typ = _TYPE.match(text)
    if typ:
        expected = " or ".join(_TYPE_WORDS.get(t.strip(), t.strip()) for t in typ.group(1).split("|"))
        got = _TYPE_WORDS.get(typ.group(2), typ.group(2))
        return InvalidRequestError(
            f"Invalid type for '{param}': expected {expected}, but got {got} instead.",
            param=param,
            code="invalid_type",
        )
    invalid = _INVALID.match(text)
    if invalid:
        return InvalidRequestError(
            f"Invalid value: {invalid.group(1)}. Check the documented values for '{param}'.",
            param=param,
            code="invalid_value",
        )
    pattern = _PATTERN.match(text)
    if pattern:
        return InvalidRequestError(
            f"Invalid '{param}': string does not match pattern. Expected a string that matches the pattern "
            f"'{pattern.group(1)}'.",
            param=param,
            code="invalid_value",
        )
    return InvalidRequestError(f"Invalid '{param or 'body'}': {text}.", param=param or None, code="invalid_value")


def _find_bad_entry(data: Any, path: str, rule: str) -> str:
    mapping = _lookup(data, path)
    if not isinstance(mapping, dict):
        return path
    rng = _RANGE.match(rule)
    length = _LENGTH.match(rule)
    for key, value in mapping.items():
        bad = True
        if rng and isinstance(value, int | float) and not isinstance(value, bool):
            op, bound = rng.group(2), float(rng.group(3))
            bad = not {"<=": value <= bound, "<": value < bound, ">=": value >= bound, ">": value > bound}[op]
        elif length and isinstance(value, str | list | dict):
            op, bound = length.group(2), int(length.group(3))
            bad = len(value) > bound if op == "<=" else len(value) < bound
        if bad:
            return f"{path}.{key}" if _PLAIN_KEY.match(str(key)) else f'{path}["{key}"]'
    return path


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


def _param(path: str) -> str:
    """`$.messages[1].role` (as `.messages[1].role`) -> `messages[1].role`."""
    return path[1:] if path.startswith(".") else path


def _lookup(data: Any, path: str) -> Any:
    node = data
    for m in _PATH_PART.finditer(path):
        key, index, quoted = m.groups()
        try:
            if key is not None:
                node = node[key]
            elif index is not None:
                node = node[int(index)]
            else:
                node = node[quoted]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:40] + "…")
    if isinstance(value, bool) or value is None:
        return _json.dumps_text(value)
    if isinstance(value, int | float):
        return _num(str(value))
    return _type_word(value)


def _num(text: str) -> str:
    try:
        f = float(text)
    except ValueError:
        return text
    return str(int(f)) if f.is_integer() and abs(f) < 1e15 else text


def _type_word(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null"
