"""The frontend's operation table against OpenAI's openapi.yaml: the documented request fields that arrive as
keyword arguments and the mandatory ones (422) are the spec's, route by route."""

from __future__ import annotations

from typing import Any

import pytest

from manifold.frontend import Endpoint
from manifold.providers.python_handler.operations import OPERATIONS, Operation
from manifold.server.app import API_ROUTES
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


@pytest.mark.parametrize("op", OPERATIONS, ids=lambda op: op.name)
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
    assert {op.group for op in OPERATIONS} == {e.value for e in Endpoint}


def test_operations_the_gateway_serves_have_the_same_routes() -> None:
    """Where the gateway has a route for an operation, the frontend defaults to it: same method and path."""
    foundation = {(r.method, r.path) for r in API_ROUTES}
    ours = {(op.method, op.path) for op in OPERATIONS}
    assert foundation <= ours
    chat_and_surface = {op for op in OPERATIONS if op.group != "responses"}
    assert {(op.method, op.path) for op in chat_and_surface} <= foundation
