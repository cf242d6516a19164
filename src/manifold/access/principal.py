"""Who is calling: the `Principal` the authentication layer resolves a request's key to.

The authentication layer (`access.auth`) sets it for the request's task (`CURRENT_PRINCIPAL`, a context variable,
like the observability record), so the router's admission (limits, budgets) and the endpoints read it without it
travelling through every signature. No principal: access control is off (no master key, no virtual key).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["CURRENT_PRINCIPAL", "BudgetDuration", "Limits", "ModelLimits", "Principal", "both"]

BudgetDuration = Literal["daily", "weekly", "monthly"]


@dataclass(frozen=True, slots=True)
class ModelLimits:
    """A key's limits for one model group (by the name the router resolves)."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel_requests: int | None = None


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits and budget of a key or a team. Money is integer micro-dollars (1 USD = 1_000_000)."""

    rpm: int | None = None
    tpm: int | None = None
    max_parallel_requests: int | None = None
    max_budget_micros: int | None = None
    budget_duration: BudgetDuration | None = None  # None: the budget never resets
    model_limits: Mapping[str, ModelLimits] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Principal:
    """`key_id` None: the master key (admin, no limits). `models` None: every model; `team_models` likewise for
    the key's team (a request must be allowed by both). `mcp_servers`: the configured MCP servers (labels) and
    single tools (`label__tool`) the key may use, its own list intersected with its team's (None: every server;
    empty: none)."""

    key_id: str | None
    key_alias: str | None = None
    user: str | None = None
    team_id: str | None = None
    team_alias: str | None = None
    admin: bool = False
    models: tuple[str, ...] | None = None
    key_limits: Limits = field(default_factory=Limits)
    team_limits: Limits | None = None
    created_at: int = 0  # the key's creation time (unix seconds): budget periods start from it
    team_models: tuple[str, ...] | None = None
    mcp_servers: frozenset[str] | None = None


def both(key: Iterable[str] | None, team: Iterable[str] | None) -> frozenset[str] | None:
    """The MCP `mcp_servers` entries allowed by a key's list and its team's (None: a list that allows every
    server). An entry is a server's label (all its tools) or `label__tool` (that tool only; a label has no `__`):
    `web` in one list and `web__echo` in the other allow `web__echo`."""
    if key is None:
        return None if team is None else frozenset(team)
    if team is None:
        return frozenset(key)
    k, t = frozenset(key), frozenset(team)
    narrower = {e for e in k if e.split("__", 1)[0] in t} | {e for e in t if e.split("__", 1)[0] in k}
    return (k & t) | narrower


CURRENT_PRINCIPAL: Final[contextvars.ContextVar[Principal | None]] = contextvars.ContextVar(
    "manifold_principal", default=None
)
