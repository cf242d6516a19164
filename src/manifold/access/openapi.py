"""The admin API's OpenAPI 3.1 document (`GET /admin/openapi.json`): request bodies from the very structs that
parse them (`access/keys.py`, by msgspec), answers as the admin API writes them."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from manifold.access import keys

__all__ = ["ROUTES", "document"]

_NULLABLE_INT = {"type": ["integer", "null"]}
_NULLABLE_STR = {"type": ["string", "null"]}
_LIMITS: dict[str, Any] = {
    "alias": _NULLABLE_STR,
    "models": {"type": ["array", "null"], "items": {"type": "string"}},
    "rpm": _NULLABLE_INT,
    "tpm": _NULLABLE_INT,
    "max_parallel_requests": _NULLABLE_INT,
    "model_limits": {"type": "object", "additionalProperties": {"$ref": "#/components/schemas/ModelLimitsBody"}},
    "max_budget": {"type": ["number", "null"], "description": "US dollars"},
    "budget_duration": {"type": ["string", "null"], "enum": ["daily", "weekly", "monthly", None]},
    "budget_reset_at": _NULLABLE_INT,
    "mcp_servers": {
        "type": ["array", "null"],
        "items": {"type": "string"},
        "description": "the configured MCP servers it may use: labels, or label__tool for one tool (null: every "
        "server; []: none)",
    },
    "metadata": {"type": "object"},
    "blocked": {"type": "boolean"},
    "created_at": {"type": "integer"},
    "updated_at": {"type": "integer"},
}
_KEY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "object": {"const": "key"},
        "id": {"type": "string"},
        "display": {"type": "string", "description": "the key's prefix and last 4 characters"},
        "key": {"type": "string", "description": "the secret: only in the answer to create and rotate"},
        "user": _NULLABLE_STR,
        "team_id": _NULLABLE_STR,
        "admin": {"type": "boolean"},
        "expires_at": _NULLABLE_INT,
        "previous_expires_at": _NULLABLE_INT,
        **_LIMITS,
    },
    "required": ["object", "id", "display", "user", "team_id", "admin", "expires_at", *_LIMITS],
    "additionalProperties": False,
}
_TEAM: dict[str, Any] = {
    "type": "object",
    "properties": {"object": {"const": "team"}, "id": {"type": "string"}, **_LIMITS},
    "required": ["object", "id", *_LIMITS],
    "additionalProperties": False,
}


def _list(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": {"$ref": f"#/components/schemas/{item}"}},
            "first_id": _NULLABLE_STR,
            "last_id": _NULLABLE_STR,
            "has_more": {"type": "boolean"},
        },
        "required": ["object", "data", "first_id", "last_id", "has_more"],
        "additionalProperties": False,
    }


_DELETED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "object": {"type": "string", "enum": ["key.deleted", "team.deleted"]},
        "deleted": {"const": True},
    },
    "required": ["id", "object", "deleted"],
    "additionalProperties": False,
}
_ERROR: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": _NULLABLE_STR,
                "code": _NULLABLE_STR,
            },
            "required": ["message", "type", "param", "code"],
        }
    },
    "required": ["error"],
}

# (method, path, operationId, request body schema name or None, answer schema name, query parameters)
ROUTES: tuple[tuple[str, str, str, str | None, str, tuple[str, ...]], ...] = (
    ("post", "/admin/keys", "createKey", "KeyCreate", "Key", ()),
    ("get", "/admin/keys", "listKeys", None, "KeyList", ("after", "limit", "team_id", "user", "alias", "blocked")),
    ("get", "/admin/keys/{key_id}", "getKey", None, "Key", ()),
    ("post", "/admin/keys/{key_id}", "updateKey", "KeyUpdate", "Key", ()),
    ("post", "/admin/keys/{key_id}/rotate", "rotateKey", "RotateBody", "Key", ()),
    ("delete", "/admin/keys/{key_id}", "deleteKey", None, "Deleted", ()),
    ("post", "/admin/teams", "createTeam", "TeamCreate", "Team", ()),
    ("get", "/admin/teams", "listTeams", None, "TeamList", ("after", "limit", "alias", "blocked")),
    ("get", "/admin/teams/{team_id}", "getTeam", None, "Team", ()),
    ("post", "/admin/teams/{team_id}", "updateTeam", "TeamUpdate", "Team", ()),
    ("delete", "/admin/teams/{team_id}", "deleteTeam", None, "Deleted", ()),
)
_ERRORS = {
    "400": "a bad request",
    "401": "no key or a wrong one",
    "403": "a key that is not an admin's",
    "404": "no such key or team",
    "503": "the database is unavailable",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


@functools.cache
def document() -> dict[str, Any]:
    (_, components) = msgspec.json.schema_components(
        [keys.KeyCreate, keys.KeyUpdate, keys.TeamCreate, keys.TeamUpdate, keys.RotateBody],
        ref_template="#/components/schemas/{name}",
    )
    schemas: dict[str, Any] = {
        **components,
        "Key": _KEY,
        "Team": _TEAM,
        "KeyList": _list("Key"),
        "TeamList": _list("Team"),
        "Deleted": _DELETED,
        "Error": _ERROR,
    }
    paths: dict[str, Any] = {}
    for method, path, op_id, body, answer, query in ROUTES:
        op: dict[str, Any] = {
            "operationId": op_id,
            "security": [{"bearer": []}],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": _ref(answer)}}},
                **{
                    status: {"description": text, "content": {"application/json": {"schema": _ref("Error")}}}
                    for status, text in _ERRORS.items()
                },
            },
        }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in ("key_id", "team_id")
            if "{" + name + "}" in path
        ]
        params += [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in query]
        if params:
            op["parameters"] = params
        if body is not None:
            op["requestBody"] = {
                "required": body not in ("RotateBody", "KeyCreate", "TeamCreate"),
                "content": {"application/json": {"schema": _ref(body)}},
            }
        paths.setdefault(path, {})[method] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Manifold admin API", "version": "1", "description": "Virtual keys and teams."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
