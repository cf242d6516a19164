"""The admission counters in Redis (`redis.url`): shared by every worker and replica, exact across them.

One Lua script per request on the hot path (EVALSHA: checks every limit and budget, then counts, atomically;
Redis's own clock, so replicas' clocks do not matter), waited for; one at the request's end (releases the
in-flight slot, corrects the token reservation to the real usage, adds the cost to the budgets), written to
Redis's socket at once and not waited for (`release`). Same windows as
`MemoryCounters` (access/limits.py): 60 one-second buckets in a hash per counter, in-flight request ids in a
sorted set scored by their deadline, a budget period's spend in one integer key that expires after the period.

The scripts go over one pipelined connection (access/resp.py): the admissions of the requests that arrive in
the same turn of the event loop are written together; each is still its own atomic script.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, NamedTuple

import hiredis

from manifold.access.limits import IN_FLIGHT_TTL_S, Budget, Scope, Verdict
from manifold.access.resp import Detached, RespConnection, RespError, array_header, bulk

__all__ = ["RedisCounters"]

_ADMIT: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1])
local nowms = now * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local rid = ARGV[3]
local ttl = tonumber(ARGV[4])
local nb = #KEYS - 3 * n
for j = 1, nb do
  local max = tonumber(ARGV[4 + 3 * n + j])
  local spent = tonumber(redis.call('GET', KEYS[3 * n + j]) or '0')
  if spent >= max then return {'budget', j, max, spent, 0, now} end
end
local function window(key)
  local all = redis.call('HGETALL', key)
  local used = 0
  local secs = {}
  local floor = now - 60
  for i = 1, #all, 2 do
    local s = tonumber(all[i])
    local c = tonumber(all[i + 1])
    if s <= floor then redis.call('HDEL', key, all[i]) else used = used + c; secs[#secs + 1] = {s, c} end
  end
  table.sort(secs, function(a, b) return a[1] < b[1] end)
  return used, secs
end
local function frees_in(secs, need)
  local freed = 0
  for _, e in ipairs(secs) do
    freed = freed + e[2]
    if freed >= need then return (e[1] + 60) * 1000 - nowms end
  end
  return 0
end
local used_r = {}
local used_t = {}
for i = 0, n - 1 do
  local rpm = tonumber(ARGV[5 + 3 * i])
  local tpm = tonumber(ARGV[6 + 3 * i])
  local par = tonumber(ARGV[7 + 3 * i])
  if par >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[3 * i + 3], '-inf', now)
    local held = redis.call('ZCARD', KEYS[3 * i + 3])
    if held >= par then return {'parallel', i + 1, par, held, 1000, now} end
  end
  if rpm >= 0 then
    local used, secs = window(KEYS[3 * i + 1])
    if used + 1 > rpm then return {'requests', i + 1, rpm, used, frees_in(secs, used + 1 - rpm), now} end
    used_r[i] = used
  end
  if tpm >= 0 then
    local used, secs = window(KEYS[3 * i + 2])
    if used + tokens > tpm then
      local wait = 60000
      if tokens <= tpm then wait = frees_in(secs, used + tokens - tpm) end
      return {'tokens', i + 1, tpm, used, wait, now}
    end
    used_t[i] = used
  end
end
local reset = (now + 60) * 1000 - nowms
local out = {'ok', 0, 0, 0, 0, now, -1, 0, reset, -1, 0, reset}
for i = 0, n - 1 do
  local rpm = tonumber(ARGV[5 + 3 * i])
  local tpm = tonumber(ARGV[6 + 3 * i])
  local par = tonumber(ARGV[7 + 3 * i])
  if par >= 0 then
    redis.call('ZADD', KEYS[3 * i + 3], now + ttl, rid)
    redis.call('EXPIRE', KEYS[3 * i + 3], ttl)
  end
  if rpm >= 0 then
    redis.call('HINCRBY', KEYS[3 * i + 1], now, 1)
    redis.call('EXPIRE', KEYS[3 * i + 1], 62)
    local left = rpm - used_r[i] - 1
    if out[7] < 0 or left < out[8] then out[7] = rpm; out[8] = left end
  end
  if tpm >= 0 then
    redis.call('HINCRBY', KEYS[3 * i + 2], now, tokens)
    redis.call('EXPIRE', KEYS[3 * i + 2], 62)
    local left = tpm - used_t[i] - tokens
    if out[10] < 0 or left < out[11] then out[10] = tpm; out[11] = left end
  end
end
return out
"""

_RELEASE: Final = """
local n = tonumber(ARGV[1])
local second = ARGV[2]
local delta = tonumber(ARGV[3])
local rid = ARGV[4]
local cost = tonumber(ARGV[5])
for i = 0, n - 1 do
  if delta ~= 0 and ARGV[6 + 2 * i] == '1' and redis.call('HEXISTS', KEYS[2 * i + 1], second) == 1 then
    if redis.call('HINCRBY', KEYS[2 * i + 1], second, delta) < 0 then redis.call('HSET', KEYS[2 * i + 1], second, 0) end
  end
  if ARGV[7 + 2 * i] == '1' then redis.call('ZREM', KEYS[2 * i + 2], rid) end
end
if cost > 0 then
  for j = 1, #KEYS - 2 * n do
    redis.call('INCRBY', KEYS[2 * n + j], cost)
    redis.call('EXPIREAT', KEYS[2 * n + j], tonumber(ARGV[5 + 2 * n + j]))
  end
end
return 1
"""


log = logging.getLogger("manifold.access")


def _log_release_failure(request_id: str, exc: BaseException) -> None:
    log.error("request %s: releasing its limits failed (%s)", request_id, type(exc).__name__)


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # Redis names scripts by their SHA-1


_ADMIT_SHA: Final = _sha(_ADMIT)
_RELEASE_SHA: Final = _sha(_RELEASE)
_SCRIPTS: Final = {_ADMIT_SHA: _ADMIT, _RELEASE_SHA: _RELEASE}


_FRAMES_KEPT: Final = 4096


class _Frames(NamedTuple):
    scopes: list[Scope]
    budgets: list[Budget]
    admit_head: bytes
    admit_tail: bytes
    release_head: bytes
    release_tail: bytes


def admit_frame(f: _Frames, tokens: int, request_id: str) -> bytes:
    """The admission's EVALSHA: the packed head, `bulk(tokens)`, `bulk(request_id)`, the packed tail, in one
    format (`bulk` twice and a join cost several times more)."""
    t = b"%d" % tokens
    rid = request_id.encode()
    return b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (f.admit_head, len(t), t, len(rid), rid, f.admit_tail)


def release_frame(f: _Frames, second: int, token_delta: int, request_id: str, cost: int) -> bytes:
    """The release's EVALSHA: the packed head, `bulk` of the second, the token correction, the request id and
    the cost, the packed tail."""
    a, b, rid, c = b"%d" % second, b"%d" % token_delta, request_id.encode(), b"%d" % cost
    return b"%b$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n%b" % (
        f.release_head,
        len(a),
        a,
        len(b),
        b,
        len(rid),
        rid,
        len(c),
        c,
        f.release_tail,
    )


_PING: Final = b"*1\r\n$4\r\nPING\r\n"


class _Release(Detached):
    """A release written and not waited for: a failure goes to `RedisCounters._release_failed`."""

    __slots__ = ("counters", "frame", "request_id")

    def __init__(self, counters: RedisCounters, frame: bytes, request_id: str) -> None:
        self.counters = counters
        self.frame = frame
        self.request_id = request_id

    def failed(self, exc: BaseException) -> None:
        self.counters._release_failed(self.frame, self.request_id, exc)


class RedisCounters:
    def __init__(self, url: str, timeout_s: float, prefix: str) -> None:
        self.connection = RespConnection(url, timeout_s)
        self.prefix = prefix
        self.round_trips = 0  # scripts sent (those of one event-loop turn share one write)
        self.failures: tuple[type[BaseException], ...] = (RespError, OSError, TimeoutError, hiredis.HiredisError)
        self._packed: dict[int, _Frames] = {}
        self._retries: set[asyncio.Task[None]] = set()
        # Told of a release that failed after it was written (set by `Admission`: it counts and logs it).
        self.on_release_failed: Callable[[str, BaseException], None] = _log_release_failure

    def _frames(self, scopes: list[Scope], budgets: list[Budget]) -> _Frames:
        """The two scripts' commands for these scopes and budgets, packed but for the arguments that change per
        request: built once per `Admission.plan` (the same lists while it lasts), where packing every argument
        of each command cost several microseconds a request."""
        found = self._packed.get(id(scopes))
        if found is not None and found.scopes is scopes and found.budgets is budgets:
            return found
        p = self.prefix
        admit_keys: list[str] = []
        admit_limits: list[Any] = []
        release_keys: list[str] = []
        release_flags: list[str] = []
        for s in scopes:
            admit_keys += (f"{p}rl:{s.id}:r", f"{p}rl:{s.id}:t", f"{p}rl:{s.id}:p")
            admit_limits += (_limit(s.rpm), _limit(s.tpm), _limit(s.parallel))
            release_keys += (f"{p}rl:{s.id}:t", f"{p}rl:{s.id}:p")
            release_flags += ("1" if s.tpm is not None else "0", "1" if s.parallel is not None else "0")
        budget_keys = [f"{p}budget:{b.id}" for b in budgets]
        admit_keys += budget_keys
        release_keys += budget_keys
        # EVALSHA sha numkeys KEYS… ARGV: admit [n, tokens, rid, ttl, limits…, budget maxima…];
        # release [n, second, delta, rid, cost, flags…, budget ends…].
        admit_argc = 3 + len(admit_keys) + 4 + len(admit_limits) + len(budgets)
        admit_head = b"".join(
            [array_header(admit_argc), bulk("EVALSHA"), bulk(_ADMIT_SHA), bulk(len(admit_keys))]
            + [bulk(k) for k in admit_keys]
            + [bulk(len(scopes))]
        )
        admit_tail = b"".join(
            [bulk(IN_FLIGHT_TTL_S)] + [bulk(v) for v in admit_limits] + [bulk(b.max_micros) for b in budgets]
        )
        release_argc = 3 + len(release_keys) + 5 + len(release_flags) + len(budgets)
        release_head = b"".join(
            [array_header(release_argc), bulk("EVALSHA"), bulk(_RELEASE_SHA), bulk(len(release_keys))]
            + [bulk(k) for k in release_keys]
            + [bulk(len(scopes))]
        )
        release_tail = b"".join([bulk(f) for f in release_flags] + [bulk(b.keep_until) for b in budgets])
        made = _Frames(scopes, budgets, admit_head, admit_tail, release_head, release_tail)
        if len(self._packed) >= _FRAMES_KEPT:
            self._packed.clear()
        self._packed[id(scopes)] = made
        return made

    async def _script(self, sha: str, frame: bytes) -> Any:
        self.round_trips += 1
        try:
            return await self.connection.call_frame(frame)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # First use on this Redis (or it restarted): load the scripts, then run this one.
        await self._load_scripts()
        return await self.connection.call_frame(frame)

    async def _load_scripts(self) -> None:
        for script in _SCRIPTS.values():  # both: a release follows each admission without waiting for it
            await self.connection.call("SCRIPT", "LOAD", script)

    async def admit(self, scopes: list[Scope], tokens: int, budgets: list[Budget], request_id: str) -> Verdict:
        frame = admit_frame(self._frames(scopes, budgets), tokens, request_id)
        protocol = self.connection.ready()
        if protocol is None:  # not connected yet (or Redis was down): connect first
            out = await self._script(_ADMIT_SHA, frame)
        else:  # the reply awaited here, not through two more coroutines (each resumed when it comes)
            self.round_trips += 1
            try:
                out = await protocol.send_frame(frame)
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                await self._load_scripts()  # first use on this Redis, or it restarted
                out = await self.connection.call_frame(frame)
        # The script's numbers come back as Redis integers (hiredis: ints), its status as a bulk string.
        status = out[0]
        if status != b"ok":
            return self._refused(out, scopes, tokens, budgets)
        # Every field in the one constructor call (msgspec's, in C): a struct's attribute writes are slow ones.
        requests, tokens_limit = out[6], out[9]
        return Verdict(
            second=out[5],
            req_limit=requests if requests >= 0 else None,
            req_remaining=out[7],
            req_reset_ms=out[8],
            tok_limit=tokens_limit if tokens_limit >= 0 else None,
            tok_remaining=max(0, out[10]),
            tok_reset_ms=out[11],
        )

    @staticmethod
    def _refused(out: list[Any], scopes: list[Scope], tokens: int, budgets: list[Budget]) -> Verdict:
        status = out[0].decode() if isinstance(out[0], bytes) else str(out[0])
        index = int(out[1]) - 1
        v = Verdict(second=int(out[5]))
        v.refused = status
        v.scope = budgets[index].name if status == "budget" else scopes[index].name
        v.limit, v.used = int(out[2]), int(out[3])
        v.requested = tokens if status == "tokens" else 1
        v.retry_after_s = max(0, int(out[4])) / 1000
        return v

    def release(
        self, scopes: list[Scope], second: int, token_delta: int, budgets: list[Budget], cost: int, request_id: str
    ) -> Awaitable[Any] | None:
        """Written to Redis at once and not waited for (None) when the connection is up: Redis runs it before
        any command sent after it, by this process or (sent after this request's answer reached its client)
        by another replica. Its reply is read when it comes; a failure is reported to `on_release_failed`."""
        if not cost and not any(s.parallel is not None or (s.tpm is not None and token_delta) for s in scopes):
            return None  # nothing to release: no round trip
        f = self._frames(scopes, budgets)
        frame = release_frame(f, second, token_delta, request_id, cost)
        protocol = self.connection.ready()
        if protocol is None:  # not connected (Redis was down): connect and wait, as an admission does
            return self._script(_RELEASE_SHA, frame)
        self.round_trips += 1
        protocol.send_detached(frame, _Release(self, frame, request_id))
        return None

    def _release_failed(self, frame: bytes, request_id: str, exc: BaseException) -> None:
        if isinstance(exc, RespError) and str(exc).startswith("NOSCRIPT"):  # Redis restarted since the admission
            task = asyncio.get_running_loop().create_task(self._retry_release(frame, request_id))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)
            return
        self.on_release_failed(request_id, exc)

    async def _retry_release(self, frame: bytes, request_id: str) -> None:
        try:
            await self._load_scripts()
            await self.connection.call_frame(frame)
        except self.failures as exc:
            self.on_release_failed(request_id, exc)

    async def aclose(self) -> None:
        """Close once the releases written have been answered (bounded by the connection's timeout): at a
        graceful shutdown every request's release reaches Redis."""
        protocol = self.connection.ready()
        if protocol is not None and protocol.waiting:
            # Replies come in order: once this PING's has come, so have those of the releases written before it.
            with contextlib.suppress(*self.failures, asyncio.CancelledError):
                await asyncio.wait([protocol.send_frame(_PING, at_once=True)], timeout=self.connection.timeout)
        for task in list(self._retries):
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(task, self.connection.timeout)
        await self.connection.aclose()
