"""Keys declared in the config (`auth.keys`, docs/access.md "static keys"): a key's limits and budget, its team.

The secrets are hashed (SHA-256) when the config is loaded; only the hashes are kept here, and `resolve_static`
looks a presented secret up by its hash. `StaticKeyAuth` is a minimal authentication layer for them (and the
master key): it reads the key the ways SDKs send it (`Authorization: Bearer`, `api-key`, `x-api-key`), answers
401 `invalid_api_key` without one, and sets `CURRENT_PRINCIPAL` for the request. Budget periods of a static key
start at the Unix epoch (daily: at 00:00 UTC).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from manifold.access.pricing import micros
from manifold.access.principal import CURRENT_PRINCIPAL, Limits, ModelLimits, Principal
from manifold.config import AuthSettings, StaticKey, StaticTeam
from manifold.errors import AuthenticationError

__all__ = ["StaticKeyAuth", "StaticKeys", "resolve_static"]

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
    )


class StaticKeys:
    """The hashed static keys and the master key's hash."""

    def __init__(self, settings: AuthSettings) -> None:
        self.by_hash: dict[bytes, Principal] = {_digest(k.key): principal_of(k, settings.teams) for k in settings.keys}
        self.master = None if settings.master_key is None else _digest(settings.master_key)

    @property
    def enabled(self) -> bool:
        return self.master is not None or bool(self.by_hash)

    def resolve(self, secret: str) -> Principal | None:
        digest = _digest(secret)
        if self.master is not None and hmac.compare_digest(digest, self.master):
            return MASTER
        return self.by_hash.get(digest)  # a lookup by a hash: the secret's bytes are never compared


MASTER = Principal(key_id=None, key_alias="master", admin=True)
_keys: StaticKeys | None = None


def configure(settings: AuthSettings) -> StaticKeys:
    global _keys
    _keys = StaticKeys(settings)
    return _keys


def resolve_static(secret: str) -> Principal | None:
    """The principal of a static key (or the master key), None for any other secret."""
    return None if _keys is None else _keys.resolve(secret)


_UNAUTHENTICATED = frozenset({"/health", "/health/ready"})


def _presented(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            text = value.decode("latin-1")
            if text[:7].lower() == "bearer ":
                return text[7:].strip()
        elif name in (b"api-key", b"x-api-key"):
            return value.decode("latin-1").strip()
    return None


class StaticKeyAuth:
    """A request layer: the request's principal from its key (401 without a known one)."""

    def __init__(self, inner: ASGIApp, keys: StaticKeys, open_paths: Iterable[str] = ()) -> None:
        self.inner = inner
        self.keys = keys
        self.open_paths = _UNAUTHENTICATED | frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.inner(scope, receive, send)
            return
        secret = _presented(scope["headers"])
        principal = None if not secret else self.keys.resolve(secret)
        if principal is None:
            error = AuthenticationError(
                "Incorrect API key provided. You can find your API key in your Manifold administrator's keys."
                if secret
                else "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
            body = error.to_json()
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        token = CURRENT_PRINCIPAL.set(principal)
        try:
            await self.inner(scope, receive, send)
        finally:
            CURRENT_PRINCIPAL.reset(token)
