"""The frontend's operation table against OpenAI's openapi.yaml: the documented request fields that arrive as
keyword arguments and the mandatory ones (422) are the spec's, route by route."""

from __future__ import annotations

from typing import Any

import pytest

from manifold.api.operations import API_OPERATIONS, Operation
from manifold.frontend import Endpoint
from tests.conformance.schema import load_spec


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _fields(spec: dict[str, Any], schema: dict[str, Any]) -> tuple[set[str], set[str]]:
    schema = _resolve(spec, schema)
    fields, required = set(schema.get("properties", {})), set(schema.get("required", []))
    for part in schema.get("allOf", []):
        more, more_required = _fields(spec, part)
        fields |= more
        required |= more_required
    return fields, required


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    return load_spec().spec


@pytest.mark.parametrize("op", API_OPERATIONS, ids=lambda op: op.name)
def test_fields_and_mandatory_fields_are_the_specs(spec: dict[str, Any], op: Operation) -> None:
    path = op.path.replace("{model:path}", "{model}")
    operation = spec["paths"][path][op.method.lower()]
    body = operation.get("requestBody")
    if body is None:
        assert not op.has_body and not op.fields and not op.mandatory
        return
    fields, required = _fields(spec, body["content"]["application/json"]["schema"])
    assert op.has_body
    assert op.fields == fields
    assert set(op.mandatory) == required


def test_every_group_has_operations_and_an_endpoint() -> None:
    assert {op.group for op in API_OPERATIONS} == {e.value for e in Endpoint}
