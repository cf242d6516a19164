"""A JSON Schema as an EBNF grammar in XGrammar's dialect (what OpenVINO GenAI's `StructuredOutputConfig.grammar`
takes), with the whitespace between tokens bounded.

Why not hand the pipeline the schema itself (`StructuredOutputConfig.json_schema`): its JSON grammar allows any
amount of whitespace between tokens, and a small model sampling at a temperature can fall into writing tabs and
newlines until `max_tokens` cuts the object short, which is not JSON (seen with SmolLM2 at temperature 0.7:
`{"city": "London", "is_capital": true` and then tabs to the end). llama.cpp's grammars bound it the same way.

What is converted: `type` (one or a list), `properties` with `required` (in the schema's order; optional ones may
be left out), `additionalProperties` (an object without `properties`: any keys, values of that schema), `items`,
`minItems`/`maxItems`, `minLength`/`maxLength`, `enum`, `const`, `anyOf`/`oneOf`, local `$ref`s (`#/$defs/…`,
`#/definitions/…`, recursive ones too) and the annotations (`title`, `description`, `default`, `examples`).
Anything else (`pattern`, `format`, numeric bounds, `allOf`, conditionals…) makes `schema_grammar` answer None, and
the caller gives the pipeline the schema as it is.
"""

from __future__ import annotations

import json
from typing import Any, Final

__all__ = ["schema_grammar"]

MAX_INDENT: Final = 20  # between two tokens: nothing, a space, or a newline and up to this many spaces or tabs
_ANNOTATIONS: Final = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment"})
_KNOWN: Final = _ANNOTATIONS | {
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "enum",
    "const",
    "anyOf",
    "oneOf",
    "$ref",
    "$defs",
    "definitions",
}
_PRIMITIVES: Final = {
    "ws": f'(" " | "\\n" [ \\t]{{0,{MAX_INDENT}}})?',
    "char": '[^"\\\\\\x00-\\x1f] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "string": '"\\"" char* "\\""',
    "integer": '"-"? ("0" | [1-9] [0-9]{0,15})',
    "number": 'integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,3})?',
    "boolean": '"true" | "false"',
    "null": '"null"',
    "value": "object | array | string | number | boolean | null",
    "object": '"{" ws (member (ws "," ws member)*)? ws "}"',
    "member": 'string ws ":" ws value',
    "array": '"[" ws (value (ws "," ws value)*)? ws "]"',
}


class _Unsupported(Exception):
    pass


def schema_grammar(schema: Any) -> str | None:
    """The grammar of JSON texts that `schema` accepts (its root rule `root`), or None when the schema uses what
    this conversion does not know."""
    if not isinstance(schema, dict):
        return None
    converter = _Converter(schema)
    try:
        root = converter.expression(schema)
    except (_Unsupported, RecursionError):
        return None
    rules = {"root": root, **converter.rules}
    needed = _reachable(rules)
    lines = [f"{name} ::= {expr}" for name, expr in rules.items() if name in needed]
    lines += [f"{name} ::= {expr}" for name, expr in _PRIMITIVES.items() if name in needed]
    return "\n".join(lines) + "\n"


def _reachable(rules: dict[str, str]) -> set[str]:
    """The rule names used from `root` (primitives included), so that the grammar holds no unused rule."""
    every = {**_PRIMITIVES, **rules}
    seen: set[str] = set()
    todo = ["root"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [word for word in _words(every[name]) if word in every]
    return seen


def _words(expr: str) -> list[str]:
    """The identifiers of an expression, outside its string literals and character classes."""
    out: list[str] = []
    word = ""
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == '"' or c == "[":
            end = '"' if c == '"' else "]"
            i += 1
            while i < len(expr) and expr[i] != end:
                i += 2 if expr[i] == "\\" else 1
        elif c.isalnum() or c in "_-":
            word += c
        elif word:
            out.append(word)
            word = ""
        i += 1
    if word:
        out.append(word)
    return out


def _literal(value: Any) -> str:
    """A JSON value as an EBNF string literal of its compact JSON text."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _Converter:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}

    def rule(self, hint: str, expr: str) -> str:
        name = hint
        n = 1
        while name in self.rules or name in _PRIMITIVES or name == "root":
            n += 1
            name = f"{hint}-{n}"
        self.rules[name] = expr
        return name

    def expression(self, schema: Any) -> str:
        if schema is True or schema == {}:
            return "value"
        if not isinstance(schema, dict):
            raise _Unsupported(f"schema {schema!r}")
        unknown = set(schema) - _KNOWN
        if unknown:
            raise _Unsupported(", ".join(sorted(unknown)))
        if "$ref" in schema:
            return self.ref(schema["$ref"])
        if "const" in schema:
            return _literal(schema["const"])
        if "enum" in schema:
            values = schema["enum"]
            if not isinstance(values, list) or not values:
                raise _Unsupported("enum")
            return "(" + " | ".join(_literal(v) for v in values) + ")"
        for key in ("anyOf", "oneOf"):
            if key in schema:
                options = schema[key]
                if not isinstance(options, list) or not options:
                    raise _Unsupported(key)
                return "(" + " | ".join(self.expression(o) for o in options) + ")"
        kind = schema.get("type")
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema:
                kind = "array"
            else:
                return "value"
        if isinstance(kind, list):
            if not kind:
                raise _Unsupported("type []")
            return "(" + " | ".join(self.typed(str(k), schema) for k in kind) + ")"
        return self.typed(str(kind), schema)

    def ref(self, ref: Any) -> str:
        if not isinstance(ref, str):
            raise _Unsupported("$ref")
        found = self.refs.get(ref)
        if found is not None:
            return found
        parts = ref.split("/")
        if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
            raise _Unsupported(f"$ref {ref}")
        target = (self.root.get(parts[1]) or {}).get(parts[2])
        if target is None:
            raise _Unsupported(f"$ref {ref}")
        name = self.rule("ref-" + "".join(c if c.isalnum() else "-" for c in parts[2]), "")
        self.refs[ref] = name  # before converting: a recursive reference finds the rule
        self.rules[name] = self.expression(target)
        return name

    def typed(self, kind: str, schema: dict[str, Any]) -> str:
        if kind == "object":
            return self.object(schema)
        if kind == "array":
            return self.array(schema)
        if kind == "string":
            low, high = schema.get("minLength"), schema.get("maxLength")
            if low is None and high is None:
                return "string"
            return f'"\\"" char{{{int(low or 0)},{"" if high is None else int(high)}}} "\\""'
        if kind in ("integer", "number", "boolean", "null"):
            return kind
        raise _Unsupported(f"type {kind}")

    def array(self, schema: dict[str, Any]) -> str:
        items = schema.get("items", True)
        item = self.expression(items)
        low = int(schema.get("minItems") or 0)
        high = schema.get("maxItems")
        if high is not None and int(high) < low:
            raise _Unsupported("maxItems < minItems")
        if high is not None and int(high) == 0:
            return '"[" ws "]"'
        least, most = max(0, low - 1), None if high is None else int(high) - 1  # items after the first
        more = "*" if least == 0 and most is None else f"{{{least},{'' if most is None else most}}}"
        inner = f'{item} (ws "," ws {item}){more}'
        body = inner if low > 0 else f"({inner})?"
        return self.rule("array", f'"[" ws {body} ws "]"')

    def object(self, schema: dict[str, Any]) -> str:
        properties = schema.get("properties")
        extra = schema.get("additionalProperties", True)
        if not properties:
            if extra is False:
                return '"{" ws "}"'
            value = self.expression(extra)
            if value == "value":
                return "object"
            pair = self.rule("pair", f'string ws ":" ws {value}')
            return self.rule("object", f'"{{" ws ({pair} (ws "," ws {pair})*)? ws "}}"')
        if not isinstance(properties, dict):
            raise _Unsupported("properties")
        required = set(schema.get("required") or [])
        if not required <= set(properties):
            raise _Unsupported("required names a property not in properties")
        pairs = [
            (self.rule("kv", f'{_literal(str(name))} ws ":" ws {self.expression(sub)}'), name in required)
            for name, sub in properties.items()
        ]
        # After the first pair: each later one with its comma, optional or not, in the schema's order.
        rest: list[str] = []
        for kv, needed in pairs:
            rest.append(f'ws "," ws {kv}' if needed else f'(ws "," ws {kv})?')
        tails = [self.rule("rest", " ".join(rest[i:])) if rest[i:] else "" for i in range(len(pairs) + 1)]
        # The first pair: any optional one before the first required, or the first required itself.
        starts: list[str] = []
        for i, (kv, needed) in enumerate(pairs):
            starts.append(f"{kv} {tails[i + 1]}".strip())
            if needed:
                break
        body = "(" + " | ".join(starts) + ")"
        if not any(needed for _, needed in pairs):
            body += "?"
        return self.rule("object", f'"{{" ws {body} ws "}}"')
