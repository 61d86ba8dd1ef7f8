"""The Redis limit store: one Lua script admits a request against all its key's limits (and its team's), a second
settles it.

Algorithms (named honestly; details in `admit.lua`): **sliding-window log** for requests/min and tokens/min
(every admitted request is an entry that counts for exactly 60 s after it was admitted, so no burst at a window
edge can double a limit), an in-flight set with stale-entry expiry for concurrency, and spent + reserved for
budgets. A script runs atomically in Redis, so every worker of every instance sharing the Redis sees one exact
count. The time is the Redis server's (`TIME`), one clock for every instance; `timer` can replace it (tests).

Costs one round trip to admit (EVALSHA; the script is loaded once per Redis after a NOSCRIPT) and one to settle.
Each event loop gets its own `redis.asyncio` client (`core.redis`: one server, a Cluster or Sentinel) with short
timeouts and no retries: a retried script could count a request twice, and a Redis that is down must answer fast
(503 or fail-open, `metering.throttling`). After any error the loop's client (and its connection pool) is replaced,
so a Redis that comes back is used again at once, without a restart; a Cluster client is kept instead and reloads
its slot map by itself (`core.redis.renews_itself`), since a new one would know only the seed node.
"""

import asyncio
import functools
import logging
import weakref
from pathlib import Path

from django.conf import settings
from redis.exceptions import RedisError

from core.redis import (
    AsyncRedisClient,
    RedisTopology,
    close_async_redis,
    new_async_redis,
    prepare_async_redis,
    refuses_when_busy,
    renews_itself,
)

from .base import NEED_BUDGET_INIT, WINDOW_MS, AdmitResult, LimitStore, LimitTicket, SettleResult, StoreUnavailable

logger = logging.getLogger("tollgate.limits")

SCRIPTS_DIR = Path(__file__).resolve().parent
ADMIT_LUA = (SCRIPTS_DIR / "admit.lua").read_text()
SETTLE_LUA = (SCRIPTS_DIR / "settle.lua").read_text()


class _LoopClient:
    __slots__ = ("admit", "client", "gate", "is_ready", "prepared", "settle")

    def __init__(self, client, max_calls: int):
        self.client = client
        # Calls in flight at once, at most the pool's connections: a Cluster node's pool refuses a command when all
        # its connections are busy (MaxConnectionsError) instead of waiting like the other pools, so calls queue here.
        # The other pools wait by themselves: no gate (a semaphore and a timer per call, on every admission).
        self.gate = asyncio.Semaphore(max_calls) if refuses_when_busy(client) else None
        self.admit = client.register_script(ADMIT_LUA)
        self.settle = client.register_script(SETTLE_LUA)
        self.prepared: asyncio.Future | None = None
        self.is_ready = False

    async def ready(self) -> None:
        """`core.redis.prepare_async_redis` once, shared by the calls that arrive while it runs."""
        if self.prepared is None:
            self.prepared = asyncio.get_running_loop().create_task(prepare_async_redis(self.client))
        prepared = self.prepared
        try:
            await asyncio.shield(prepared)
        except BaseException:
            if self.prepared is prepared and prepared.done():
                self.prepared = None  # try again on the next call
            raise
        self.is_ready = True


@functools.lru_cache(maxsize=4096)
def _key_names(prefix: str, tag: str, parts: tuple) -> tuple[bytes, ...]:
    """`RedisLimitStore.keys` for `parts` ((scope, budget label) of each), as bytes: each admission and settlement
    needs them, and the names of a key's counters change once a budget period."""
    names = []
    for scope, label in parts:
        base = f"{prefix}:{{{tag}}}"
        if scope != tag:
            base += f":key:{scope}"
        names += [
            f"{base}:rpm",
            f"{base}:tpm",
            f"{base}:tpm:amounts",
            f"{base}:inflight",
            f"{base}:budget:{label}",
            f"{base}:budget:{label}:reservations",
        ]
    return tuple(name.encode() for name in names)


class RedisLimitStore(LimitStore):
    """Limits in Redis. `timer` (epoch seconds) replaces the Redis clock when set; None = Redis `TIME`.
    `topology` replaces the settings' Redis (tests, tools)."""

    timer = None

    def __init__(
        self, *, timeout: float | None = None, prefix: str | None = None, topology: RedisTopology | None = None
    ):
        self.topology = topology
        self.timeout = settings.RATE_LIMIT_REDIS_TIMEOUT if timeout is None else timeout
        self.prefix = settings.RATE_LIMIT_REDIS_PREFIX if prefix is None else prefix
        self.stale_ms = int(settings.RATE_LIMIT_INFLIGHT_EXPIRY_SECONDS * 1000)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClient] = weakref.WeakKeyDictionary()
        self._closing: set = set()

    max_connections = 128  # per event loop; a burst beyond it waits for a free connection
    pool_wait_seconds = 5.0
    # Opening a connection may take longer than a command: a burst opens dozens at once, and on a busy host the
    # handshakes queue behind each other. A Redis that is down refuses at once, so this does not slow a 503.
    min_connect_seconds = 2.0

    def build_client(self) -> AsyncRedisClient:
        return new_async_redis(
            timeout=self.timeout,
            connect_timeout=max(self.timeout, self.min_connect_seconds),
            max_connections=self.max_connections,
            pool_wait=self.pool_wait_seconds,
            retries=0,
            topology=self.topology,
        )

    def _loop_client(self) -> _LoopClient:
        loop = asyncio.get_running_loop()
        entry = self._clients.get(loop)
        if entry is None:
            entry = self._clients[loop] = _LoopClient(self.build_client(), self.max_connections)
        return entry

    def _drop_client(self, entry: _LoopClient) -> None:
        """Forget a client after an error (the next call builds a fresh pool) and close it in the background."""
        if renews_itself(entry.client):
            return
        loop = asyncio.get_running_loop()
        if self._clients.get(loop) is entry:
            del self._clients[loop]
            task = loop.create_task(close_async_redis(entry.client))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    def keys(self, ticket: LimitTicket) -> list[bytes]:
        """The names of the six Redis keys of each part of the ticket (the key's, then its team's), encoded.

        Every key of one script carries the same hash tag: `{<lineage>}` for a key without a team, `{team:<id>}` for
        a key in a team and for its team: on a Redis Cluster all keys of a Lua script must hash to one slot, and a
        key's counters sit with its team's (tests/test_redis_cluster.py checks every ticket shape). A key that
        changes team moves to other counters: its requests and tokens of the last minute start afresh, and its
        budget counter is read again from the database (the usage rollups).
        """
        parts = tuple(
            (part.scope, part.budget.window.label if part.budget is not None else "-") for part in ticket.parts()
        )
        return list(_key_names(self.prefix, ticket.tag, parts))

    def _now_arg(self) -> str:
        return "" if self.timer is None else str(int(self.timer() * 1000))

    async def _call(self, script_name: str, keys: list, args: list):
        entry = self._loop_client()
        try:
            if not entry.is_ready:
                await entry.ready()
            script, gate = getattr(entry, script_name), entry.gate
            if gate is None:
                return await script(keys=keys, args=args, client=entry.client)
            async with asyncio.timeout(self.pool_wait_seconds):
                await gate.acquire()
            try:
                return await script(keys=keys, args=args, client=entry.client)
            finally:
                gate.release()
        except (TimeoutError, RedisError, OSError) as exc:
            self._drop_client(entry)
            raise StoreUnavailable(f"redis: {exc.__class__.__name__}: {exc}") from exc
        except Exception as exc:
            # Not a Redis error but the client's own (redis-py's cluster client has raised AttributeError for a
            # connection another task closed): the call failed all the same, so the limiter is unavailable (503
            # or fail-open), never a 500. Logged in full: it may also be a bug of ours.
            logger.error("limits: the redis client failed unexpectedly", exc_info=True)
            self._drop_client(entry)
            raise StoreUnavailable(f"redis client: {exc.__class__.__name__}: {exc}") from exc

    async def admit(self, ticket: LimitTicket) -> AdmitResult:
        args: list = [
            self._now_arg(),
            ticket.request_id,
            WINDOW_MS,
            self.stale_ms,
            "1" if ticket.hold_concurrency else "0",
        ]
        for part in ticket.parts():
            budget = part.budget
            args += [
                -1 if part.rpm is None else part.rpm,
                -1 if part.tpm is None else part.tpm,
                part.tokens,
                -1 if part.max_concurrent is None else part.max_concurrent,
                -1 if budget is None else budget.cap,
                0 if budget is None else budget.reserve,
                "" if budget is None or budget.initial is None else budget.initial,
                0 if budget is None else budget.ttl,
            ]
        reply = await self._call("admit", self.keys(ticket), args)
        status, refusing, retry = reply[0], reply[1], reply[2]
        if status == NEED_BUDGET_INIT:
            # `refused_by_team` says whose budget counter is missing.
            return AdmitResult(status=status, refused_by_team=refusing == 1)
        results = []
        for index in range(len(ticket.parts())):
            rpm_count, rpm_reset, tpm_used, tpm_reset, concurrent, spent, reserved = reply[
                3 + 7 * index : 10 + 7 * index
            ]
            results.append(
                AdmitResult(
                    status=status,
                    rpm_count=rpm_count,
                    rpm_reset_ms=rpm_reset,
                    tpm_used=tpm_used,
                    tpm_reset_ms=tpm_reset,
                    concurrent=concurrent,
                    retry_ms=retry,
                    spent=spent,
                    reserved=reserved,
                )
            )
        result = results[0]
        result.refused_by_team = refusing == 1
        result.team = results[1] if len(results) > 1 else None
        return result

    async def settle(self, ticket: LimitTicket, admitted: AdmitResult, *, tokens: int, cost: int) -> SettleResult:
        args: list = [self._now_arg(), ticket.request_id, WINDOW_MS]
        for part in ticket.parts():
            args += [-1 if part.tpm is None else max(tokens, 0), -1 if part.budget is None else max(cost, 0)]
        reply = await self._call("settle", self.keys(ticket), args)
        results = [
            SettleResult(tpm_used=None if reply[i] < 0 else reply[i], tpm_reset_ms=reply[i + 1])
            for i in range(0, len(reply), 2)
        ]
        result = results[0]
        result.team = results[1] if len(results) > 1 else None
        return result

    async def aclose(self) -> None:
        for entry in list(self._clients.values()):
            await close_async_redis(entry.client)
        self._clients.clear()
