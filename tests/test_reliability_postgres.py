"""Postgres restarted under load, on a throwaway cluster of the test's own.

The machine's shared cluster is never touched: the module runs `initdb` into a temporary directory (as the
`postgres` OS user when the tests run as root, since Postgres refuses to run as root), starts it on a free port
with its socket in that directory, migrates a database there and creates a key with `manage.py create_api_key`,
as an operator would. A gateway (two workers) runs on it, once with the shared Redis as its limit store and once
with the database as the limit store (`REDIS_URL=""`). Four client threads send plain and streamed completions
with a key that has limits and a budget; mid-load the database is stopped (`pg_ctl stop -m fast`: every
connection is cut), kept down for two seconds and started again; and, separately, restarted at once
(`pg_ctl restart -m fast`). What must hold:

* every request either succeeds or fails with OpenAI's 503: never a 500, never a 401 for the valid key, no
  broken stream; without Redis the limiter needs the database and answers 503 while it is down, with Redis no
  request needs it (keys are cached, usage is buffered) and every request succeeds;
* every request is a 200 again within seconds of the database's return, with no restart;
* no usage record is lost: after a clean shutdown (SIGTERM flushes the writer's buffer) the database holds a
  `UsageRecord` for every request id the clients got a 200 for (a direct query, not through the gateway).

The figures (requests by status, recovery time, records lost) are printed (`pytest -s`).
"""

import glob
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.conftest import ROOT, SteadyLoad, free_port, seconds_until_steady

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("REDIS_URL", "")
DOWN_SECONDS = 2.0
RECOVERY_PROMISE_SECONDS = 10.0  # generous: 2 noisy shared cores; measured figures are printed


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (Debian layout), if any."""
    found = sorted(
        (Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    return found[-1] if found else None


def cannot_run_postgres() -> str:
    """Why this machine cannot host a throwaway cluster ("" when it can)."""
    if postgres_bindir() is None:
        return "no PostgreSQL server binaries under /usr/lib/postgresql/*/bin"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser: cannot start Postgres as another user"
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres OS user to run Postgres as"
    return ""


class ThrowawayPostgres:
    """A PostgreSQL cluster in a temporary directory, on a free port, removed afterwards."""

    def __init__(self):
        self.bindir = postgres_bindir()
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            user = pwd.getpwnam("postgres")
            os.chown(self.dir, user.pw_uid, user.pw_gid)
        os.chmod(self.dir, 0o700)

    def run(self, tool: str, *args: str, timeout: float = 60) -> None:
        argv = [str(self.bindir / tool), *args]
        if self.as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{tool} failed: {result.stdout}\n{result.stderr}\n{self.tail()}"

    def tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def init(self) -> None:
        self.run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self.run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self) -> None:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-m", "fast", "-w", "restart")

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "postgres"):
        return psycopg.connect(self.url(database), autocommit=True, connect_timeout=5)

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except (AssertionError, subprocess.SubprocessError, OSError):
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


def manage(database_url: str, *args: str) -> str:
    """Run `manage.py` against `database_url` as an operator would; its stdout."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.base", "DATABASE_URL": database_url}
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"manage.py {' '.join(args)}: {result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def postgres():
    """A migrated database on a throwaway cluster: (cluster, database URL)."""
    reason = cannot_run_postgres()
    if reason:
        pytest.skip(reason)
    cluster = ThrowawayPostgres()
    try:
        cluster.init()
        cluster.start()
        with cluster.connect() as conn:
            conn.execute("CREATE DATABASE tollgate")
        url = cluster.url("tollgate")
        manage(url, "migrate", "--noinput")
        yield cluster, url
    finally:
        cluster.destroy()


@pytest.mark.parametrize("outage", ["restart", "down-2s"])
@pytest.mark.parametrize(
    "store",
    [pytest.param("redis", marks=pytest.mark.skipif(not REDIS_URL, reason="REDIS_URL is not set")), "database"],
)
def test_postgres_restarted_under_load(store, outage, postgres, start_gateway):
    cluster, database_url = postgres
    # An operator's key, with limits and a budget: every request goes through the limiter and the price table.
    raw = manage(
        database_url, "create_api_key", f"restart-{store}-{outage}", "--rpm", "100000", "--tpm", "100000000",
        "--budget-usd", "1000", "--budget-period", "day",
    ).strip().splitlines()[-1]  # fmt: skip
    env = {"DATABASE_URL": database_url, "REDIS_URL": REDIS_URL if store == "redis" else ""}
    gateway = start_gateway(name=f"pg-{outage}-{store}", workers=2, env=env)

    # Streams of about a second each: several are always in flight when the database goes away.
    load = SteadyLoad(
        gateway.url, raw, threads=4, pause=0.02, stream_every=2, stream_fake={"chunks": 10, "chunk_delay_ms": 100}
    )
    load.start()
    try:
        time.sleep(2.0)
        stopped_at = time.monotonic()
        if outage == "restart":
            cluster.restart()  # `pg_ctl restart -m fast`: every connection cut, back at once
        else:
            cluster.stop("fast")
            time.sleep(DOWN_SECONDS)
            cluster.start()
        back_at = time.monotonic()
        time.sleep(8.0)
    finally:
        sent = load.stop()

    by_status = Counter((s.status, s.code) for s in sent)
    problems = [s for s in sent if s.problem]
    during = [s for s in sent if stopped_at <= s.started <= back_at]
    recovery = seconds_until_steady(sent, back_at)
    ok_ids = {s.request_id for s in sent if s.status == 200 and not s.problem}

    # A clean shutdown flushes what the usage writer still holds; then count with a direct query.
    returncode = gateway.stop(timeout=60)
    with cluster.connect("tollgate") as conn:
        stored = {
            row[0]
            for row in conn.execute(
                "SELECT request_id FROM usage_usagerecord WHERE request_id = ANY(%s)", (list(ok_ids),)
            )
        }
        records_503 = conn.execute(
            "SELECT count(*) FROM usage_usagerecord WHERE key_name = %s AND status = 503",
            (f"restart-{store}-{outage}",),
        ).fetchone()[0]
    lost = ok_ids - stored
    print(
        f"\npostgres {outage} under load ({back_at - stopped_at:.1f} s; limit store: {store}): {len(sent)} requests, "
        f"{dict(by_status)}; during the outage {dict(Counter(s.status for s in during))}; all 200 again "
        f"{'never' if recovery is None else f'{recovery * 1000:.0f} ms'} after it was back; usage records lost "
        f"{len(lost)} of {len(ok_ids)} answered 200 ({records_503} refusals recorded too)"
    )

    assert not problems, problems[:5]
    assert {status for status, _ in by_status} <= {200, 503}, dict(by_status)  # never a 500, never a 401
    assert all(code == "service_unavailable" for status, code in by_status if status == 503), dict(by_status)
    assert [s for s in sent if s.finished < stopped_at and s.status != 200] == []
    if store == "redis":
        # Nothing on the request path needs the database: cached keys, Redis limits, buffered usage.
        assert set(by_status) == {(200, "")}, dict(by_status)
    if outage == "down-2s":
        assert len(during) >= 4, "too few requests while the database was down to judge it"
        if store == "database":
            assert by_status[(503, "service_unavailable")] > 0, "the outage was not seen: the test proves nothing"
    assert recovery is not None and recovery < RECOVERY_PROMISE_SECONDS, recovery
    assert returncode == 0, gateway.log[-3000:]
    assert "not written" not in gateway.log
    assert lost == set(), f"{len(lost)} usage records lost of {len(ok_ids)}"
