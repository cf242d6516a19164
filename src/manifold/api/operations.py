"""Every route Manifold serves, declared once: the server mounts them (`manifold.server.handlers` names the
function serving each), the handler frontend builds its routes from them, and docs/routes.md lists them
(scripts/gen-route-docs).

`API_OPERATIONS` are mounted under each prefix (`server.prefixes`, the frontend's `prefix`); `ROOT_OPERATIONS`,
`KSERVE_OPERATIONS` (per-model URLs, `server.kserve_urls`) and `ADMIN_OPERATIONS` (keys, teams and usage, the
gateway only; docs/access.md) outside them.

A handler object "implements" an API operation by having a method of that name (`create_chat_completion`,
`retrieve_chat_completion`, …; the names follow the official Python SDK's `client.chat.completions.retrieve`).
The request fields are the spec's (tests/unit/test_frontend_operations.py checks them against openapi.yaml):
each one present in a request arrives as a keyword argument of that name; fields outside the spec arrive only
inside `body`.
"""

from __future__ import annotations

from typing import NamedTuple

# Endpoint groups (`manifold.frontend.Endpoint` values), then the groups outside the prefixes.
CHAT_COMPLETIONS = "chat_completions"
RESPONSES = "responses"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
IMAGES = "images"
MODELS = "models"
HEALTH = "health"
KSERVE_URLS = "kserve_urls"
ADMIN = "admin"


class Operation(NamedTuple):
    name: str
    group: str
    method: str
    path: str  # API operations: under the prefix; the others: from the root
    fields: frozenset[str] = frozenset()  # documented request body fields
    mandatory: tuple[str, ...] = ()  # required by the spec: missing → 422 (or 400, as configured)
    has_body: bool = False
    # Served by the gateway through a backend (routing, storage, streaming): the provider calls the handler.
    through_backend: bool = False
    # Waits on an upstream: a client that disconnects cancels it (and so the upstream request).
    cancellable: bool = False


_CHAT_CREATE_FIELDS = frozenset(
    {
        "messages",
        "model",
        "audio",
        "frequency_penalty",
        "function_call",
        "functions",
        "logit_bias",
        "logprobs",
        "max_completion_tokens",
        "max_tokens",
        "metadata",
        "modalities",
        "moderation",
        "n",
        "parallel_tool_calls",
        "prediction",
        "presence_penalty",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning_effort",
        "response_format",
        "safety_identifier",
        "seed",
        "service_tier",
        "stop",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "user",
        "verbosity",
        "web_search_options",
    }
)
_RESPONSE_CREATE_FIELDS = frozenset(
    {
        "background",
        "context_management",
        "conversation",
        "include",
        "input",
        "instructions",
        "max_output_tokens",
        "max_tool_calls",
        "metadata",
        "model",
        "moderation",
        "parallel_tool_calls",
        "previous_response_id",
        "prompt",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "reasoning",
        "safety_identifier",
        "service_tier",
        "store",
        "stream",
        "stream_options",
        "temperature",
        "text",
        "tool_choice",
        "tools",
        "top_logprobs",
        "top_p",
        "truncation",
        "user",
    }
)
_INPUT_TOKENS_FIELDS = frozenset(
    {
        "conversation",
        "input",
        "instructions",
        "model",
        "parallel_tool_calls",
        "personality",
        "previous_response_id",
        "reasoning",
        "text",
        "tool_choice",
        "tools",
        "truncation",
    }
)
_COMPACT_FIELDS = frozenset(
    {
        "input",
        "instructions",
        "model",
        "previous_response_id",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "service_tier",
    }
)
_COMPLETION_CREATE_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "best_of",
        "echo",
        "frequency_penalty",
        "logit_bias",
        "logprobs",
        "max_tokens",
        "n",
        "presence_penalty",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "suffix",
        "temperature",
        "top_p",
        "user",
    }
)
_EMBEDDING_CREATE_FIELDS = frozenset({"input", "model", "dimensions", "encoding_format", "user"})
_IMAGE_CREATE_FIELDS = frozenset(
    {
        "prompt",
        "background",
        "model",
        "moderation",
        "n",
        "output_compression",
        "output_format",
        "partial_images",
        "quality",
        "response_format",
        "size",
        "stream",
        "style",
        "user",
    }
)

API_OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "create_chat_completion",
        CHAT_COMPLETIONS,
        "POST",
        "/chat/completions",
        _CHAT_CREATE_FIELDS,
        ("model", "messages"),
        has_body=True,
        through_backend=True,
        cancellable=True,
    ),
    Operation("list_chat_completions", CHAT_COMPLETIONS, "GET", "/chat/completions"),
    Operation("retrieve_chat_completion", CHAT_COMPLETIONS, "GET", "/chat/completions/{completion_id}"),
    Operation(
        "update_chat_completion",
        CHAT_COMPLETIONS,
        "POST",
        "/chat/completions/{completion_id}",
        frozenset({"metadata"}),
        ("metadata",),
        has_body=True,
    ),
    Operation("delete_chat_completion", CHAT_COMPLETIONS, "DELETE", "/chat/completions/{completion_id}"),
    Operation("list_chat_completion_messages", CHAT_COMPLETIONS, "GET", "/chat/completions/{completion_id}/messages"),
    # The Responses API (docs/responses.md). A background response runs in its own task: a client that leaves
    # cancels only its foreground work.
    Operation(
        "create_response",
        RESPONSES,
        "POST",
        "/responses",
        _RESPONSE_CREATE_FIELDS,
        has_body=True,
        through_backend=True,
        cancellable=True,
    ),
    Operation("retrieve_response", RESPONSES, "GET", "/responses/{response_id}"),
    Operation("delete_response", RESPONSES, "DELETE", "/responses/{response_id}"),
    Operation("list_response_input_items", RESPONSES, "GET", "/responses/{response_id}/input_items"),
    Operation(
        "count_response_input_tokens",
        RESPONSES,
        "POST",
        "/responses/input_tokens",
        _INPUT_TOKENS_FIELDS,
        has_body=True,
        cancellable=True,
    ),
    Operation("cancel_response", RESPONSES, "POST", "/responses/{response_id}/cancel"),
    Operation(
        "compact_response",
        RESPONSES,
        "POST",
        "/responses/compact",
        _COMPACT_FIELDS,
        ("model",),
        has_body=True,
        cancellable=True,
    ),
    Operation(
        "create_completion",
        COMPLETIONS,
        "POST",
        "/completions",
        _COMPLETION_CREATE_FIELDS,
        ("model", "prompt"),
        has_body=True,
        through_backend=True,
        cancellable=True,
    ),
    Operation(
        "create_embedding",
        EMBEDDINGS,
        "POST",
        "/embeddings",
        _EMBEDDING_CREATE_FIELDS,
        ("model", "input"),
        has_body=True,
        through_backend=True,
        cancellable=True,
    ),
    Operation(
        "create_image",
        IMAGES,
        "POST",
        "/images/generations",
        _IMAGE_CREATE_FIELDS,
        ("prompt",),
        has_body=True,
        through_backend=True,
        cancellable=True,
    ),
    Operation("list_models", MODELS, "GET", "/models"),
    Operation("retrieve_model", MODELS, "GET", "/models/{model:path}"),
)

# Outside the prefixes.
ROOT_OPERATIONS: tuple[Operation, ...] = (
    Operation("health", HEALTH, "GET", "/health"),
    Operation("health_ready", HEALTH, "GET", "/health/ready"),
)
# KServe-style per-model URLs (Seldon Core 2's OpenAI scheme; docs/backends-kserve.md): the model is in the path.
_V2 = "/v2/models/{model:path}"
KSERVE_OPERATIONS: tuple[Operation, ...] = (
    Operation("kserve_create_chat_completion", KSERVE_URLS, "POST", _V2 + "/infer/chat/completions", cancellable=True),
    Operation(
        "kserve_stream_chat_completion", KSERVE_URLS, "POST", _V2 + "/infer_stream/chat/completions", cancellable=True
    ),
    Operation("kserve_create_embedding", KSERVE_URLS, "POST", _V2 + "/infer/embeddings", cancellable=True),
    Operation("kserve_stream_embedding", KSERVE_URLS, "POST", _V2 + "/infer_stream/embeddings", cancellable=True),
    Operation("kserve_create_image", KSERVE_URLS, "POST", _V2 + "/infer/images/generations", cancellable=True),
    Operation("kserve_stream_image", KSERVE_URLS, "POST", _V2 + "/infer_stream/images/generations", cancellable=True),
)
# The admin API for keys and teams (docs/access.md): the master key or an admin key only.
ADMIN_OPERATIONS: tuple[Operation, ...] = (
    Operation("create_key", ADMIN, "POST", "/admin/keys", has_body=True),
    Operation("list_keys", ADMIN, "GET", "/admin/keys"),
    Operation("retrieve_key", ADMIN, "GET", "/admin/keys/{key_id}"),
    Operation("update_key", ADMIN, "POST", "/admin/keys/{key_id}", has_body=True),
    Operation("delete_key", ADMIN, "DELETE", "/admin/keys/{key_id}"),
    Operation("rotate_key", ADMIN, "POST", "/admin/keys/{key_id}/rotate", has_body=True),
    Operation("create_team", ADMIN, "POST", "/admin/teams", has_body=True),
    Operation("list_teams", ADMIN, "GET", "/admin/teams"),
    Operation("retrieve_team", ADMIN, "GET", "/admin/teams/{team_id}"),
    Operation("update_team", ADMIN, "POST", "/admin/teams/{team_id}", has_body=True),
    Operation("delete_team", ADMIN, "DELETE", "/admin/teams/{team_id}"),
    Operation("admin_openapi", ADMIN, "GET", "/admin/openapi.json"),
    Operation("usage", ADMIN, "GET", "/admin/usage"),
)
ALL_OPERATIONS: tuple[Operation, ...] = API_OPERATIONS + ROOT_OPERATIONS + KSERVE_OPERATIONS + ADMIN_OPERATIONS

BY_NAME: dict[str, Operation] = {op.name: op for op in API_OPERATIONS}
# The endpoint groups under the prefixes, in the table's order.
GROUPS: tuple[str, ...] = tuple(dict.fromkeys(op.group for op in API_OPERATIONS))
