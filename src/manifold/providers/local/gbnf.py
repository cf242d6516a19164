"""JSON schemas as llama.cpp grammars (GBNF), through llama-cpp-python's converter with its literals fixed.

llama-cpp-python 0.3.x's `SchemaConverter` writes an `enum`/`const` value or a property name as its JSON text
inside a GBNF string, escaping only quotes and line breaks. So the grammar asked for the wrong text wherever that
JSON text holds a backslash: for the value `a\\b` the JSON text `"a\\\\b"` went into the grammar as it is, where
GBNF reads `\\\\` as one backslash, so the model had to write `"a\\b"`, which JSON reads as `a`, a backspace,
`b`; a quote inside a value ended the GBNF string early; a tab
became a raw tab (not JSON); and a character outside the Basic Multilingual Plane, written by `json.dumps` as a
surrogate pair `\\ud83d\\ude00`, became two GBNF code points no UTF-8 text can hold, so the grammar could never
be satisfied. Here every literal is escaped as GBNF reads it. Constants keep their characters as they are, except
those outside the Basic Multilingual Plane (and lone surrogates), which stay JSON escapes: llama.cpp's grammars
cannot begin some 4-byte UTF-8 characters a token at a time (tests/unit/test_llama_batch.py), and `"\\ud83d\\ude00"`
is the same JSON string as the character itself.

`install()` puts the fixed converter where llama-cpp-python's own helpers look it up (`LlamaGrammar.
from_json_schema`, used by its function-calling handler for a tool's parameters), so the serialized engine's
tools get it too.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from manifold.errors import UnsupportedError

__all__ = ["check_tools", "choices_grammar", "gbnf_text", "install", "json_text", "schema_gbnf"]


def gbnf_text(text: str) -> str:
    """`text` inside a GBNF string literal: quotes and backslashes escaped, control characters as \\xHH (GBNF has
    no \\f or \\b, which JSON's escaping would write). Every other character stands for itself, in UTF-8."""
    return "".join(
        "\\" + ch if ch in '"\\' else f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or ch == "\x7f" else ch for ch in text
    )


_ESCAPED: Final = re.compile("[\ud800-\udfff\U00010000-\U0010ffff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_text(value: Any) -> str:
    """`value` as JSON text: characters as they are, but those outside the Basic Multilingual Plane and lone
    surrogates as JSON `\\u` escapes of four hex digits each."""
    return _ESCAPED.sub(_escape, json.dumps(value, ensure_ascii=False))


def choices_grammar(choices: list[str]) -> str:
    """GBNF for exactly one of `choices` (an empty one: the output may end at once)."""
    return "root ::= " + " | ".join(f'"{gbnf_text(c)}"' for c in choices)


def _converter_class() -> type:
    from llama_cpp import llama_grammar

    class SchemaConverter(llama_grammar.SchemaConverter):
        """llama-cpp-python's converter with its literals escaped for GBNF (see the module's text)."""

        def _format_literal(self, literal: str) -> str:
            return f'"{gbnf_text(literal)}"'

        def _generate_constant_rule(self, value: Any) -> str:
            return self._format_literal(json_text(value))

        _at_root = True

        def visit(self, schema: Any, name: str) -> Any:
            # A rule is named after its property's path, and the whole schema's after "": the property "" of the
            # top-level object was given the root's name, and the grammar's root became that property's value.
            if not name and not self._at_root:
                name = "empty-name"
            self._at_root = False
            return super().visit(schema, name)  # type: ignore[no-untyped-call]

    return SchemaConverter


def install() -> type:
    """Make llama-cpp-python's `json_schema_to_gbnf` (and so `LlamaGrammar.from_json_schema`) use the fixed
    converter; idempotent. Returns that converter."""
    from llama_cpp import llama_grammar

    current = llama_grammar.SchemaConverter
    if getattr(current, "_manifold_fixed", False):
        return current
    fixed = _converter_class()  # a subclass of `current`, llama-cpp-python's own
    fixed._manifold_fixed = True  # type: ignore[attr-defined]
    llama_grammar.SchemaConverter = fixed  # type: ignore[misc, assignment]
    return fixed


def schema_gbnf(schema: dict[str, Any], param: str = "response_format", engine: str = "llama_cpp") -> str:
    """GBNF for the JSON texts `schema` allows (whitespace between tokens bounded, as llama-cpp-python's
    converter bounds it). A schema the converter cannot follow (it asserts, mostly: a `pattern` not anchored, an
    unknown `type`, a `$ref` it cannot resolve) is a 400 naming `param`, not the converter's error."""
    from llama_cpp import llama_grammar

    install()
    try:
        return str(llama_grammar.json_schema_to_gbnf(json.dumps(schema)))
    except Exception as exc:  # noqa: BLE001 (the converter raises what it likes for what it does not know)
        raise UnsupportedError(
            f"The local engine {engine} cannot constrain its output to this schema: {exc}", param=param
        ) from None


def check_tools(tools: Any, engine: str = "llama_cpp") -> None:
    """Every function's `parameters` converted once, before anything is generated: one the converter cannot follow
    is a 400 naming `tools`, whether or not the model would have called that function (llama-cpp-python's own
    function calling would fall back to any JSON for it; the batched engine found out only once it was called)."""
    for tool in tools or ():
        function = tool.get("function") if isinstance(tool, dict) else None
        parameters = function.get("parameters") if isinstance(function, dict) else None
        if parameters:
            schema_gbnf(parameters, "tools", engine)
