"""What XGrammar (OpenVINO GenAI's structured output) refuses in a schema, found before a step meets it
(providers/local/xgrammar_check.py). Every refused case here made a real pipeline's step raise on
openvino-genai 2026.4.1 (tests/e2e/test_local_batching.py sends some through a server); the accepted ones compiled."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold.providers.local.xgrammar_check import schema_problem


def string(pattern: Any) -> dict[str, Any]:
    return {"type": "string", "pattern": pattern}


REFUSED = [
    (string("^(?=a)a+$"), "lookaround"),
    (string("(?<!a)b"), "lookaround"),
    (string("(a)\\1"), "backreference"),
    (string("(?P<x>a)"), "named group"),
    (string("(?i)abc"), "group flag"),
    (string("\\p{L}+"), "Unicode property"),
    (string("[\\p{L}]"), "Unicode property"),
    (string("\\bfoo\\b"), "word boundary"),
    (string("a++b"), "possessive"),
    (string("a{2}+"), "possessive"),
    (string("(("), "not a regular expression"),
    (string(5), "not a string"),
    ({"type": "object", "patternProperties": {"^(?=a)": {}}}, "lookaround"),
    ({"type": "object", "propertyNames": {"pattern": "^(?=a)"}}, "lookaround"),
    ({"type": "banana"}, "not a JSON Schema type"),
    ({"type": ["string", "banana"]}, "not a JSON Schema type"),
    ({"enum": []}, "lists no value"),
    ({"type": "integer", "minimum": 10, "maximum": 1}, "above `maximum`"),
    ({"type": "string", "minLength": 5, "maxLength": 1}, "above `maxLength`"),
    ({"$ref": "#/$defs/zzz"}, "points to nothing"),
    ({"type": "object", "properties": {"a": {"anyOf": [{"type": "x"}]}}}, "`anyOf[0]` of `properties.a`"),
    ({"type": "array", "items": [{"type": "x"}]}, "`items[0]`"),
]
ACCEPTED = [
    string("^\\d{3}$"),
    string("(?:ab)+"),
    string("^[\\w.-]+@[\\w-]+\\.[a-z]{2,}$"),
    string("a+?b"),
    string("a{2}?"),
    string("[(?=]"),  # inside a class, not a group
    string("\\(?=x\\)"),  # an escaped parenthesis, then `?`
    {"type": "object", "patternProperties": {"^a": {"type": "string"}}},
    {"type": "object", "properties": {"pattern": {"type": "string"}, "type": {"type": "integer"}}},  # names only
    {"$defs": {"a": {"type": "string"}}, "$ref": "#/$defs/a"},
    {"type": ["string", "null"]},
    {"type": "integer", "minimum": 3, "maximum": 7},
    {"oneOf": [{"type": "string"}, {"type": "integer"}]},
    {"type": "string", "format": "date-time"},
    True,
]


@pytest.mark.parametrize(("schema", "says"), REFUSED, ids=[json.dumps(s)[:40] for s, _ in REFUSED])
def test_what_xgrammar_refuses_is_named(schema: Any, says: str) -> None:
    problem = schema_problem(schema)
    assert problem is not None and says in problem, problem


@pytest.mark.parametrize("schema", ACCEPTED, ids=[json.dumps(s)[:40] for s in ACCEPTED])
def test_what_xgrammar_compiles_passes(schema: Any) -> None:
    assert schema_problem(schema) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=30,
)
KEYS = st.sampled_from(["type", "pattern", "enum", "$ref", "items", "properties", "minimum", "maximum", "anyOf"])
SCHEMAS = st.recursive(
    st.dictionaries(KEYS, JSON, max_size=4),
    lambda inner: st.dictionaries(KEYS, inner | st.lists(inner, max_size=3) | JSON, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(SCHEMAS | JSON)
def test_any_json_gets_an_answer_not_an_exception(schema: Any) -> None:
    assert schema_problem(schema) is None or isinstance(schema_problem(schema), str)


def test_a_schema_nested_past_any_use_is_refused_not_a_recursion_error() -> None:
    deep: Any = {"type": "string"}
    for _ in range(2000):
        deep = {"items": deep}
    assert "nested more than 64 levels" in (schema_problem(deep) or "")
