"""Keys declared in the config (`auth.keys`, docs/access.md "static keys"): a key's limits and budget, its team.

The secrets are hashed (SHA-256) when the config is loaded; only the hashes are kept here, and the authentication
layer (`access.auth.Authenticator`) looks a presented secret up by its hash, after the master key and before the
virtual keys in the database. Budget periods of a static key
start at the Unix epoch (daily: at 00:00 UTC).
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from manifold.access.pricing import micros
from manifold.access.principal import Limits, ModelLimits, Principal, both
from manifold.config import AuthSettings, StaticKey, StaticTeam

__all__ = ["StaticKeys"]

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Any, Any], Awaitable[None]]


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _team_limits(team: StaticTeam) -> Limits:
    return Limits(
        rpm=team.rpm,
        tpm=team.tpm,
        max_parallel_requests=team.max_parallel_requests,
        max_budget_micros=None if team.max_budget is None else micros(team.max_budget),
        budget_duration=team.budget_duration,
    )


def principal_of(key: StaticKey, teams: dict[str, StaticTeam]) -> Principal:
    team = teams.get(key.team) if key.team is not None else None
    return Principal(
        key_id=f"static-{key.alias}",
        key_alias=key.alias,
        user=key.user,
        team_id=None if key.team is None else f"static-{key.team}",
        team_alias=key.team,
        models=None if key.models is None else tuple(key.models),
        key_limits=Limits(
            rpm=key.rpm,
            tpm=key.tpm,
            max_parallel_requests=key.max_parallel_requests,
            max_budget_micros=None if key.max_budget is None else micros(key.max_budget),
            budget_duration=key.budget_duration,
            model_limits={
                name: ModelLimits(m.rpm, m.tpm, m.max_parallel_requests) for name, m in key.model_limits.items()
            },
        ),
        team_limits=None if team is None else _team_limits(team),
        mcp_servers=both(key.mcp_servers, None if team is None else team.mcp_servers),
    )


class StaticKeys:
    """The static keys, by the hash of their secrets."""

    def __init__(self, settings: AuthSettings) -> None:
        self.by_hash: dict[bytes, Principal] = {_digest(k.key): principal_of(k, settings.teams) for k in settings.keys}

    def resolve(self, secret: bytes) -> Principal | None:
        """A lookup by the secret's hash: its bytes are never compared."""
        return self.by_hash.get(hashlib.sha256(secret).digest())
