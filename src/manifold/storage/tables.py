"""The tables as the code reads and writes them today (SQLAlchemy Core).

The migrations in `migrations.py` create and change these tables; each migration keeps its own frozen copy
of the DDL it ran, so this module can follow the newest schema without rewriting history. A feature that
stores something new (stored responses and their input items, keys, spend…) adds its tables here and a
migration that creates them.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, ForeignKey, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()


def _owner_id(name: str, owner: str) -> Column[str]:
    """The key part of a child row that names the row it belongs to (and goes with it when that is deleted)."""
    return Column(name, String(128), ForeignKey(f"{owner}.id", ondelete="CASCADE"), primary_key=True)


def _position() -> Column[int]:
    """The key part of an ordered child row: 0, 1, … in order."""
    return Column("position", Integer, primary_key=True, autoincrement=False)


# SQLite only aliases the rowid (and so auto-increments) for a column declared exactly INTEGER PRIMARY KEY.
Serial = BigInteger().with_variant(Integer(), "sqlite")

schema_migrations = Table(
    "manifold_schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", BigInteger, nullable=False),  # unix milliseconds
)

# One row per chat completion created with `store: true`. `seq` orders them (the order they were stored);
# `completion` is the chat.completion object as sent to the client, JSON, without `metadata`, which lives in
# its own column (it can be updated) and, for filtering, in chat_completion_metadata.
chat_completions = Table(
    "chat_completions",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("id", String(128), nullable=False, unique=True),
    Column("model", Text, nullable=False),
    Column("created", BigInteger, nullable=False),
    Column("metadata_json", Text, nullable=False),
    Column("request_id", String(128), nullable=True),
    Column("completion", Text, nullable=False),
    Column("stored_at", BigInteger, nullable=False),  # unix milliseconds
    Index("ix_chat_completions_model_seq", "model", "seq"),  # GET /chat/completions?model=…, in order
    sqlite_autoincrement=True,  # never reuse a deleted seq: cursors stay ordered
)

# The request's messages, in order (`position` 0, 1, …), each the client's JSON object.
chat_completion_messages = Table(
    "chat_completion_messages",
    metadata,
    _owner_id("completion_id", "chat_completions"),
    _position(),
    Column("message", Text, nullable=False),
)

# The metadata of each stored completion as key/value rows: `metadata[k]=v` filters are indexed lookups on
# every backend (no JSON functions, whose dialects differ).
chat_completion_metadata = Table(
    "chat_completion_metadata",
    metadata,
    _owner_id("completion_id", "chat_completions"),
    Column("key", String(64), primary_key=True),
    Column("value", String(512), nullable=False),
    Index("ix_chat_completion_metadata_key_value", "key", "value"),
)


# One row per response created with `store: true` (the Responses API). `response` is the Response object as
# last sent, JSON. Background responses are written when queued and updated as they run: `owner` names the
# process running one and `lease_until` (unix ms) how long that claim holds without renewal; an unfinished
# response whose lease ran out lost its process (crash, restart) and is marked failed.
responses = Table(
    "responses",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("id", String(128), nullable=False, unique=True),
    Column("model", Text, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("status", String(32), nullable=False),
    Column("background", Integer, nullable=False),  # 0/1
    Column("previous_response_id", Text, nullable=True),
    Column("request_id", String(128), nullable=True),
    Column("response", Text, nullable=False),
    Column("stored_at", BigInteger, nullable=False),  # unix milliseconds
    Column("updated_at", BigInteger, nullable=False),  # unix milliseconds
    Column("owner", String(64), nullable=True),
    Column("lease_until", BigInteger, nullable=True),  # unix milliseconds
    Index("ix_responses_status_lease", "status", "lease_until"),
    sqlite_autoincrement=True,
)

# A response's own input items, in order (`position` 0, 1, …), each as `GET /responses/{id}/input_items`
# lists it (with its `id`).
response_input_items = Table(
    "response_input_items",
    metadata,
    _owner_id("response_id", "responses"),
    _position(),
    Column("item_id", Text, nullable=False),
    Column("item", Text, nullable=False),
    Index("ix_response_input_items_item", "response_id", "item_id"),
)


def _limit_columns() -> list[Column[object]]:
    """The limits and budget a key and a team both carry (access/principal.py `Limits`); money in integer
    micro-dollars, times in unix seconds."""
    return [
        Column("models_json", Text, nullable=True),  # JSON list of names/wildcards/aliases; NULL: every model
        Column("rpm", BigInteger, nullable=True),
        Column("tpm", BigInteger, nullable=True),
        Column("max_parallel_requests", BigInteger, nullable=True),
        Column("model_limits_json", Text, nullable=True),  # {group: {rpm, tpm, max_parallel_requests}}
        Column("max_budget_micros", BigInteger, nullable=True),
        Column("budget_duration", String(16), nullable=True),  # daily, weekly, monthly; NULL: never resets
        Column("budget_reset_at", BigInteger, nullable=True),
        Column("metadata_json", Text, nullable=False),
        Column("blocked", Integer, nullable=False),  # 0/1
        Column("created_at", BigInteger, nullable=False),
        Column("updated_at", BigInteger, nullable=False),
        Column("mcp_servers_json", Text, nullable=True),  # JSON list of MCP server labels; NULL: every server
    ]


# Teams (docs/access.md): a request must pass its key's limits and its team's.
access_teams = Table(
    "access_teams",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("alias", Text, nullable=True),
    *_limit_columns(),
    sqlite_autoincrement=True,
)

# Virtual keys. The secret itself is never stored: `key_hash` is the SHA-256 (hex) of it, `display` a short form
# that shows only its end (`sk-mf-...abcd`). A rotated key keeps its old secret's hash in `previous_hash`,
# accepted until `previous_expires_at`.
access_keys = Table(
    "access_keys",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("id", String(64), nullable=False, unique=True),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("display", String(32), nullable=False),
    Column("alias", Text, nullable=True),
    Column("user_id", Text, nullable=True),
    Column("team_id", String(64), nullable=True),
    Column("admin", Integer, nullable=False),  # 0/1: may use the admin API
    Column("expires_at", BigInteger, nullable=True),
    Column("previous_hash", String(64), nullable=True),
    Column("previous_expires_at", BigInteger, nullable=True),
    *_limit_columns(),
    Index("ix_access_keys_previous_hash", "previous_hash"),
    Index("ix_access_keys_team", "team_id", "seq"),
    sqlite_autoincrement=True,
)

# The usage ledger: one row per API request (access/ledger.py writes them in batches). `created_at` is when the
# request arrived (unix milliseconds); `model` the group the client asked for, `deployment` the one that
# answered last; tokens as the upstream reported them (None: not reported); `cost_micros` integer
# micro-dollars (None: unknown). `key_id` None: the master key, or access control off.
usage = Table(
    "usage",
    metadata,
    Column("seq", Serial, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=True),
    Column("created_at", BigInteger, nullable=False),  # unix milliseconds
    Column("key_id", String(64), nullable=True),
    Column("key_alias", Text, nullable=True),
    Column("team_id", String(64), nullable=True),
    Column("user_id", Text, nullable=True),
    Column("model", Text, nullable=True),
    Column("deployment", Text, nullable=True),
    Column("endpoint", Text, nullable=True),  # the route template
    Column("status", Integer, nullable=False),
    Column("stream", Boolean, nullable=False),
    Column("input_tokens", BigInteger, nullable=True),
    Column("cached_input_tokens", BigInteger, nullable=True),
    Column("output_tokens", BigInteger, nullable=True),
    Column("reasoning_tokens", BigInteger, nullable=True),
    Column("cost_micros", BigInteger, nullable=True),
    Column("latency_ms", Integer, nullable=False),
    Column("ttft_ms", Integer, nullable=True),
    Column("attempts", Integer, nullable=False),
    Index("ix_usage_created_at", "created_at"),  # time ranges
    Index("ix_usage_key_created_at", "key_id", "created_at"),  # a key's spend over a range
    Index("ix_usage_team_created_at", "team_id", "created_at"),  # a team's
    sqlite_autoincrement=True,
)
