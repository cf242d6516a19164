"""Inbound authentication (docs/access.md): the master key and virtual keys, as a request layer.

A client sends its key the ways the SDKs do: `Authorization: Bearer …` (OpenAI's), `api-key: …` (Azure's),
`x-api-key: …` (Anthropic-style). The master key is compared in constant time. A virtual key is found by the
SHA-256 of its secret through an in-process cache: a key looked up once is trusted for `auth.key_cache_ttl_s`,
its expiry checked on every request from the cached row. A change (revoke, block, update, rotate) empties the
cache of the replica that made it at once and, with `redis.url`, of every other replica through a pub/sub message
(`access/invalidation.py`); without Redis the others see it within the TTL.

Authentication is required when a master key is configured or once any virtual key exists. Whether one exists is
learnt when the store opens (the first API request waits for that, once) and again every TTL (a key created on
another replica), never by a database read per request. Without a master key, a database that cannot be reached
at start-up leaves that unknown: the server then serves without keys, and says so loudly, as it serves everything
that stores nothing while its database is down; configure a master key to refuse instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

from manifold.access import keys
from manifold.access.principal import CURRENT_PRINCIPAL, Principal
from manifold.access.static_keys import StaticKeys
from manifold.config import AuthSettings, RedisSettings
from manifold.errors import AuthenticationError, ManifoldError, ServiceUnavailableError
from manifold.observability.record import CURRENT
from manifold.observability.redaction import add_secrets

if TYPE_CHECKING:
    from manifold.access.invalidation import Invalidation
    from manifold.storage.store import Store

__all__ = ["MASTER", "AuthLayer", "Authenticator", "InvalidApiKeyError", "PermissionDeniedError"]

log = logging.getLogger("manifold.auth")

MASTER: Final = Principal(key_id=None, key_alias="master", admin=True)
_MAX_CACHED: Final = 10_000  # entries (valid keys and unknown secrets); emptied when full
_MAX_REDACTED: Final = 1_000  # virtual secrets registered by value (beyond: the `sk-mf-` pattern hides them)
# The admin API's paths (the master key or an admin key only, whether or not authentication is otherwise on).
# Only these: an app built on Manifold (manifold.frontend) may serve routes of its own under /admin.
ADMIN_PATHS: Final = ("/admin/keys", "/admin/teams", "/admin/usage", "/admin/openapi.json")


class InvalidApiKeyError(AuthenticationError):
    """401 as OpenAI sends it: `type: invalid_request_error`, `code: invalid_api_key`."""

    type = "invalid_request_error"


class PermissionDeniedError(ManifoldError):
    status = 403
    type = "invalid_request_error"
    default_code = "permission_denied"


def _missing() -> InvalidApiKeyError:
    return InvalidApiKeyError(
        "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
        "auth (i.e. Authorization: Bearer YOUR_KEY), or as the api-key or x-api-key header."
    )


def _incorrect(secret: str) -> InvalidApiKeyError:
    return InvalidApiKeyError(f"Incorrect API key provided: {keys.display_of(secret)}.")


class _Entry:
    """A cached lookup: the key's principal (None: no key has this secret), until when it is valid (unix
    seconds; expiry or the end of a rotation's grace), and why it is refused if it is (blocked)."""

    __slots__ = ("fetched", "principal", "refused", "valid_until")

    def __init__(
        self, principal: Principal | None, valid_until: float | None, refused: str | None, fetched: float
    ) -> None:
        self.principal = principal
        self.valid_until = valid_until
        self.refused = refused
        self.fetched = fetched


class Authenticator:
    def __init__(
        self, settings: AuthSettings, store: Store, redis: RedisSettings | None = None, host: str | None = None
    ) -> None:
        self.settings = settings
        self._host = host
        self.store = store
        self._master = settings.master_key.encode() if settings.master_key else None
        self.static = StaticKeys(settings)  # `auth.keys` in the config
        self.keys_exist = False
        self._learnt: asyncio.Event | None = None  # set once the first count of keys ended (or failed)
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}
        self._redacted: set[str] = set()
        self._ttl = settings.key_cache_ttl_s
        self._task: asyncio.Task[None] | None = None
        self._recount: asyncio.Task[None] | None = None
        self._warned_unknown = False
        self.invalidation: Invalidation | None = None
        if redis is not None and redis.url:
            from manifold.access.invalidation import Invalidation

            self.invalidation = Invalidation(redis, self.invalidate)

    @property
    def required(self) -> bool:
        return self._master is not None or self.keys_exist or bool(self.static.by_hash)

    @property
    def learning(self) -> asyncio.Event | None:
        """While the first count of keys is under way: what to wait for (None once known)."""
        event = self._learnt
        if event is None:  # an app mounted without lifespan: its first request starts it
            self.start()
            event = self._learnt
            assert event is not None
        return event if not event.is_set() else None

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._learnt = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._watch())
            if self.invalidation is not None:
                self.invalidation.start()

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.invalidation is not None:
            await self.invalidation.aclose()

    async def _watch(self) -> None:
        """Learn whether any virtual key exists now and every TTL."""
        assert self._learnt is not None
        try:
            await self.refresh()
        finally:
            self._learnt.set()
        if not self.required and self._host is not None and not is_loopback(self._host):
            log.warning(
                "auth: serving on %s, an address other machines can reach, with NO master key and NO virtual key: "
                "anyone who can reach this server can use it and spend its upstream keys. Set auth.master_key "
                "(e.g. ${MANIFOLD_MASTER_KEY}) or create a key (manifold keys create); see docs/access.md",
                self._host,
            )
        while True:
            await asyncio.sleep(self._ttl)
            await self.refresh()

    async def refresh(self) -> None:
        try:
            access = await self.store.access()
            self.keys_exist = await access.any_key()
            self._warned_unknown = False
        except ServiceUnavailableError:
            if not self._warned_unknown and self._master is None and not self.keys_exist:
                self._warned_unknown = True
                log.warning(
                    "auth: the database is unavailable, so the virtual keys cannot be read: serving WITHOUT "
                    "authentication until it is back (set auth.master_key to refuse requests instead)"
                )

    def invalidate(self, reason: str = "") -> None:
        """Forget every cached lookup (a key or team changed here or on another replica)."""
        self._cache.clear()
        if reason == "created":
            self.keys_exist = True
        elif self._task is not None and (self._recount is None or self._recount.done()):
            self._recount = asyncio.get_running_loop().create_task(self.refresh())  # the last key may be gone

    async def changed(self, reason: str) -> None:
        """A key or team changed in the database: forget here, then tell the other replicas."""
        self.invalidate(reason)
        if self.invalidation is not None:
            await self.invalidation.publish(reason)

    # -- requests ------------------------------------------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> Principal:
        """The principal of `secret`, or raise (401; 503 when a key cannot be looked up)."""
        if not secret:
            raise _missing()
        raw = secret.encode("utf-8", "surrogateescape")
        master = self._master
        if master is not None and hmac.compare_digest(raw, master):
            return MASTER
        static = self.static.resolve(raw)
        if static is not None:
            return static
        digest = hashlib.sha256(raw).hexdigest()
        entry = self._cache.get(digest)
        if entry is None or time.monotonic() - entry.fetched > self._ttl:
            entry = await self._lookup(digest)
            if entry.principal is not None and digest not in self._redacted and len(self._redacted) < _MAX_REDACTED:
                self._redacted.add(digest)
                add_secrets([secret])
        principal = entry.principal
        if principal is None:
            raise _incorrect(secret)
        if entry.refused is not None:
            raise InvalidApiKeyError(entry.refused.format(keys.display_of(secret)))
        if entry.valid_until is not None and time.time() >= entry.valid_until:
            raise InvalidApiKeyError(f"The API key {keys.display_of(secret)} has expired.")
        return principal

    async def _lookup(self, digest: str) -> _Entry:
        pending = self._inflight.get(digest)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry] = asyncio.get_running_loop().create_future()
        self._inflight[digest] = future
        try:
            entry = await self._read(digest)
            future.set_result(entry)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters re-raise it
            raise
        finally:
            del self._inflight[digest]
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()
        self._cache[digest] = entry
        return entry

    async def _read(self, digest: str) -> _Entry:
        access = await self.store.access()
        now = time.time()
        found = await access.lookup(digest, int(now))
        fetched = time.monotonic()
        if found is None:
            return _Entry(None, None, None, fetched)
        key, team = found.key, found.team
        refused = None
        if key["blocked"]:
            refused = "The API key {} is blocked."
        elif key["team_id"] is not None and (team is None or team["blocked"]):
            refused = "The API key {}'s team is blocked."
        ends = [t for t in (key["expires_at"], key["previous_expires_at"] if found.previous else None) if t]
        return _Entry(keys.principal_of(key, team), min(ends) if ends else None, refused, fetched)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def secret_of(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The key a request carries: `Authorization: Bearer`, else `api-key`, else `x-api-key` (in that order
    whatever their order in the request; of a header sent twice, the last). A dict made in C and three lookups,
    where a loop in Python over a client's dozen headers cost ~90 bytecodes a request."""
    found = dict(headers)
    value = found.get(b"authorization")
    if value is not None:
        if value[:7].lower() == b"bearer ":
            return value[7:].strip().decode("latin-1")
        return ""  # another scheme: no key we know
    value = found.get(b"api-key")
    if value is None:
        value = found.get(b"x-api-key")
        if value is None:
            return None
    return value.strip().decode("latin-1")


ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class AuthLayer:
    """The request layer: resolves the request's key to a `Principal` (CURRENT_PRINCIPAL, and the observability
    record's `key_alias`), or answers 401 (403 for the admin API with a key that is not an admin's). The paths in
    `open_paths` (health, metrics) need no key."""

    __slots__ = ("app", "auth", "open_paths")

    def __init__(self, app: ASGIApp, auth: Authenticator, open_paths: Iterable[str]) -> None:
        self.app = app
        self.auth = auth
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        auth = self.auth
        learning = auth.learning
        if learning is not None:
            await learning.wait()
        path: str = scope["path"]
        admin = path.startswith(ADMIN_PATHS)
        if not auth.required and not admin:
            await self.app(scope, receive, send)
            return
        try:
            principal = await auth.authenticate(secret_of(scope["headers"]))
            if admin and not principal.admin:
                raise PermissionDeniedError("This API key may not use the admin API.")
        except ManifoldError as exc:
            await _refuse(scope, receive, send, exc)
            return
        rec = CURRENT.get()
        if rec is not None:
            rec.key_alias = principal.key_alias or principal.key_id
        token = CURRENT_PRINCIPAL.set(principal)
        try:
            await self.app(scope, receive, send)
        finally:
            CURRENT_PRINCIPAL.reset(token)


REQUEST_ID_SCOPE_KEY: Final = "manifold.request_id"  # where server/middleware/request_id.py puts it
_SAFE_REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:\-]{1,128}$")


async def _refuse(scope: Any, receive: Any, send: Any, exc: ManifoldError) -> None:
    """The error in OpenAI's envelope, with the request's id (named by the request-id layer outside, else here)."""
    request_id: str | None = scope.get(REQUEST_ID_SCOPE_KEY)
    if request_id is None:
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _SAFE_REQUEST_ID.match(value):
                    request_id = value.decode()
                break
        request_id = request_id or "req_" + os.urandom(12).hex()
    rec = CURRENT.get()
    if rec is not None:
        rec.request_id = request_id
    body = exc.to_json()
    headers = [
        (b"content-type", b"application/json"),
        (b"x-request-id", request_id.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    if exc.status_code == 401:
        headers.append((b"www-authenticate", b'Bearer realm="manifold"'))
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})
