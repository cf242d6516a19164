"""Who may reach the admin API (`/admin/…`): for now the master key only, compared in constant time.

One function, so that the key-based authentication (admin-role virtual keys) replaces it in one place.
"""

from __future__ import annotations

import hmac
from typing import Protocol

from manifold.config import AuthSettings
from manifold.errors import AuthenticationError

__all__ = ["require_admin"]


class _Headers(Protocol):
    def header(self, name: bytes) -> bytes | None: ...


def _presented(request: _Headers) -> bytes | None:
    """The key as real SDKs send it: `Authorization: Bearer …` (openai), `api-key` (Azure), `x-api-key`."""
    value = request.header(b"authorization")
    if value is not None:
        scheme, _, token = value.partition(b" ")
        return token.strip() if scheme.lower() == b"bearer" else None
    return request.header(b"api-key") or request.header(b"x-api-key")


def require_admin(request: _Headers, auth: AuthSettings) -> None:
    """Raise a 401 (OpenAI's envelope, `invalid_api_key`) unless the request carries the master key."""
    master = auth.master_key
    presented = _presented(request)
    if master is None:
        raise AuthenticationError(
            "The admin API needs a master key (auth.master_key); none is configured.", code="invalid_api_key"
        )
    if presented is None:
        raise AuthenticationError(
            "You didn't provide an API key. Provide the master key as 'Authorization: Bearer <key>'."
        )
    if not hmac.compare_digest(presented, master.encode()):
        raise AuthenticationError("Incorrect API key provided for the admin API.")
