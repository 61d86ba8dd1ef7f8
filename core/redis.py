"""Every Redis client Tollgate builds is built here, for the three topologies it runs on:

* one Redis server: `REDIS_URL` (redis://host:port/db);
* a Redis Cluster: `REDIS_CLUSTER=true`, and `REDIS_URL` names one node of it (a seed: the client asks it for the
  slot map and then talks to every master itself, following MOVED/ASK and failovers);
* Sentinel: `REDIS_SENTINELS=host:port,host:port,...` and `REDIS_SENTINEL_MASTER=name`: every command goes to the
  master the sentinels name (asked again on each new connection, so a failover is followed); `REDIS_URL` is not
  used then.

`await get_async_redis()` (one client per event loop, prepared) and `get_sync_redis()` (one per process) are the
shared clients for code that just needs Redis; `new_async_redis()` / `new_sync_redis()` build a client with the
caller's own timeouts and pool (the limit store does, for its short timeouts and its no-retry rule): await
`prepare_async_redis()` on a new async client before its first commands, and close it with `close_async_redis()`
(a Sentinel client also holds connections to the sentinels). A Cluster node's pool refuses a command when all its
`max_connections` are busy instead of waiting: bound your concurrent commands (the limit store does).

Anything that runs a Lua script or a multi-key command must keep all its keys in one hash slot (a `{tag}` in every
key name) so that it runs on a Cluster too; redis-py's cluster client routes EVALSHA by its keys and loads a
script on every master after a NOSCRIPT.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from django.conf import settings
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel

logger = logging.getLogger("tollgate.redis")

AsyncRedisClient = aioredis.Redis | AsyncRedisCluster
SyncRedisClient = redis.Redis | RedisCluster

# What `get_async_redis()` / `get_sync_redis()` use; `new_*` callers pass their own.
DEFAULT_TIMEOUT = 2.0
DEFAULT_MAX_CONNECTIONS = 64


@dataclass(frozen=True, slots=True)
class RedisTopology:
    """Where Redis is: `mode` is "single", "cluster" or "sentinel"; `url` is REDIS_URL (not used with Sentinel)."""

    mode: str
    url: str = ""
    sentinels: tuple[tuple[str, int], ...] = ()
    master: str = ""

    def describe(self) -> str:
        if self.mode == "sentinel":
            return f"sentinel master {self.master!r} via {len(self.sentinels)} sentinels"
        return self.mode


class _BlockingSentinelPool(AsyncSentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (connections to the master the sentinels name) that waits for a free connection, up to its
    `timeout`, like the one-server pool, instead of refusing at once: a burst of 200 requests on one worker must
    queue for connections, not fail (measured: 21 of 200 got "Too many connections" with Sentinel's own pool)."""


def redis_topology() -> RedisTopology | None:
    """The topology the settings name; None when Tollgate runs without Redis."""
    if settings.REDIS_SENTINELS:
        return RedisTopology(
            mode="sentinel", sentinels=tuple(settings.REDIS_SENTINELS), master=settings.REDIS_SENTINEL_MASTER
        )
    if not settings.REDIS_URL:
        return None
    return RedisTopology(mode="cluster" if settings.REDIS_CLUSTER else "single", url=settings.REDIS_URL)


def redis_configured() -> bool:
    return redis_topology() is not None


def _required() -> RedisTopology:
    topology = redis_topology()
    if topology is None:
        raise RuntimeError("Redis is not configured (set REDIS_URL, or REDIS_SENTINELS and REDIS_SENTINEL_MASTER)")
    return topology


def new_async_redis(
    *,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_wait: float = 5.0,
    retries: int = 0,
    topology: RedisTopology | None = None,
) -> AsyncRedisClient:
    """A new `redis.asyncio` client for the configured topology.

    `timeout` bounds each command (socket read), `connect_timeout` opening a connection (default: `timeout`).
    `max_connections` is per client for one server or Sentinel and per node for a Cluster; `pool_wait` is how long a
    command waits for a free connection (one server and Sentinel; a Cluster node's pool refuses at once instead).
    `retries` = 0 never sends a command twice (a script whose reply was lost may have run: the caller decides).
    A Cluster client still follows MOVED/ASK redirections (the command did not run) and, after a connection error,
    reloads the slot map before its next command. `topology` overrides the settings' (tests, tools).
    """
    topology = topology or _required()
    connect_timeout = timeout if connect_timeout is None else connect_timeout
    retry = AsyncRetry(NoBackoff(), retries)
    if topology.mode == "cluster":
        return AsyncRedisCluster.from_url(
            topology.url,
            max_connections=max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=retry,
            require_full_coverage=True,
        )
    if topology.mode == "sentinel":
        sentinel = AsyncSentinel(
            list(topology.sentinels),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": connect_timeout},
        )
        client = sentinel.master_for(
            topology.master,
            connection_pool_class=_BlockingSentinelPool,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            max_connections=max_connections,
            timeout=pool_wait,
            retry=retry,
        )
        client._tollgate_sentinel = sentinel  # closed with it (close_async_redis)
        return client
    pool = aioredis.BlockingConnectionPool.from_url(
        topology.url,
        max_connections=max_connections,
        timeout=pool_wait,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=retry,
    )
    return aioredis.Redis(connection_pool=pool)


def new_sync_redis(
    *,
    timeout: float = DEFAULT_TIMEOUT,
    connect_timeout: float | None = None,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    retries: int = 0,
    topology: RedisTopology | None = None,
) -> SyncRedisClient:
    """A new blocking `redis` client for the configured topology (arguments as `new_async_redis`)."""
    topology = topology or _required()
    connect_timeout = timeout if connect_timeout is None else connect_timeout
    retry = Retry(NoBackoff(), retries)
    if topology.mode == "cluster":
        return RedisCluster.from_url(
            topology.url,
            max_connections=max_connections,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=retry,
            require_full_coverage=True,
        )
    if topology.mode == "sentinel":
        sentinel = Sentinel(
            list(topology.sentinels),
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": connect_timeout},
        )
        return sentinel.master_for(
            topology.master,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            max_connections=max_connections,
            retry=retry,
        )
    return redis.Redis.from_url(
        topology.url,
        max_connections=max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry=retry,
    )


def renews_itself(client: Any) -> bool:
    """Whether a client recovers from a failed node by itself and should be kept after an error.

    A Cluster client reloads its slot map from every node it has seen; a new one would know only the seed in
    REDIS_URL, which may be the node that just failed. One-server and Sentinel clients are cheap to replace (a
    Sentinel client asks the sentinels again anyway) and a fresh pool drops every half-broken connection at once.
    """
    return isinstance(client, AsyncRedisCluster | RedisCluster)


def refuses_when_busy(client: Any) -> bool:
    """Whether a client refuses a command at once when every connection of its pool is busy (redis-py's
    MaxConnectionsError) instead of waiting `pool_wait` for one: a Cluster client's node pools do. Callers bound
    their own concurrent commands for such a client."""
    return isinstance(client, AsyncRedisCluster | RedisCluster)


async def prepare_async_redis(client: Any) -> None:
    """Make a new client ready for concurrent use; await it once before the first command.

    A Cluster client loads its slot map on first use; when dozens of tasks make their first commands at once, redis-py
    can close connections other tasks are using (measured: a few of 70 concurrent first commands failed with
    "Connection closed by server"). Loading the map here, once, avoids that. A no-op for the other topologies.
    """
    if isinstance(client, AsyncRedisCluster):
        await client.initialize()


async def close_async_redis(client: Any) -> None:
    """Close an async client (and a Sentinel client's connections to the sentinels); never raises."""
    try:
        await client.aclose()
        sentinel = getattr(client, "_tollgate_sentinel", None)
        if sentinel is not None:
            await sentinel.aclose()
    except Exception:
        logger.debug("closing a redis client failed", exc_info=True)


_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Future] = weakref.WeakKeyDictionary()
_sync_client: SyncRedisClient | None = None
_sync_lock = threading.Lock()


async def get_async_redis() -> AsyncRedisClient:
    """This event loop's shared client (default timeouts, no retries), built and prepared on first use.

    Keep it after an error: a one-server or Sentinel client reconnects on its next command, a Cluster client reloads
    its slot map. If preparing it fails, the next call tries again.
    """
    loop = asyncio.get_running_loop()
    ready = _async_clients.get(loop)
    if ready is None:
        ready = _async_clients[loop] = loop.create_task(_build_prepared())
    try:
        return await asyncio.shield(ready)
    except Exception:
        if _async_clients.get(loop) is ready:
            del _async_clients[loop]
        raise


async def _build_prepared() -> AsyncRedisClient:
    client = new_async_redis()
    try:
        await prepare_async_redis(client)
    except BaseException:
        await close_async_redis(client)
        raise
    return client


def get_sync_redis() -> SyncRedisClient:
    """This process's shared blocking client (default timeouts, no retries; thread-safe); built on first use."""
    global _sync_client
    with _sync_lock:
        if _sync_client is None:
            _sync_client = new_sync_redis()
        return _sync_client


def reset_shared_clients() -> None:
    """Forget the shared clients (after the settings changed; tests). Open connections close when collected."""
    global _sync_client
    with _sync_lock:
        _sync_client = None
    _async_clients.clear()
