"""Tollgate behind Redis Sentinel (`REDIS_SENTINELS=host:port,...`, `REDIS_SENTINEL_MASTER=name`, no REDIS_URL):
a master, its replica and three `redis-server --sentinel` processes on free loopback ports.

* 200 concurrent requests on a 40-per-minute key through a real gateway: exactly 40 pass, counted on the master
  the sentinels name;
* the master killed under load: the sentinels promote the replica, the gateway follows by itself (no restart, no
  500) within 15 s, and what the failover lost is bounded (tests/redis_topologies.py says how).

The figures are printed (`pytest -s`).
"""

import asyncio
import shutil
import signal
import time
import uuid
from collections import Counter

import pytest

from core.redis import RedisTopology, close_async_redis, get_async_redis, get_sync_redis, reset_shared_clients
from metering import LimitTicket, StoreUnavailable
from metering.redis_store import RedisLimitStore
from tests.redis_topologies import PRICED_ENV, LocalSentinels, check_failover, counter_keys, failover_under_load
from tests.test_rate_limits import burst

pytestmark = [
    pytest.mark.slow,
    # All transactional, so pytest-django does not split the module in two groups (and start `sentinels` twice).
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server is not installed (CI has it)"),
]


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory):
    directory = tmp_path_factory.mktemp("redis-sentinel")
    local = LocalSentinels(directory)
    try:
        yield local.start()
    finally:
        local.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def own_sentinels(tmp_path):
    """A set-up of its own for a test that kills the master."""
    local = LocalSentinels(tmp_path / "redis-sentinel")
    try:
        yield local.start()
    finally:
        local.stop()
        shutil.rmtree(tmp_path / "redis-sentinel", ignore_errors=True)


def sentinel_env(local: LocalSentinels) -> dict:
    # REDIS_URL points nowhere: with Sentinel it is not used.
    return {
        "REDIS_SENTINELS": local.env_value,
        "REDIS_SENTINEL_MASTER": local.master_name,
        "REDIS_URL": "redis://127.0.0.1:1/0",
    }


def test_the_shared_clients_talk_to_the_master_the_sentinels_name(sentinels, settings):
    settings.REDIS_URL = ""
    settings.REDIS_SENTINELS = [("127.0.0.1", s.port) for s in sentinels.sentinels]
    settings.REDIS_SENTINEL_MASTER = sentinels.master_name
    reset_shared_clients()
    try:
        name = f"shared-{uuid.uuid4().hex[:8]}"
        client = get_sync_redis()
        assert get_sync_redis() is client
        client.set(name, "sync")

        async def run():
            shared = await get_async_redis()
            assert await get_async_redis() is shared
            value = await shared.get(name)
            await shared.set(name, "async")
            await close_async_redis(shared)
            return value

        assert asyncio.run(run()) == b"sync"
        with sentinels.current_master().client() as master:
            assert master.get(name) == b"async"
            assert master.info("replication")["role"] == "master"
        client.close()
    finally:
        reset_shared_clients()


def test_200_concurrent_requests_on_a_40_per_minute_key_get_exactly_40_through(sentinels, make_key, start_gateway):
    gateway = start_gateway(name="sentinel-exact", workers=3, env=sentinel_env(sentinels))
    key, raw = make_key(name="sentinel-burst", rpm=40)
    counts = burst([(gateway, raw)], 200)
    print("\nsentinel exactness run:", dict(counts))
    assert counts == Counter({(200, None): 40, (429, "rate_limit_exceeded"): 160})
    # Counted on the master the sentinels name (and nowhere else: the replica only copies it).
    rpm_key, _ = counter_keys(key.lineage)
    with sentinels.current_master().client() as master:
        assert master.zcard(rpm_key) == 40


def test_master_killed_under_load_no_500_resumes_and_loses_at_most_the_replication_lag(
    own_sentinels, make_key, start_gateway
):
    sentinels = own_sentinels
    key, raw = make_key(name="sentinel-failover", rpm=1_000_000, budget_usd=1000)
    env = {**sentinel_env(sentinels), **PRICED_ENV, "USAGE_FLUSH_SECONDS": "0.1"}
    gateway = start_gateway(name="sentinel-failover", workers=2, env=env)
    victim = sentinels.current_master()

    result = failover_under_load(
        gateway=gateway,
        key=key,
        raw=raw,
        kill=victim.kill,
        current_master=lambda: sentinels.current_master().client(),
    )
    summary = check_failover(result, gateway)
    print(f"\nsentinel failover: {summary}")
    assert sentinels.current_master().port != victim.port  # the replica was promoted

    # The limits count on the new master: a fresh key with 3 requests per minute gets exactly 3.
    _, tight = make_key(name="sentinel-after", rpm=3)
    counts = burst([(gateway, tight)], 5)
    assert counts == Counter({(200, None): 3, (429, "rate_limit_exceeded"): 2}), dict(counts)


def test_a_failover_loses_exactly_what_the_replica_had_not_received(own_sentinels):
    """As in test_redis_cluster.py: what was written before the replica's link was cut survives the failover, what
    was written after it is lost, and nothing else; through the store, with the sentinels naming the master."""
    local = own_sentinels
    store = RedisLimitStore(
        topology=RedisTopology(
            mode="sentinel", sentinels=tuple(("127.0.0.1", s.port) for s in local.sentinels), master=local.master_name
        )
    )
    lineage = f"lag-{uuid.uuid4().hex[:6]}"
    rpm_key, _ = counter_keys(lineage)
    master = local.current_master()
    replica = next(s for s in local.servers if s is not master)

    def ticket(request_id):
        return LimitTicket(key_prefix=lineage, scope=lineage, request_id=request_id, rpm=1_000_000)

    async def run():
        before = [f"before-{i}" for i in range(30)]
        after = [f"after-{i}" for i in range(20)]
        for request_id in before:
            assert (await store.admit(ticket(request_id))).status == 0
        with master.client() as direct:
            assert direct.execute_command("WAIT", 1, 2000) == 1
            replica.process.send_signal(signal.SIGSTOP)
            try:
                direct.client_kill_filter(_type="replica")
                for request_id in after:
                    assert (await store.admit(ticket(request_id))).status == 0
                master.kill()
            finally:
                replica.process.send_signal(signal.SIGCONT)
        killed_at = time.monotonic()
        while True:
            try:
                await store.admit(ticket("resumed"))
                break
            except StoreUnavailable:
                assert time.monotonic() - killed_at < 15, "no master took over within 15 s"
                await asyncio.sleep(0.1)
        resumed = time.monotonic() - killed_at
        await store.aclose()
        return before, after, resumed

    before, after, resumed = asyncio.run(run())
    assert local.current_master() is replica
    with replica.client() as direct:
        kept = {m.decode() for m in direct.zrange(rpm_key, 0, -1)}
    lost = [r for r in before + after if r not in kept]
    print(
        f"\nsentinel, deliberate lag: {len(after)} admissions written after the replica's link was cut, {len(lost)} "
        f"lost; {len(before)} before it, all kept; the store resumed {resumed:.2f} s after the kill"
    )
    assert set(before) <= kept and "resumed" in kept
    assert lost == after
