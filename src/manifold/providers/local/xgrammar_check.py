"""What OpenVINO GenAI's structured output (XGrammar) refuses in a JSON schema, found before the pipeline sees it.

XGrammar compiles a sequence's schema inside the pipeline's `step()`, and a schema it cannot compile makes that
step raise: every sequence of the batch is lost with it, and the pipeline must be rebuilt (batching.Engine does).
A request's schema comes from its client, so what XGrammar is known to refuse is refused here first, as a 400
naming the parameter (measured on openvino-genai 2026.4.1; docs/local-models.md#engines):

- a `type` that is not one of JSON Schema's seven, an empty `enum`;
- bounds that no value meets: `minLength` > `maxLength`, `minItems` > `maxItems`, `minProperties` >
  `maxProperties`, `minimum` > `maximum`;
- a local `$ref` that points nowhere;
- a `pattern` (also `patternProperties`' names and `propertyNames`' pattern) that is not a string, does not parse,
  or uses what XGrammar's regular expressions lack: lookaround, backreferences, group flags and named groups,
  `\\b` and `\\B`, Unicode property classes (`\\p{…}`), possessive or doubled quantifiers.

What is still refused inside a step (whatever this list misses) costs that batch, not the server: the engine
rebuilds its pipeline and goes on (batching.py).
"""

from __future__ import annotations

import re
from typing import Any, Final

__all__ = ["schema_problem"]

_TYPES: Final = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
_SCHEMA_MAPS: Final = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SCHEMA_LISTS: Final = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONE: Final = (
    "items",
    "additionalProperties",
    "additionalItems",
    "not",
    "if",
    "then",
    "else",
    "contains",
    "propertyNames",
    "unevaluatedProperties",
    "unevaluatedItems",
)
_BOUNDS: Final = (("minLength", "maxLength"), ("minItems", "maxItems"), ("minProperties", "maxProperties"))
_QUANTIFIERS: Final = "*+?{"


class _Problem(Exception):
    pass


def schema_problem(schema: Any) -> str | None:
    """Why XGrammar would refuse `schema` (a sentence naming where), or None when nothing known stands in the way."""
    try:
        _check(schema, schema, "the schema", 0)
    except _Problem as problem:
        return str(problem)
    return None


def _check(node: Any, root: Any, where: str, depth: int) -> None:
    if depth > 64:
        raise _Problem(f"{where} is nested more than 64 levels deep")
    if not isinstance(node, dict):
        return  # `true`/`false` schemas, or what the caller's validation already refused
    kind = node.get("type")
    for name in kind if isinstance(kind, list) else [kind] if kind is not None else []:
        if not isinstance(name, str) or name not in _TYPES:
            raise _Problem(f"{where} has the type {name!r}, which is not a JSON Schema type")
    if "enum" in node and (not isinstance(node["enum"], list) or not node["enum"]):
        raise _Problem(f"{where} has an `enum` that lists no value")
    for low, high in (*_BOUNDS, ("minimum", "maximum")):
        a, b = node.get(low), node.get(high)
        if isinstance(a, int | float) and isinstance(b, int | float) and _number(a) and _number(b) and a > b:
            raise _Problem(f"{where} has `{low}` {a} above `{high}` {b}: no value meets both")
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#") and not _resolves(root, ref):
        raise _Problem(f"{where} has the `$ref` {ref!r}, which points to nothing in the schema")
    if "pattern" in node:
        _regex(node["pattern"], f"the `pattern` of {where}")
    for key in _SCHEMA_MAPS:
        children = node.get(key)
        if isinstance(children, dict):
            for name, child in children.items():
                if key == "patternProperties":
                    _regex(name, f"the `patternProperties` name {name!r} of {where}")
                _check(child, root, f"`{key}.{name}` of {where}", depth + 1)
    for key in _SCHEMA_LISTS:
        children = node.get(key)
        if isinstance(children, list):
            for i, child in enumerate(children):
                _check(child, root, f"`{key}[{i}]` of {where}", depth + 1)
    for key in _SCHEMA_ONE:
        child = node.get(key)
        if isinstance(child, list):  # `items` as a list (draft 4's tuples)
            for i, each in enumerate(child):
                _check(each, root, f"`{key}[{i}]` of {where}", depth + 1)
        else:
            _check(child, root, f"`{key}` of {where}", depth + 1)


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _resolves(root: Any, ref: str) -> bool:
    """Whether a local JSON pointer (`#`, `#/$defs/a`, with ~0 and ~1 escapes) names a part of `root`."""
    if ref == "#":
        return True
    if not ref.startswith("#/"):
        return False
    node = root
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


def _regex(pattern: Any, where: str) -> None:
    if not isinstance(pattern, str):
        raise _Problem(f"{where} is not a string")
    lacking = _lacking(pattern)
    if lacking:
        raise _Problem(f"{where} uses {lacking}, which the openvino engine's regular expressions lack")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise _Problem(f"{where} is not a regular expression ({exc})") from None
    except RecursionError:
        raise _Problem(f"{where} is nested too deeply") from None


def _lacking(pattern: str) -> str | None:
    """The first construct of `pattern` XGrammar's regular expressions do not support, or None."""
    i, n = 0, len(pattern)
    quantified = 0  # what precedes: 0 an atom, 1 a quantifier, 2 a quantifier made lazy (`*?`)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            e = pattern[i + 1]
            if e in "123456789" or e == "k":
                return "a backreference"
            if e in "bB":
                return "a word boundary (\\b, \\B)"
            if e in "pP":
                return "a Unicode property class (\\p{…})"
            i, quantified = i + 2, 0
        elif c == "[":
            end = _class_end(pattern, i)
            if end < 0:
                return "a Unicode property class (\\p{…})"
            i, quantified = end, 0
        elif pattern.startswith("(?", i):
            if pattern.startswith(("(?=", "(?!", "(?<=", "(?<!"), i):
                return "a lookaround ((?=…), (?!…), (?<=…), (?<!…))"
            if not pattern.startswith("(?:", i):
                return "a group flag or a named group ((?i), (?P<name>…))"
            i, quantified = i + 3, 0
        elif c in "*+?" or (c == "{" and re.match(r"\{\d*(,\d*)?\}", pattern[i:])):
            if c == "?" and quantified == 1:
                quantified = 2
            elif quantified:
                return "a possessive or doubled quantifier (a++, a*+, a**)"
            else:
                quantified = 1
            i = pattern.index("}", i) + 1 if c == "{" else i + 1
        else:
            i, quantified = i + 1, 0
    return None


def _class_end(pattern: str, i: int) -> int:
    """The index after the `]` closing the character class opened at `i` (the end, if none: `re.compile` refuses
    it then), or -1 if a `\\p` is inside."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1  # a leading `]` is a literal
    while j < len(pattern):
        if pattern[j] == "\\":
            if pattern[j + 1 : j + 2] in ("p", "P"):
                return -1
            j += 2
        elif pattern[j] == "]":
            return j + 1
        else:
            j += 1
    return len(pattern)
