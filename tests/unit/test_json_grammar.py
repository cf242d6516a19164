"""providers/local/json_grammar.py: a JSON Schema as an XGrammar EBNF grammar with bounded whitespace (what the
openvino engine's structured output is constrained by; tests/e2e/test_local_batching.py samples from it). Here:
the rules it writes, and the schemas it leaves to the pipeline."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from manifold.providers.local.json_grammar import _words, schema_grammar


def rules(grammar: str | None) -> dict[str, str]:
    assert grammar is not None
    return dict(line.split(" ::= ", 1) for line in grammar.splitlines())


def test_an_object_with_required_and_optional_properties_in_order() -> None:
    g = rules(
        schema_grammar(
            {
                "type": "object",
                "properties": {"a": {"type": "string"}, "b": {"type": "integer"}, "c": {"type": "boolean"}},
                "required": ["b"],
            }
        )
    )
    root = g[g["root"]]
    # The first pair is `a` (optional) or `b` (the first required); `c` may follow with its comma.
    assert re.fullmatch(r'"\{" ws \((kv\S*) (rest\S*) \| (kv\S*) (rest\S*)\) ws "\}"', root)
    assert g["kv"] == '"\\"a\\"" ws ":" ws string' and g["kv-2"] == '"\\"b\\"" ws ":" ws integer'
    assert 'ws "," ws kv-2' in g.values() or any(v.startswith('ws "," ws kv-2') for v in g.values())
    assert g["ws"] == '(" " | "\\n" [ \\t]{0,20})?'  # bounded: no run of blank lines
    assert set(g) >= {"string", "integer", "boolean", "char"} and "number" not in g  # only what is used


def test_literals_enums_arrays_and_references() -> None:
    g = rules(
        schema_grammar(
            {
                "type": "object",
                "properties": {
                    "kind": {"const": 'say "hi"\\'},
                    "tags": {"type": "array", "items": {"enum": ["x", 1, None]}, "minItems": 1, "maxItems": 3},
                    "tree": {"$ref": "#/$defs/node"},
                    "name": {"type": "string", "maxLength": 5, "title": "an annotation is fine"},
                },
                "required": ["kind", "tags", "tree", "name"],
                "$defs": {
                    "node": {
                        "type": "object",
                        "properties": {"next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}},
                    }
                },
            }
        )
    )
    assert '"\\"say \\\\\\"hi\\\\\\"\\\\\\\\\\""' in g["kv"]  # the JSON text "say \"hi\"\\" as an EBNF literal
    array = next(v for n, v in g.items() if n.startswith("array"))
    assert array == '"[" ws ("\\"x\\"" | "1" | "null") (ws "," ws ("\\"x\\"" | "1" | "null")){0,2} ws "]"'
    node = next(name for name in g if name.startswith("ref-node"))
    assert node in g[next(n for n, v in g.items() if '"\\"next\\""' in v)]  # recursive: the rule names itself
    assert "char{0,5}" in next(v for v in g.values() if '"\\"name\\""' in v)


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "string", "pattern": "^a+$"},
        {"type": "string", "format": "date-time"},
        {"type": "integer", "minimum": 3},
        {"allOf": [{"type": "object"}]},
        {"$ref": "https://example.com/schema"},
        {"type": "object", "properties": {"a": {}}, "required": ["b"]},
        "not a schema",
    ],
)
def test_what_it_does_not_know_is_left_to_the_pipeline(schema: object) -> None:
    assert schema_grammar(schema) is None


def test_any_object_and_typed_maps() -> None:
    assert rules(schema_grammar({"type": "object"}))["root"] == "object"
    g = rules(schema_grammar({"type": "object", "additionalProperties": {"type": "number"}}))
    assert g[g["root"]].startswith('"{" ws (pair') and g["pair"] == 'string ws ":" ws number'
    assert rules(schema_grammar({"type": "object", "additionalProperties": False}))["root"] == '"{" ws "}"'


_leaf = st.sampled_from(
    [
        {"type": "string"},
        {"type": "integer"},
        {"type": "number"},
        {"type": "boolean"},
        {"type": "null"},
        {"type": "string", "maxLength": 4},
        {"enum": ["a", 1, None, True]},
        {"const": {"k": [1, "\\"]}},
        {"type": "string", "pattern": "x"},  # unsupported: the whole schema goes to the pipeline
        {},
    ]
)
_schemas = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.builds(
            lambda props, req: {"type": "object", "properties": props, "required": [k for k in props if k in req]},
            st.dictionaries(st.text('abc"\\ é', min_size=1, max_size=3), inner, max_size=4),
            st.sets(st.text("abc", min_size=1, max_size=3)),
        ),
        st.builds(lambda item, hi: {"type": "array", "items": item, "maxItems": hi}, inner, st.integers(0, 3)),
        st.builds(lambda options: {"anyOf": options}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda extra: {"type": "object", "additionalProperties": extra}, inner),
    ),
    max_leaves=12,
)


@given(_schemas)
@settings(max_examples=300, deadline=None)
def test_every_rule_a_grammar_uses_is_defined_once(schema: Any) -> None:
    """Whatever the schema: None (it holds a keyword the conversion does not know), or a grammar whose root is
    defined, each rule defined once, every name an expression uses defined, and every literal a closed string."""
    grammar = schema_grammar(schema)
    if grammar is None:
        assert '"pattern"' in json.dumps(schema)
        return
    names = [line.split(" ::= ", 1)[0] for line in grammar.splitlines()]
    assert len(names) == len(set(names)) and "root" in names
    defined = set(names)
    for line in grammar.splitlines():
        expr = line.split(" ::= ", 1)[1]
        for word in _words(expr):
            assert word in defined or word.isdigit(), (word, line)
