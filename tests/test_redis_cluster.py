"""Tollgate on a real Redis Cluster (`REDIS_CLUSTER=true`, `REDIS_URL` = a seed node): three masters and three
replicas, `redis-server --cluster-enabled yes` on free loopback ports, joined by `redis-cli --cluster create`.

* every atomic script keeps all its keys in one hash slot (a key's counters with its team's), for every ticket
  shape the relay builds: checked against the cluster's own slot function;
* the factory's clients (`core.redis`, sync and async) work on the cluster, scripts included, and a script is
  loaded again on a master that has never seen it (NOSCRIPT after a failover);
* 200 concurrent requests on a 40-per-minute key through a real gateway: exactly 40 pass;
* the master holding a key's counters (also the seed node in REDIS_URL) killed under load: no 500, service
  resumes by itself within 15 s, and what the failover lost is bounded (tests/redis_topologies.py says how).

The figures are printed (`pytest -s`).
"""

import asyncio
import shutil
import signal
import time
import uuid
from collections import Counter

import pytest
import redis

from core.redis import (
    RedisTopology,
    close_async_redis,
    get_async_redis,
    get_sync_redis,
    new_async_redis,
    new_sync_redis,
    reset_shared_clients,
)
from metering import BudgetHold, LimitTicket, StoreUnavailable
from metering.base import BudgetWindow
from metering.redis_store import RedisLimitStore
from tests.redis_topologies import (
    PRICED_ENV,
    LocalCluster,
    check_failover,
    failover_under_load,
    needs_redis_server,
)
from tests.test_rate_limits import burst
from upstreams.store import RedisRouteStore

# All transactional: pytest-django runs transactional tests before the others, and a module whose tests fall in
# both groups would start its module-scoped cluster twice.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def _budget(period="month"):
    from django.utils import timezone

    return BudgetHold(cap=100, reserve=1, window=BudgetWindow.at(period, timezone.now()), ttl=60)


def test_every_script_keeps_its_keys_in_one_hash_slot():
    """The keys of one admit/settle call, for a key alone and a key in a team, with every limit and a budget."""
    store = RedisLimitStore(topology=RedisTopology(mode="cluster", url="redis://127.0.0.1:1/0"))
    limits = {"rpm": 5, "tpm": 100, "tokens": 3, "max_concurrent": 2, "budget": _budget()}
    lineage = uuid.uuid4().hex[:8]
    alone = LimitTicket(key_prefix=lineage, scope=lineage, request_id="r1", **limits)
    team_scope = f"team:{uuid.uuid4().int % 10**6}"
    team = LimitTicket(key_prefix=lineage, scope=team_scope, request_id="r2", subject="team t", **limits)
    in_team = LimitTicket(key_prefix=lineage, scope=lineage, request_id="r2", tag=team_scope, team=team, **limits)
    for ticket in (alone, in_team):
        keys = store.keys(ticket)
        assert len(keys) == 6 * len(ticket.parts())
        assert len({redis.cluster.key_slot(k) for k in keys}) == 1, keys
    # A key in a team keeps its own counters (not the team's), in the team's slot.
    own, teams = store.keys(in_team)[:6], store.keys(in_team)[6:]
    assert not set(own) & set(teams) and all(f"{{{team_scope}}}".encode() in k for k in own + teams)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("redis-server and redis-cli are not installed (CI has them)")
    directory = tmp_path_factory.mktemp("redis-cluster")
    local = LocalCluster(directory)
    try:
        yield local.start()
    finally:
        local.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def own_cluster(tmp_path):
    """A cluster of its own for a test that kills a node."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("redis-server and redis-cli are not installed (CI has them)")
    local = LocalCluster(tmp_path / "redis-cluster")
    try:
        yield local.start()
    finally:
        local.stop()
        shutil.rmtree(tmp_path / "redis-cluster", ignore_errors=True)


def cluster_env(node) -> dict:
    return {"REDIS_CLUSTER": "true", "REDIS_URL": f"redis://127.0.0.1:{node.port}/0"}


def topology(node) -> RedisTopology:
    return RedisTopology(mode="cluster", url=f"redis://127.0.0.1:{node.port}/0")


@needs_redis_server
def test_factory_clients_run_commands_and_scripts_on_every_master(cluster):
    seed = cluster.nodes[0]
    sync = new_sync_redis(topology=topology(seed))
    try:
        # Keys spread over the three masters: the client follows the slot map.
        names = [f"factory-{i}" for i in range(30)]
        for name in names:
            sync.set(name, name)
        assert [sync.get(name).decode() for name in names] == names
        assert len({cluster.master_of(name).port for name in names}) == 3
    finally:
        sync.close()

    store = RedisLimitStore(topology=topology(seed))

    async def run():
        results = []
        for index in range(12):  # twelve lineages: their scripts run on every master
            lineage = f"slot{index}-{uuid.uuid4().hex[:6]}"
            for n in range(3):
                ticket = LimitTicket(key_prefix=lineage, scope=lineage, request_id=f"{lineage}-{n}", rpm=2)
                results.append((lineage, (await store.admit(ticket)).status))
        client = new_async_redis(topology=topology(seed))
        try:
            # A master that never saw the script (a promoted replica after a failover) answers NOSCRIPT once;
            # the client loads it there and runs it: flush every master's script cache and admit again.
            for node in cluster.masters().values():
                with node.client() as direct:
                    direct.script_flush()
            again = LimitTicket(key_prefix="reload", scope=f"reload-{uuid.uuid4().hex[:6]}", request_id="x", rpm=1)
            reloaded = (await store.admit(again)).status
            assert await client.ping()
        finally:
            await close_async_redis(client)
            await store.aclose()
        return results, reloaded

    results, reloaded = asyncio.run(run())
    lineages = {lineage for lineage, _ in results}
    assert len({cluster.master_of(f"{{{lineage}}}").port for lineage in lineages}) == 3
    # rpm=2: the third request of each lineage is refused (status 1), on whichever master holds it.
    assert [status for _, status in results] == [0, 0, 1] * 12
    assert reloaded == 0


@needs_redis_server
def test_the_shared_clients_work_on_the_cluster(cluster, settings):
    settings.REDIS_CLUSTER = True
    settings.REDIS_URL = f"redis://127.0.0.1:{cluster.nodes[2].port}/0"
    reset_shared_clients()
    try:
        names = [f"shared-{uuid.uuid4().hex[:6]}-{i}" for i in range(20)]
        client = get_sync_redis()
        assert isinstance(client, redis.cluster.RedisCluster) and get_sync_redis() is client
        for name in names:
            client.set(name, name)

        async def run():
            shared = await get_async_redis()
            assert await get_async_redis() is shared
            # Many first commands at once on the shared (prepared) client: all answer.
            values = await asyncio.gather(*[shared.get(name) for name in names * 5])
            await close_async_redis(shared)
            return values

        assert [v.decode() for v in asyncio.run(run())] == names * 5
        assert len({cluster.master_of(name).port for name in names}) == 3
        client.close()
    finally:
        reset_shared_clients()


@needs_redis_server
def test_200_concurrent_requests_on_a_40_per_minute_key_get_exactly_40_through(cluster, make_key, start_gateway):
    gateway = start_gateway(name="cluster-exact", workers=3, env=cluster_env(cluster.nodes[1]))
    _, raw = make_key(name="cluster-burst", rpm=40)
    counts = burst([(gateway, raw)], 200)
    print("\ncluster exactness run:", dict(counts))
    assert counts == Counter({(200, None): 40, (429, "rate_limit_exceeded"): 160})


@needs_redis_server
def test_master_killed_under_load_no_500_resumes_and_loses_at_most_the_replication_lag(
    own_cluster, make_key, start_gateway
):
    key, raw = make_key(name="cluster-failover", rpm=1_000_000, budget_usd=1000)
    # The seed node in REDIS_URL is the very master that dies: once started, the client knows every node.
    victim = own_cluster.master_of(f"{{{key.lineage}}}")
    env = {**cluster_env(victim), **PRICED_ENV, "USAGE_FLUSH_SECONDS": "0.1"}
    gateway = start_gateway(name="cluster-failover", workers=2, env=env)

    def current_master():
        return own_cluster.master_of(f"{{{key.lineage}}}").client()

    result = failover_under_load(gateway=gateway, key=key, raw=raw, kill=victim.kill, current_master=current_master)
    summary = check_failover(result, gateway)
    print(f"\ncluster failover: {summary}")
    assert own_cluster.master_of(f"{{{key.lineage}}}").port != victim.port  # a replica took over

    # The limits count on the new master: a fresh key with 3 requests per minute gets exactly 3.
    _, tight = make_key(name="cluster-after", rpm=3)
    counts = burst([(gateway, tight)], 5)
    assert counts == Counter({(200, None): 3, (429, "rate_limit_exceeded"): 2}), dict(counts)


@needs_redis_server
def test_a_failover_loses_exactly_what_the_replica_had_not_received(own_cluster):
    """The bound, made visible: cut the replica's link to its master, write, kill the master. What was written
    before the cut survives the failover; what was written after it (the replica never got it) is lost, and nothing
    else. Through the store itself, in this process: the same client and scripts the gateway uses."""
    store = RedisLimitStore(topology=topology(own_cluster.nodes[0]))
    lineage = f"lag-{uuid.uuid4().hex[:6]}"
    rpm_key = f"tollgate:{{{lineage}}}:rpm"
    master = own_cluster.master_of(rpm_key)
    with master.client() as direct:
        link = direct.info("replication")["slave0"]
    replica = next(n for n in own_cluster.nodes if n.port == int(link["port"]))

    def ticket(request_id):
        return LimitTicket(key_prefix=lineage, scope=lineage, request_id=request_id, rpm=1_000_000)

    async def run():
        before = [f"before-{i}" for i in range(30)]
        after = [f"after-{i}" for i in range(20)]
        for request_id in before:
            assert (await store.admit(ticket(request_id))).status == 0
        with master.client() as direct:
            assert direct.execute_command("WAIT", 1, 2000) == 1  # the replica has every write so far
            replica.process.send_signal(signal.SIGSTOP)  # it cannot reconnect until the master is gone
            try:
                direct.client_kill_filter(_type="replica")
                for request_id in after:  # acknowledged by the master, never sent to the replica
                    assert (await store.admit(ticket(request_id))).status == 0
                master.kill()
            finally:
                replica.process.send_signal(signal.SIGCONT)
        killed_at = time.monotonic()
        while True:  # the same client, kept: it finds the promoted replica by itself
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
    new_master = own_cluster.master_of(rpm_key)
    assert new_master.port == replica.port
    with new_master.client() as direct:
        kept = {m.decode() for m in direct.zrange(rpm_key, 0, -1)}
    lost = [r for r in before + after if r not in kept]
    print(
        f"\ndeliberate lag: {len(after)} admissions written after the replica's link was cut, {len(lost)} lost; "
        f"{len(before)} before it, all kept; the store resumed {resumed:.2f} s after the kill"
    )
    assert set(before) <= kept and "resumed" in kept
    assert lost == after


@needs_redis_server
def test_upstream_health_and_caps_are_shared_through_the_cluster(cluster, settings):
    """The upstreams' routing state goes through the same factory: on a Cluster, an upstream's requests-per-minute
    cap admits exactly its limit, and failures past the threshold make it rest, for the async readers the relay uses
    and the blocking ones the admin uses, with upstreams spread over several masters."""
    settings.REDIS_SENTINELS = []
    settings.REDIS_CLUSTER = True
    settings.REDIS_URL = f"redis://127.0.0.1:{cluster.nodes[0].port}/0"
    reset_shared_clients()
    store = RedisRouteStore()
    names: list[str] = []
    masters: set[int] = set()
    while len(masters) < 3 or len(names) < 6:  # upstreams on every master
        names.append(f"up-{uuid.uuid4().hex[:8]}")
        masters.add(cluster.master_of(f"{{{names[-1]}}}").port)

    async def run():
        taken = [await store.take(names[0], 3, None, 0, f"member-{i}") for i in range(5)]
        for name in names:
            for attempt in range(settings.UPSTREAM_FAILURE_THRESHOLD):
                await store.fail(name, None, {"reason": "5xx", "message": f"attempt {attempt}"})
        return taken, await store.resting(names)

    try:
        taken, resting = asyncio.run(run())
        assert taken == [True, True, True, False, False]
        assert set(resting) == set(names), resting
        assert set(store.resting_now(names)) == set(names)
        assert store.last_errors(names[0])[0]["reason"] == "5xx"
    finally:
        reset_shared_clients()
