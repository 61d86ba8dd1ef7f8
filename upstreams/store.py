"""Routing state shared by every worker and instance: upstream health (resting until when, recent failures, last
errors) and each upstream's requests and tokens per minute. In Redis (one atomic Lua call per operation, on the
Redis server's clock) when Redis is configured (`REDIS_URL`, a Cluster or Sentinel: `core.redis`); per worker
process without it.

Routing must not stop traffic: a Redis that cannot be asked counts no cap and rests nothing (logged), while the
key limits (`metering`) decide, as they always do, whether the request may go at all.
"""

import asyncio
import logging
import time
import weakref
from collections import deque

import orjson
from django.conf import settings
from redis.exceptions import RedisError

from core.redis import get_sync_redis, new_async_redis, prepare_async_redis, redis_configured, renews_itself

logger = logging.getLogger("tollgate.upstreams")

# KEYS: rpm log, tpm log, tpm amounts. ARGV: rpm ('' = none), tpm ('' = none), tokens, member.
# A sliding-window log, as the key limits' (metering/admit.lua): a request counts for exactly 60 s.
TAKE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local since = now - 60000
if ARGV[1] ~= '' then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', since)
  if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
end
if ARGV[2] ~= '' then
  local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', since)
  for _, member in ipairs(old) do redis.call('HDEL', KEYS[3], member) end
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', since)
  local used = 0
  for _, amount in ipairs(redis.call('HVALS', KEYS[3])) do used = used + tonumber(amount) end
  if used + tonumber(ARGV[3]) > tonumber(ARGV[2]) then return 0 end
end
if ARGV[1] ~= '' then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  redis.call('PEXPIRE', KEYS[1], 61000)
end
if ARGV[2] ~= '' then
  redis.call('ZADD', KEYS[2], now, ARGV[4])
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[3])
  redis.call('PEXPIRE', KEYS[2], 61000)
  redis.call('PEXPIRE', KEYS[3], 61000)
end
return 1
"""

# KEYS: failures counter, rest marker, last errors. ARGV: window ms, threshold, cool-down ms, rest ms ('' = count
# a failure), error (JSON), errors kept. Returns the rest's end (epoch ms), or 0 when it does not rest.
FAIL_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('LPUSH', KEYS[3], ARGV[5])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
local rest = 0
if ARGV[4] ~= '' then
  rest = tonumber(ARGV[4])
else
  local failures = redis.call('INCR', KEYS[1])
  if failures == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
  if failures >= tonumber(ARGV[2]) then rest = tonumber(ARGV[3]) end
end
if rest > 0 then
  redis.call('SET', KEYS[2], now + rest, 'PX', rest)
  redis.call('DEL', KEYS[1])
  return now + rest
end
return 0
"""

ERRORS_KEPT = 20


class LocalRouteStore:
    """The same state in this process only (no Redis): exact per worker, not shared."""

    def __init__(self):
        self._requests: dict[str, deque] = {}
        self._tokens: dict[str, deque] = {}
        self._failures: dict[str, deque] = {}
        self._rest_until: dict[str, float] = {}
        self._errors: dict[str, deque] = {}

    async def take(self, name: str, rpm: int | None, tpm: int | None, tokens: int, member: str) -> bool:
        now = time.time()
        since = now - 60
        requests = self._requests.setdefault(name, deque())
        amounts = self._tokens.setdefault(name, deque())
        while requests and requests[0] <= since:
            requests.popleft()
        while amounts and amounts[0][0] <= since:
            amounts.popleft()
        if rpm is not None and len(requests) >= rpm:
            return False
        if tpm is not None and sum(amount for _, amount in amounts) + tokens > tpm:
            return False
        requests.append(now)
        amounts.append((now, tokens))
        return True

    async def fail(self, name: str, rest_seconds: float | None, error: dict) -> float:
        now = time.time()
        errors = self._errors.setdefault(name, deque(maxlen=ERRORS_KEPT))
        errors.appendleft(error)
        if rest_seconds is None:
            failures = self._failures.setdefault(name, deque())
            failures.append(now)
            while failures and failures[0] <= now - settings.UPSTREAM_FAILURE_WINDOW_SECONDS:
                failures.popleft()
            if len(failures) < settings.UPSTREAM_FAILURE_THRESHOLD:
                return 0
            failures.clear()
            rest_seconds = settings.UPSTREAM_COOLDOWN_SECONDS
        until = now + rest_seconds
        self._rest_until[name] = until
        return until

    async def resting(self, names: list[str]) -> dict[str, float]:
        now = time.time()
        return {name: until for name in names if (until := self._rest_until.get(name, 0)) > now}

    def resting_now(self, names: list[str]) -> dict[str, float]:
        now = time.time()
        return {name: until for name in names if (until := self._rest_until.get(name, 0)) > now}

    def last_errors(self, name: str) -> list[dict]:
        return list(self._errors.get(name, ()))


class RedisRouteStore:
    """The state in Redis (one server, a Cluster or Sentinel: `core.redis`): one client per event loop (short
    timeouts, no retries), dropped after an error unless it renews itself (a Cluster client). Every script's keys
    share the upstream's hash tag, so each runs in one slot."""

    def __init__(self):
        self.prefix = f"{settings.RATE_LIMIT_REDIS_PREFIX}:upstream"
        self._clients: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def _client(self):
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            client = new_async_redis(
                timeout=settings.RATE_LIMIT_REDIS_TIMEOUT,
                connect_timeout=max(settings.RATE_LIMIT_REDIS_TIMEOUT, 2.0),
                max_connections=64,
            )
            prepared = loop.create_task(prepare_async_redis(client))
            entry = (client, client.register_script(TAKE_LUA), client.register_script(FAIL_LUA), prepared)
            self._clients[loop] = entry
        try:
            await asyncio.shield(entry[3])
        except BaseException:
            self._drop(entry)
            raise
        return entry[:3]

    def _drop(self, entry=None) -> None:
        loop = asyncio.get_running_loop()
        current = self._clients.get(loop)
        if current is not None and (entry is None or current is entry) and not renews_itself(current[0]):
            del self._clients[loop]

    def keys(self, name: str) -> dict[str, str]:
        base = f"{self.prefix}:{{{name}}}"
        return {
            "rpm": f"{base}:rpm",
            "tpm": f"{base}:tpm",
            "tpm_amounts": f"{base}:tpm:amounts",
            "failures": f"{base}:failures",
            "rest": f"{base}:rest",
            "errors": f"{base}:errors",
        }

    async def take(self, name: str, rpm: int | None, tpm: int | None, tokens: int, member: str) -> bool:
        keys = self.keys(name)
        args = ["" if rpm is None else rpm, "" if tpm is None else tpm, tokens, member]
        try:
            client, take, _ = await self._client()
            return bool(await take(keys=[keys["rpm"], keys["tpm"], keys["tpm_amounts"]], args=args, client=client))
        except Exception as exc:  # redis-py's Cluster client can fail with more than RedisError
            self._drop()
            logger.warning("upstream %s: requests/tokens per minute not counted (redis: %s)", name, exc)
            return True

    async def fail(self, name: str, rest_seconds: float | None, error: dict) -> float:
        keys = self.keys(name)
        args = [
            int(settings.UPSTREAM_FAILURE_WINDOW_SECONDS * 1000),
            settings.UPSTREAM_FAILURE_THRESHOLD,
            int(settings.UPSTREAM_COOLDOWN_SECONDS * 1000),
            "" if rest_seconds is None else max(int(rest_seconds * 1000), 1),
            orjson.dumps(error),
            ERRORS_KEPT,
        ]
        try:
            client, _, fail = await self._client()
            until_ms = await fail(keys=[keys["failures"], keys["rest"], keys["errors"]], args=args, client=client)
        except Exception as exc:  # redis-py's Cluster client can fail with more than RedisError
            self._drop()
            logger.warning("upstream %s: failure not shared (redis: %s)", name, exc)
            return 0
        return until_ms / 1000 if until_ms else 0

    async def resting(self, names: list[str]) -> dict[str, float]:
        if not names:
            return {}
        try:
            client, _, _ = await self._client()
            values = await _mget(client, [self.keys(name)["rest"] for name in names])
        except Exception as exc:  # redis-py's Cluster client can fail with more than RedisError
            self._drop()
            logger.warning("upstream health not read (redis: %s)", exc)
            return {}
        return {name: int(value) / 1000 for name, value in zip(names, values, strict=True) if value is not None}

    def resting_now(self, names: list[str]) -> dict[str, float]:
        if not names:
            return {}
        try:
            client = get_sync_redis()
            keys = [self.keys(name)["rest"] for name in names]
            values = client.mget_nonatomic(keys) if hasattr(client, "mget_nonatomic") else client.mget(keys)
        except (RedisError, OSError):
            return {}
        now = time.time()
        found = {name: int(value) / 1000 for name, value in zip(names, values, strict=True) if value is not None}
        return {name: until for name, until in found.items() if until > now}

    def last_errors(self, name: str) -> list[dict]:
        try:
            client = get_sync_redis()
            return [orjson.loads(item) for item in client.lrange(self.keys(name)["errors"], 0, ERRORS_KEPT - 1)]
        except (RedisError, OSError):
            return []


async def _mget(client, keys: list[str]) -> list:
    """GET of several keys: one MGET on one server; on a Cluster the keys (one hash tag per upstream) may sit in
    several slots, so redis-py splits it per slot."""
    if hasattr(client, "mget_nonatomic"):
        return await client.mget_nonatomic(keys)
    return await client.mget(keys)


_store: LocalRouteStore | RedisRouteStore | None = None


def get_route_store() -> LocalRouteStore | RedisRouteStore:
    global _store
    if _store is None:
        _store = RedisRouteStore() if redis_configured() else LocalRouteStore()
    return _store
