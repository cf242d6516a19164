"""The admission counters in Redis (`redis.url`): shared by every worker and replica, exact across them.

One Lua script per request on the hot path (EVALSHA: checks every limit and budget, then counts, atomically;
Redis's own clock, so replicas' clocks do not matter), one at the request's end (releases the in-flight slot,
corrects the token reservation to the real usage, adds the cost to the budgets). Same windows as
`MemoryCounters` (access/limits.py): 60 one-second buckets in a hash per counter, in-flight request ids in a
sorted set scored by their deadline, a budget period's spend in one integer key that expires after the period.

The scripts go over one pipelined connection (access/resp.py): those of the requests that arrive in the same
turn of the event loop are written together; each is still its own atomic script.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable
from typing import Any, Final

import hiredis

from manifold.access.limits import IN_FLIGHT_TTL_S, Budget, Scope, Verdict
from manifold.access.resp import RespConnection, RespError

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
    redis.call('EXPIRE', KEYS[2 * n + j], tonumber(ARGV[5 + 2 * n + j]))
  end
end
return 1
"""


def _limit(value: int | None) -> int:
    return -1 if value is None else value


def _sha(script: str) -> str:
    return hashlib.sha1(script.encode()).hexdigest()  # Redis names scripts by their SHA-1


_ADMIT_SHA: Final = _sha(_ADMIT)
_RELEASE_SHA: Final = _sha(_RELEASE)
_SCRIPTS: Final = {_ADMIT_SHA: _ADMIT, _RELEASE_SHA: _RELEASE}


class RedisCounters:
    def __init__(self, url: str, timeout_s: float, prefix: str) -> None:
        self.connection = RespConnection(url, timeout_s)
        self.prefix = prefix
        self.round_trips = 0  # scripts sent (those of one event-loop turn share one write)
        self.failures: tuple[type[BaseException], ...] = (RespError, OSError, TimeoutError, hiredis.HiredisError)

    async def _script(self, sha: str, keys: list[str], args: list[Any]) -> Any:
        self.round_trips += 1
        try:
            return await self.connection.call("EVALSHA", sha, len(keys), *keys, *args)
        except RespError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        # First use on this Redis (or it restarted): load the script, then run it.
        await self.connection.call("SCRIPT", "LOAD", _SCRIPTS[sha])
        return await self.connection.call("EVALSHA", sha, len(keys), *keys, *args)

    async def admit(self, scopes: list[Scope], tokens: int, budgets: list[Budget], request_id: str) -> Verdict:
        p = self.prefix
        keys: list[str] = []
        args: list[Any] = [len(scopes), tokens, request_id, IN_FLIGHT_TTL_S]
        for s in scopes:
            keys += (f"{p}rl:{s.id}:r", f"{p}rl:{s.id}:t", f"{p}rl:{s.id}:p")
            args += (_limit(s.rpm), _limit(s.tpm), _limit(s.parallel))
        for b in budgets:
            keys.append(f"{p}budget:{b.id}")
            args.append(b.max_micros)
        out = await self._script(_ADMIT_SHA, keys, args)
        status = out[0].decode() if isinstance(out[0], bytes) else str(out[0])
        v = Verdict(second=int(out[5]))
        if status != "ok":
            index = int(out[1]) - 1
            v.refused = status
            v.scope = budgets[index].name if status == "budget" else scopes[index].name
            v.limit, v.used = int(out[2]), int(out[3])
            v.requested = tokens if status == "tokens" else 1
            v.retry_after_s = max(0, int(out[4])) / 1000
            return v
        if int(out[6]) >= 0:
            v.req_limit, v.req_remaining, v.req_reset_s = int(out[6]), int(out[7]), int(out[8]) / 1000
        if int(out[9]) >= 0:
            v.tok_limit, v.tok_remaining, v.tok_reset_s = int(out[9]), max(0, int(out[10])), int(out[11]) / 1000
        return v

    def release(
        self, scopes: list[Scope], second: int, token_delta: int, budgets: list[Budget], cost: int, request_id: str
    ) -> Awaitable[Any] | None:
        if not cost and not any(s.parallel is not None or (s.tpm is not None and token_delta) for s in scopes):
            return None  # nothing to release: no round trip
        p = self.prefix
        keys: list[str] = []
        args: list[Any] = [len(scopes), second, token_delta, request_id, cost]
        for s in scopes:
            keys += (f"{p}rl:{s.id}:t", f"{p}rl:{s.id}:p")
            args += ("1" if s.tpm is not None else "0", "1" if s.parallel is not None else "0")
        now = time.time()
        for b in budgets:
            keys.append(f"{p}budget:{b.id}")
            args.append(b.ttl_s(now))
        return self._script(_RELEASE_SHA, keys, args)

    async def aclose(self) -> None:
        await self.connection.aclose()
