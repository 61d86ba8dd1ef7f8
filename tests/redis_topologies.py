"""Throwaway Redis topologies on loopback for tests: a Redis Cluster (three masters, three replicas) and a Sentinel
set-up (a master, a replica, three sentinels), plus the failover-under-load check both share.

Every process runs without persistence in a temporary directory, on free ports, and is killed (SIGKILL) when the
topology stops, which its fixture always does; every wait is bounded.
"""

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.conftest import free_port

REDIS_SERVER = shutil.which("redis-server")
REDIS_CLI = shutil.which("redis-cli")
needs_redis_server = pytest.mark.skipif(
    not (REDIS_SERVER and REDIS_CLI), reason="redis-server and redis-cli are not installed (CI has them)"
)
START_SECONDS = 20.0


def wait_until(what: str, check, timeout: float):
    """Call `check()` until it returns something truthy (errors count as not yet); fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (redis.RedisError, OSError) as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f} s (last error: {last!r})")
        time.sleep(0.05)


class RedisProcess:
    """One `redis-server` (or sentinel) process on loopback; `kill()` is a crash."""

    def __init__(self, port: int, directory: Path, args=(), config: str = ""):
        self.port = port
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        argv = [REDIS_SERVER]
        if config:  # a sentinel needs a writable config file of its own
            path = directory / "sentinel.conf"
            path.write_text(config)
            argv.append(str(path))
        argv += ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        # A replica's first full sync starts at once instead of after Redis's default 5 s wait for more replicas: a
        # test that starts right away must not meet a replica that has nothing yet.
        argv += ["--dir", str(directory), "--repl-diskless-sync-delay", "0", *args]
        self.log = open(directory / "redis.log", "wb")  # noqa: SIM115 (closed in kill)
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def client(self, **kwargs) -> redis.Redis:
        kwargs.setdefault("socket_timeout", 2)
        kwargs.setdefault("socket_connect_timeout", 1)
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def wait_ready(self, timeout: float = START_SECONDS) -> None:
        def ping():
            assert self.process.poll() is None, f"redis on {self.port} exited: {self.read_log()[-2000:]}"
            with self.client() as client:
                return client.ping()

        wait_until(f"redis on port {self.port} answering", ping, timeout)

    def read_log(self) -> str:
        return (self.directory / "redis.log").read_text(errors="replace")

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        self.log.close()


class LocalCluster:
    """Six `redis-server --cluster-enabled yes` nodes joined by `redis-cli --cluster create --cluster-replicas 1`."""

    def __init__(self, directory: Path, node_timeout_ms: int = 1000):
        self.nodes: list[RedisProcess] = []
        self.node_timeout_ms = node_timeout_ms
        self.directory = directory

    def start(self) -> "LocalCluster":
        for index in range(6):
            port, bus = free_port(), free_port()
            args = [
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf", "--cluster-port", str(bus),
                "--cluster-node-timeout", str(self.node_timeout_ms), "--cluster-replica-validity-factor", "0",
            ]  # fmt: skip
            self.nodes.append(RedisProcess(port, self.directory / f"node-{index}", args))
        for node in self.nodes:
            node.wait_ready()
        argv = [
            REDIS_CLI, "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
            "--cluster-replicas", "1", "--cluster-yes",
        ]  # fmt: skip
        subprocess.run(
            argv,
            check=True,
            capture_output=True,
            timeout=START_SECONDS,
        )
        self.wait_healthy()
        return self

    def cluster_info(self, node: RedisProcess) -> dict:
        with node.client() as client:
            return client.cluster("INFO")

    def wait_healthy(self, timeout: float = START_SECONDS) -> None:
        """Every live node sees the cluster as ok, with three masters serving all 16384 slots, and every live
        replica has finished its full sync (a failover test must not kill a master whose replica holds nothing
        yet: a CI run lost 2.5 s of writes to that, not to replication lag)."""

        def healthy():
            for node in self.nodes:
                if node.alive:
                    info = self.cluster_info(node)
                    if info.get("cluster_state") != "ok" or int(info.get("cluster_slots_ok", 0)) != 16384:
                        return False
                    with node.client() as client:
                        replication = client.info("replication")
                    if replication["role"] == "slave" and (
                        replication.get("master_link_status") != "up" or replication.get("master_sync_in_progress")
                    ):
                        return False
            return len(self.masters()) == 3

        wait_until("the cluster being healthy", healthy, timeout)

    def masters(self) -> dict[int, RedisProcess]:
        """Live masters by port."""
        found = {}
        for node in self.nodes:
            if node.alive:
                with node.client() as client:
                    if client.info("replication")["role"] == "master":
                        found[node.port] = node
        return found

    def master_of(self, key: str) -> RedisProcess:
        """The live node that serves `key`'s slot now."""
        slot = redis.cluster.key_slot(key.encode())
        for node in self.nodes:
            if not node.alive:
                continue
            with node.client() as client:
                for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                    if start <= slot <= end:
                        port = int(master[1])
                        return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node serves slot {slot}")

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()


class LocalSentinels:
    """A master, its replica and three sentinels watching them as `master_name`."""

    def __init__(self, directory: Path, master_name: str = "tollgate", down_after_ms: int = 1000):
        self.directory = directory
        self.master_name = master_name
        self.down_after_ms = down_after_ms
        self.servers: list[RedisProcess] = []
        self.sentinels: list[RedisProcess] = []

    def start(self) -> "LocalSentinels":
        master = RedisProcess(free_port(), self.directory / "master")
        self.servers.append(master)
        master.wait_ready()
        replica = RedisProcess(free_port(), self.directory / "replica", ["--replicaof", "127.0.0.1", str(master.port)])
        self.servers.append(replica)
        replica.wait_ready()

        def in_sync():
            with replica.client() as client:
                return client.info("replication").get("master_link_status") == "up"

        wait_until("the replica in sync", in_sync, START_SECONDS)
        for index in range(3):
            config = (
                f"sentinel monitor {self.master_name} 127.0.0.1 {master.port} 2\n"
                f"sentinel down-after-milliseconds {self.master_name} {self.down_after_ms}\n"
                f"sentinel failover-timeout {self.master_name} 5000\n"
                f"sentinel parallel-syncs {self.master_name} 1\n"
            )
            sentinel = RedisProcess(free_port(), self.directory / f"sentinel-{index}", ["--sentinel"], config=config)
            self.sentinels.append(sentinel)
        for sentinel in self.sentinels:
            sentinel.wait_ready()

        def all_know_everyone():
            for sentinel in self.sentinels:
                with sentinel.client(decode_responses=True) as client:
                    state = client.sentinel_master(self.master_name)
                    if int(state["num-other-sentinels"]) != 2 or int(state["num-slaves"]) != 1:
                        return False
            return True

        wait_until("the sentinels seeing each other and the replica", all_know_everyone, START_SECONDS)
        return self

    @property
    def env_value(self) -> str:
        return ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)

    def current_master(self) -> RedisProcess:
        with self.sentinels[0].client(decode_responses=True) as client:
            _, port = client.sentinel_get_master_addr_by_name(self.master_name)
        return next(s for s in self.servers if s.port == int(port))

    def stop(self) -> None:
        for process in self.sentinels + self.servers:
            process.kill()


# FAILOVER UNDER LOAD (shared by the Cluster and the Sentinel tests)

# A failover may lose what the old master acknowledged but had not yet sent to its replica: Redis replicates
# asynchronously. On loopback the replica is normally a few milliseconds behind; the tests allow one second
# (two cores shared with other work) and print what they measured.
REPLICATION_LAG_BOUND_SECONDS = 1.0
RESUME_PROMISE_SECONDS = 15.0
# Prices with the fallback (no ModelPrice row for this model): one token costs 0.001 USD.
PRICED_ENV = {"PRICE_FALLBACK_INPUT_PER_MILLION": "1000", "PRICE_FALLBACK_OUTPUT_PER_MILLION": "1000"}
PRICED_MODEL = "failover-priced-model"


def counter_keys(lineage: str, prefix: str = "tollgate") -> tuple[str, str]:
    """The requests/min log and the budget hash of a key without a team (metering/redis_store.py)."""
    from django.utils import timezone

    from metering.base import BudgetWindow

    label = BudgetWindow.at("month", timezone.now()).label
    return f"{prefix}:{{{lineage}}}:rpm", f"{prefix}:{{{lineage}}}:budget:{label}"


def failover_under_load(*, gateway, key, raw, kill, current_master, threads: int = 4) -> dict:
    """Send steady traffic with `raw` (a key with a budget and a high requests/min limit, so every request runs
    both scripts) through `gateway`, `kill()` the master that holds the key's counters after 2.5 s, and keep going
    until every request has been a 200 again for 3 s (at most RESUME_PROMISE_SECONDS + 3 s).

    Then reads the key's counters from `current_master()` (a client to whichever server holds them now) and
    compares them with what the clients saw and what the usage records say. Returns the measurements; asserts
    nothing but the load finishing.
    """
    from django.db.models import Sum

    from tests.conftest import SteadyLoad, seconds_until_steady
    from usage.models import UsageRecord

    load = SteadyLoad(
        gateway.url, raw, threads=threads, pause=0.01, stream_every=3, model=PRICED_MODEL,
        stream_fake={"chunks": 3, "chunk_delay_ms": 20}, timeout=30,
    )  # fmt: skip
    load.start()
    try:
        time.sleep(2.5)
        killed_at = time.monotonic()
        kill()
        deadline = killed_at + RESUME_PROMISE_SECONDS + 3
        while time.monotonic() < deadline:
            time.sleep(0.25)
            resumed = seconds_until_steady(load.sent(), killed_at)
            if resumed is not None and time.monotonic() - (killed_at + resumed) >= 3.0:
                break
    finally:
        sent = load.stop()
    resumed = seconds_until_steady(sent, killed_at)

    ok = [s for s in sent if s.status == 200]
    rpm_key, budget_key = counter_keys(key.lineage)
    with current_master() as client:
        counted = {member.decode() for member in client.zrange(rpm_key, 0, -1)}
        spent, reserved = (int(v or 0) for v in client.hmget(budget_key, "spent", "reserved"))
    lost = [s for s in ok if s.request_id not in counted]

    # Every 200 is recorded (the writer flushes every 0.1 s here); the records are what the budget must match.
    records = UsageRecord.objects.filter(key_prefix=key.prefix, status=200)
    wait_until("every answered request recorded", lambda: records.count() >= len(ok), 20)
    recorded = records.aggregate(total=Sum("cost_usd"))["total"]
    most = max(r.cost_usd for r in records)
    units = 10**8  # the store counts money in 1e-8 USD
    return {
        "sent": sent,
        "killed_at": killed_at,
        "resumed": resumed,
        "ok": ok,
        "lost": lost,
        "lost_before_kill": [killed_at - s.started for s in lost],
        "recorded_units": int(recorded * units),
        "redis_units": spent + reserved,
        "most_units": int(most * units),
    }


def check_failover(result: dict, gateway) -> str:
    """The promises of a failover, asserted; a one-line summary to print."""
    from collections import Counter

    sent, lost = result["sent"], result["lost"]
    by_status = Counter(s.status for s in sent)
    problems = [s for s in sent if s.problem]
    resumed = "never" if result["resumed"] is None else f"{result['resumed']:.2f} s"
    summary = (
        f"{len(sent)} requests {dict(by_status)}; all 200 again {resumed} after the kill; "
        f"admissions lost by the failover: {len(lost)} of {len(result['ok'])} "
        f"(admitted {', '.join(f'{x * 1000:.0f} ms' for x in result['lost_before_kill']) or '-'} before the kill); "
        f"budget: recorded {result['recorded_units'] / 1e8:.5f} USD, Redis spent+reserved "
        f"{result['redis_units'] / 1e8:.5f} USD"
    )
    # No 500, no dropped connection, no broken answer: during the failover limited requests are refused in
    # OpenAI's shape (503 service_unavailable: nothing passes unmetered).
    assert not problems, problems[:5]
    assert set(by_status) <= {200, 503}, summary
    assert all(s.code == "service_unavailable" for s in sent if s.status == 503), summary
    assert by_status[503] > 0, f"the kill was not noticed: {summary}"
    # It resumes by itself.
    assert result["resumed"] is not None and result["resumed"] < RESUME_PROMISE_SECONDS, summary
    # The bound on what a failover loses: only admissions the old master acknowledged within the replication lag
    # before it died (none after: the requests of the outage were refused, not counted on a dead master).
    assert all(0 <= x <= REPLICATION_LAG_BOUND_SECONDS for x in result["lost_before_kill"]), summary
    # Budgets hold: Redis's spent + reserved covers every recorded cent except, at most, the requests whose
    # admission was lost (a reservation is the worst case of its request, so a settlement that failed in the
    # failover still holds its money as reserved).
    assert result["redis_units"] >= result["recorded_units"] - len(lost) * result["most_units"], summary
    assert gateway.process.poll() is None
    return summary
