"""`make bench`: what Tollgate adds in front of an upstream, measured side by side with the upstream alone.

    python bench/run.py [--quick] [--workers N] [--only plain,embeddings,completions,responses,streams] [--duration S]
                        [--streams 1000,3000] [--stream-runs 5] [--stream-api chat|responses] [--py-spy] [--out FILE]

Starts, on loopback only, the bundled fake upstream (`python -m fakeupstream --no-record`) and the production
server (`gunicorn -c config/gunicorn.conf.py`, `config.settings.production`, N uvicorn workers) against a fresh
database: a new PostgreSQL database `tollgate_bench_<pid>` on the server of `DATABASE_URL` when that is set
(dropped at the end), else a temporary SQLite file; with `REDIS_URL`, Redis database `BENCH_REDIS_DB` (15 by
default) of that server, flushed before and after. Two keys are created: one with limits high enough never to
trigger but still enforced (rpm, tpm, concurrency, budget), so every figure includes auth, limits and usage
recording, and one without limits.

Every case runs twice in the same run, against the fake upstream directly and through the gateway:

* plain completions with `wrk` (closed loop) at 1, 16, 64 and 256 connections: req/s, p50/p99, non-2xx, and
  the gateway workers' CPU time per request;
* the same request open-loop at a fixed rate below saturation (bench/streams.py `paced`): the latency the
  gateway adds when it is not queueing;
* the key without limits at 1 connection: what the limiter and the usage recorder cost per request;
* database transactions per request during the 16-connection run (PostgreSQL's `pg_stat_database`) and the
  tables it touched (`pg_stat_user_tables`): a known key costs no query; the key-cache poll and the batched
  usage writes are per worker, not per request;
* `POST /v1/embeddings` (one short input) and legacy `POST /v1/completions` (a one-line prompt) with `wrk` at
  16 connections (bench/wrk/embeddings.lua, completions.lua): the same figures as the plain chat case, so the
  three endpoints' costs read side by side;
* held streams (bench/streams.py `streams`): 1,000 of them `--stream-runs` times in a row (5 by default: one
  run says little about a tail), then 3,000 once (`--streams` sets the levels). Per run, direct and through the
  gateway: errors, first byte p50/p99, the gateway workers' CPU (also per relayed event), the peak of their
  summed RSS, and each worker's event-loop lag over the run (`tollgate_event_loop_lag_seconds` from /metrics:
  samples over 50 and 100 ms, the worst). `--py-spy` records each worker with py-spy during every gateway run
  (raw stacks, kept in the logs directory).

Prints a table, checks the performance bars, and writes `bench/results/<timestamp>.json`. Ends on its own: every
step has a timeout, and the whole run is bounded by `--max-seconds`.

bench/compare.py reuses the pieces below (fresh database, gateway start, wrk) to run two checkouts side by side.
"""

import argparse
import contextlib
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
CHAT_PATH = "/v1/chat/completions"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# Limits that never trigger at bench rates but make the limiter do all its work on every request.
LIMITED_KEY_ARGS = [
    "--rpm", "10000000", "--tpm", "2000000000", "--max-concurrent", "1000000", "--budget-usd", "10000000",
]  # fmt: skip

BARS = {
    "plain_rps_16": 1000.0,  # req/s at 16 connections
    "added_p50_ms": 2.0,  # median added latency over direct
    "stream_errors": 0,
    "first_byte_p99_added_ms": 50.0,  # at 1,000 streams, in every run
    "first_byte_p99_added_ms_3000": 100.0,
    "responses_first_event_p99_added_ms": 10.0,  # 1,000 held Responses streams (`--stream-api responses`)
    "responses_share_of_chat": 0.9,  # plain Responses req/s over plain chat's, 16 connections, same run
    "rss_gib": 1.0,
}


class Endpoint(NamedTuple):
    """A case `wrk` drives: where it posts, its script in bench/wrk/, and how a good answer is recognised."""

    path: str
    script: str
    check_body: dict  # one request sent through the gateway before anything is measured
    answer_object: str  # the `object` field of a successful answer


ENDPOINTS = {
    "chat": Endpoint(
        CHAT_PATH,
        "chat.lua",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
        "chat.completion",
    ),
    "embeddings": Endpoint(
        "/v1/embeddings",
        "embeddings.lua",
        {"model": "text-embedding-3-small", "input": "hi", "encoding_format": "base64"},
        "list",
    ),
    "completions": Endpoint(
        "/v1/completions",
        "completions.lua",
        {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 16},
        "text_completion",
    ),
    "responses": Endpoint(
        "/v1/responses",
        "responses.lua",
        {"model": "gpt-4o-mini", "input": "hi", "store": False},
        "response",
    ),
}

# The `--only` choices, in the order a full run measures them. "plain" is chat; "completions" is the legacy
# endpoint.
CASES = ("plain", "embeddings", "completions", "responses", "streams")
ENDPOINT_CONNECTIONS = 16


class BenchError(Exception):
    """A step failed; the message says which and how to reproduce it."""


def log(message: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"{process.args[2:4]} exited with {process.returncode}:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a loopback URL we built)
                if response.status < 500:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{url} did not answer within {timeout:g} s:\n{tail(log_path)}")


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Server:
    """A subprocess in its own session, output to a log file; stopped with SIGTERM, then SIGKILL."""

    def __init__(self, argv: list[str], env: dict, log_path: Path, cwd: Path = ROOT):
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


# PROCESS ACCOUNTING (/proc)


def children_of(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(stat.parent.name))
        return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of `pids` (all their threads), in seconds."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


class RSSSampler(threading.Thread):
    """Samples the summed RSS of a gunicorn master's children every `interval` seconds; keeps the peak."""

    def __init__(self, master_pid: int, interval: float = 0.5):
        super().__init__(daemon=True)
        self.master_pid = master_pid
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            self.peak = max(self.peak, sum(rss_bytes(pid) for pid in children_of(self.master_pid)))
            self.samples += 1
            self._stop_event.wait(self.interval)

    def stop(self) -> int:
        self._stop_event.set()
        self.join(5)
        return self.peak


# DATABASE AND REDIS


class FreshDatabase:
    """A new PostgreSQL database on DATABASE_URL's server (created and dropped here), or a temporary SQLite file."""

    def __init__(self, workdir: Path, name: str = ""):
        source = os.environ.get("DATABASE_URL", "")
        self.name = name or f"tollgate_bench_{os.getpid()}"
        self.vendor = "sqlite"
        self._admin = None
        if source.startswith(("postgres://", "postgresql://", "pgsql://")):
            import psycopg

            parts = urlsplit(source)
            self.vendor = "postgresql"
            self._connect = lambda dbname: psycopg.connect(
                host=parts.hostname or "127.0.0.1",
                port=parts.port or 5432,
                user=parts.username or "postgres",
                password=parts.password or None,
                dbname=dbname,
                autocommit=True,
            )
            self._admin = self._connect("postgres")
            self._admin.execute(f'CREATE DATABASE "{self.name}"')
            self.url = urlunsplit(parts._replace(path=f"/{self.name}", query=""))
            self._stats = self._connect(self.name)
        elif source:
            raise BenchError(f"DATABASE_URL must be PostgreSQL (or unset for SQLite), not {source.split(':')[0]}")
        else:
            self.url = f"sqlite:///{workdir / (self.name + '.sqlite3')}"

    def counters(self) -> dict | None:
        """Cumulative transaction and row counters of the bench database (PostgreSQL only)."""
        if self.vendor != "postgresql":
            return None
        self._stats.execute("SELECT pg_stat_clear_snapshot()")
        row = self._stats.execute(
            "SELECT xact_commit + xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated "
            "FROM pg_stat_database WHERE datname = %s",
            (self.name,),
        ).fetchone()
        names = ("transactions", "rows_returned", "rows_fetched", "rows_inserted", "rows_updated")
        return dict(zip(names, row, strict=True))

    def table_counters(self) -> dict:
        """Per table: index and sequential scans, rows inserted and updated (PostgreSQL only)."""
        if self.vendor != "postgresql":
            return {}
        self._stats.execute("SELECT pg_stat_clear_snapshot()")
        rows = self._stats.execute(
            "SELECT relname, coalesce(seq_scan, 0) + coalesce(idx_scan, 0), n_tup_ins, n_tup_upd "
            "FROM pg_stat_user_tables"
        ).fetchall()
        return {name: {"scans": scans, "inserted": ins, "updated": upd} for name, scans, ins, upd in rows}

    def drop(self) -> None:
        if self._admin is None:
            return
        with contextlib.suppress(Exception):
            self._stats.close()
        try:
            self._admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        finally:
            self._admin.close()


def bench_redis_url(db: int | None = None) -> str:
    """REDIS_URL pointed at the bench's own database number, flushed; "" without REDIS_URL."""
    source = os.environ.get("REDIS_URL", "")
    if not source:
        return ""
    if db is None:
        db = int(os.environ.get("BENCH_REDIS_DB", "15"))
    url = urlunsplit(urlsplit(source)._replace(path=f"/{db}"))
    flush_redis(url)
    return url


def flush_redis(url: str) -> None:
    if not url:
        return
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        client.flushdb()
    finally:
        client.close()


# LOAD GENERATORS


def run_wrk(url: str, *, connections: int, duration: float, key: str = "", endpoint: str = "chat") -> dict:
    """One wrk run; returns req/s, latency percentiles (ms), non-2xx and socket errors."""
    case = ENDPOINTS[endpoint]
    argv = [
        "wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
        "-s", str(BENCH / "wrk" / case.script), url + case.path,
    ]  # fmt: skip
    env = {**os.environ, "BENCH_KEY": key}
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=duration + 60, check=False)
    line = next((x for x in reversed(result.stdout.splitlines()) if x.startswith("BENCH_JSON ")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"wrk failed ({result.returncode}): {result.stderr.strip() or result.stdout[-2000:]}")
    raw = json.loads(line.removeprefix("BENCH_JSON "))
    lat = raw["latency_us"]
    errors = raw["errors"]
    seconds = raw["duration_us"] / 1e6
    return {
        "rps": round(raw["requests"] / seconds, 1),
        "requests": raw["requests"],
        "p50_ms": round(lat["p50"] / 1000, 3),
        "p90_ms": round(lat["p90"] / 1000, 3),
        "p99_ms": round(lat["p99"] / 1000, 3),
        "max_ms": round(lat["max"] / 1000, 3),
        "non_2xx": errors["status"],
        "socket_errors": errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
    }


def run_client(mode: str, url: str, key: str, args: list[str], timeout: float, path: str = CHAT_PATH) -> dict:
    argv = [PY, str(BENCH / "streams.py"), mode, "--url", url + path, "--key", key, *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if result.returncode != 0:
        raise BenchError(f"bench/streams.py {mode} failed: {result.stderr.strip()[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# GATEWAYS (also used by bench/compare.py, for any checkout of Tollgate with its own Python)

SETUP_CODE = """
import io, json
from django.core.management import call_command
call_command("migrate", interactive=False, verbosity=0)
keys = {}
for name, extra in (("limited", LIMITED), ("unlimited", [])):
    out = io.StringIO()
    call_command("create_api_key", "bench-" + name, *extra, stdout=out, stderr=io.StringIO())
    keys[name] = out.getvalue().strip().splitlines()[-1]
print("BENCH_KEYS " + json.dumps(keys))
"""


def gateway_env(fake_url: str, database_url: str, redis_url: str) -> dict:
    """The production settings' environment for a gateway in front of the fake upstream."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.production",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(50),
        "OPENAI_API_KEY": "sk-bench-dummy-upstream-key",
        "OPENAI_BASE_URL": f"{fake_url}/v1",
        "DATABASE_URL": database_url,
        # The API paths never redirect (config/asgi.py); this keeps /healthz answering over plain HTTP too.
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    return env


def create_keys(python: str, root: Path, env: dict) -> dict[str, str]:
    """Migrate the (fresh) database and create the bench keys with the checkout's own code; {name: raw key}."""
    code = SETUP_CODE.replace("LIMITED", repr(LIMITED_KEY_ARGS))
    result = subprocess.run(
        [python, "manage.py", "shell", "-c", code],
        cwd=root, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    line = next((x for x in result.stdout.splitlines() if x.startswith("BENCH_KEYS ")), None)
    if result.returncode != 0 or line is None:
        raise BenchError(f"database setup failed in {root}:\n{result.stderr[-3000:]}")
    return json.loads(line.removeprefix("BENCH_KEYS "))


def start_gateway(python: str, root: Path, env: dict, port: int, workers: int, log_path: Path) -> Server:
    """gunicorn with the checkout's own config on 127.0.0.1:`port`, returned once every worker is up."""
    argv = [
        python, "-m", "gunicorn", "-c", "config/gunicorn.conf.py",
        "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
    ]  # fmt: skip
    server = Server(argv, env, log_path, cwd=root)
    wait_for_http(f"http://127.0.0.1:{port}/healthz", server.process, log_path)
    deadline = time.monotonic() + 60
    while len(children_of(server.pid)) < workers:
        if time.monotonic() > deadline:
            raise BenchError(f"gunicorn did not start {workers} workers:\n{tail(log_path)}")
        time.sleep(0.2)
    return server


def check_gateway(url: str, key: str, log_path: Path, endpoint: str = "chat") -> None:
    """One real request through the gateway must succeed before anything is measured."""
    case = ENDPOINTS[endpoint]
    request = urllib.request.Request(  # noqa: S310 (a loopback URL we built)
        url + case.path,
        data=json.dumps(case.check_body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
            answer = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        body = exc.read()[:500].decode(errors="replace")
        raise BenchError(f"POST {case.path} through the gateway: {exc.code} {body}\n{tail(log_path)}") from None
    except OSError as exc:
        raise BenchError(f"POST {case.path} through the gateway failed: {exc}\n{tail(log_path)}") from None
    if answer.get("object") != case.answer_object:
        raise BenchError(f"unexpected answer from POST {case.path} through the gateway: {answer}")


def measure_gateway(
    gateway: Server, url: str, *, connections: int, duration: float, key: str, endpoint: str = "chat"
) -> dict:
    """run_wrk against a gateway, plus the CPU its workers spent per request."""
    workers = children_of(gateway.pid)
    before = cpu_seconds(workers)
    result = run_wrk(url, connections=connections, duration=duration, key=key, endpoint=endpoint)
    spent = cpu_seconds(workers) - before
    result["cpu_ms_per_request"] = round(spent * 1000 / max(1, result["requests"]), 3)
    return result


# THE RUN


class Bench:
    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.duration = args.duration or (1.0 if self.quick else 6.0)
        self.workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
        self.db: FreshDatabase | None = None
        self.redis_url = ""
        self.fake: Server | None = None
        self.gateway: Server | None = None
        self.keys: dict[str, str] = {}

    # setup and teardown

    def start(self) -> None:
        self.db = FreshDatabase(self.workdir)
        self.redis_url = bench_redis_url()
        fake_port, gateway_port = free_port(), free_port()
        self.fake_url = f"http://127.0.0.1:{fake_port}"
        self.gateway_url = f"http://127.0.0.1:{gateway_port}"
        env = gateway_env(self.fake_url, self.db.url, self.redis_url)
        self.env = env

        log(f"fake upstream on {self.fake_url}")
        self.fake = Server(
            [PY, "-m", "fakeupstream", "--no-record", "--port", str(fake_port)], env, self.workdir / "fake.log"
        )
        wait_for_http(f"{self.fake_url}/_fake/stats", self.fake.process, self.fake.log_path)

        log(f"migrating a fresh {self.db.vendor} database, creating the bench keys")
        self.keys = create_keys(PY, ROOT, env)

        log(f"gateway: gunicorn with {self.args.workers} workers on {self.gateway_url}")
        self.gateway = start_gateway(PY, ROOT, env, gateway_port, self.args.workers, self.workdir / "gateway.log")
        check_gateway(self.gateway_url, self.keys["limited"], self.gateway.log_path)
        # Warm up: both workers' first requests (lazy imports, the upstream connection pool, the key cache).
        run_wrk(self.gateway_url, connections=16, duration=1 if self.quick else 2, key=self.keys["limited"])
        run_wrk(self.gateway_url, connections=16, duration=1, key=self.keys["unlimited"])
        run_wrk(self.fake_url, connections=16, duration=1)

    def stop(self) -> None:
        for server in (self.gateway, self.fake):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if self.db is not None:
            try:
                self.db.drop()
            except Exception as exc:
                log(f"could not drop database {self.db.name}: {exc}")
        with contextlib.suppress(Exception):
            flush_redis(self.redis_url)
        if self.args.keep_logs:
            log(f"logs kept in {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def workers(self) -> list[int]:
        return children_of(self.gateway.pid)

    # cases

    def gateway_wrk(self, connections: int, key: str, endpoint: str = "chat") -> dict:
        return measure_gateway(
            self.gateway, self.gateway_url, connections=connections, duration=self.duration, key=key, endpoint=endpoint
        )

    def endpoint(self, endpoint: str) -> dict:
        """One endpoint besides chat, closed loop at 16 connections: direct, then through the gateway.

        Checked with one request first, so a gateway without the endpoint fails here with its answer, and warmed
        up for a second: the workers' first requests to a new path are not what is measured.
        """
        path = ENDPOINTS[endpoint].path
        check_gateway(self.gateway_url, self.keys["limited"], self.gateway.log_path, endpoint)
        connections = ENDPOINT_CONNECTIONS
        run_wrk(self.gateway_url, connections=connections, duration=1, key=self.keys["limited"], endpoint=endpoint)
        log(f"{path}, {connections} connections: direct, then through the gateway")
        direct = run_wrk(self.fake_url, connections=connections, duration=self.duration, endpoint=endpoint)
        gateway = self.gateway_wrk(connections, self.keys["limited"], endpoint)
        level = {
            "connections": connections,
            "direct": direct,
            "gateway": gateway,
            "added_p50_ms": round(gateway["p50_ms"] - direct["p50_ms"], 3),
            "added_p99_ms": round(gateway["p99_ms"] - direct["p99_ms"], 3),
        }
        return {"path": path, "duration_s": self.duration, "levels": [level]}

    def plain(self) -> dict:
        levels = []
        db_counts = None
        limits_cost = None
        for connections in self.args.connections:
            log(f"plain, {connections} connections: direct, then through the gateway")
            direct = run_wrk(self.fake_url, connections=connections, duration=self.duration)
            counters, tables, counted_from = self.db.counters(), self.db.table_counters(), time.monotonic()
            gateway = self.gateway_wrk(connections, self.keys["limited"])
            if connections == 16 and counters is not None:
                time.sleep(1.5)  # PostgreSQL publishes a backend's statistics at most once a second
                seconds = time.monotonic() - counted_from
                db_counts = self.db_per_request(counters, self.db.counters(), seconds, gateway["requests"])
                db_counts["tables"] = table_deltas(tables, self.db.table_counters(), gateway["requests"])
            level = {
                "connections": connections,
                "direct": direct,
                "gateway": gateway,
                "added_p50_ms": round(gateway["p50_ms"] - direct["p50_ms"], 3),
                "added_p99_ms": round(gateway["p99_ms"] - direct["p99_ms"], 3),
            }
            levels.append(level)
            if connections == 1:
                log("plain, 1 connection, the key without limits")
                unlimited = self.gateway_wrk(1, self.keys["unlimited"])
                limits_cost = {
                    "connections": 1,
                    "with_limits": gateway,
                    "without_limits": unlimited,
                    "p50_ms": round(gateway["p50_ms"] - unlimited["p50_ms"], 3),
                    "cpu_ms_per_request": round(gateway["cpu_ms_per_request"] - unlimited["cpu_ms_per_request"], 3),
                }
        # Below saturation, or the open-loop figure measures a growing queue: at most half of what the gateway
        # did at 16 connections in this run.
        rate = self.args.rate
        saturated = next((level["gateway"]["rps"] for level in levels if level["connections"] == 16), None)
        if saturated is not None and rate > saturated / 2:
            rate = max(10, round(saturated / 2, -1))
        log(f"plain, open loop at {rate:g} req/s: direct, then through the gateway")
        paced_args = ["--rate", str(rate), "--duration", str(self.duration)]
        paced_direct = run_client("paced", self.fake_url, "", paced_args, timeout=self.duration + 90)
        paced_gateway = run_client("paced", self.gateway_url, self.keys["limited"], paced_args, self.duration + 90)
        paced = {
            "rate": rate,
            "requested_rate": self.args.rate,
            "direct": paced_direct,
            "gateway": paced_gateway,
            "added_p50_ms": round(paced_gateway["latency_ms"]["p50"] - paced_direct["latency_ms"]["p50"], 3),
            "added_p99_ms": round(paced_gateway["latency_ms"]["p99"] - paced_direct["latency_ms"]["p99"], 3),
        }
        return {
            "duration_s": self.duration,
            "levels": levels,
            "paced": paced,
            "limits_cost": limits_cost,
            "database": db_counts or {"note": "transaction counts need PostgreSQL (run with DATABASE_URL)"},
        }

    def db_per_request(self, before: dict, after: dict, seconds: float, requests: int) -> dict:
        """The run's counter increments, in total and per request.

        Not all of them are caused by requests one by one: each worker polls KeyGeneration at most every
        KEY_CACHE_CHECK_SECONDS and writes usage records in one transaction per batch, whatever the rate. A
        query on every request would show as 1 or more transactions per request.
        """
        counters = {}
        for name in before:
            delta = after[name] - before[name]
            counters[name] = {"during_run": delta, "per_request": round(delta / max(1, requests), 4)}
        return {"requests": requests, "seconds": round(seconds, 1), "counters": counters}

    def streams(self) -> dict:
        """Each level of `--streams` (the first `--stream-runs` times in a row, the others once): direct, then
        through the gateway, with the workers' CPU, RSS and event-loop lag over the gateway run."""
        levels = []
        chunks, delay = (10, 100) if self.quick else (100, 100)
        ramp = 1.0 if self.quick else 10.0
        plan = [(count, run) for index, count in enumerate(self.args.streams)
                for run in range(1, (self.args.stream_runs if index == 0 else 1) + 1)]  # fmt: skip
        for count, run in plan:
            label = (
                f"{count} held streams, run {run}" if run > 1 or self.args.stream_runs > 1 else f"{count} held streams"
            )
            log(f"{label} ({chunks} chunks {delay} ms apart, starts over {ramp:g} s): direct")
            argv = ["--count", str(count), "--ramp", str(ramp), "--chunks", str(chunks), "--chunk-delay-ms", str(delay),
                    "--api", self.args.stream_api]  # fmt: skip
            path = ENDPOINTS["responses"].path if self.args.stream_api == "responses" else CHAT_PATH
            limit = ramp + chunks * delay / 1000 + 180
            direct = run_client("streams", self.fake_url, "", argv, timeout=limit, path=path)
            time.sleep(1)
            log(f"{label}: through the gateway")
            sampler = RSSSampler(self.gateway.pid)
            workers = self.workers()
            idle_rss = sum(rss_bytes(pid) for pid in workers)
            lag_before = loop_lag(self.gateway_url)
            profilers = self.start_profilers(workers, f"{count}-{run}")
            sampler.start()
            cpu_before = cpu_seconds(workers)
            key = self.keys[self.args.stream_key]
            gateway = run_client("streams", self.gateway_url, key, argv, timeout=limit, path=path)
            gateway["cpu_s"] = round(cpu_seconds(workers) - cpu_before, 2)
            peak = sampler.stop()
            stop_profilers(profilers)
            gateway["rss_idle_mib"] = round(idle_rss / 2**20, 1)
            gateway["rss_peak_mib"] = round(peak / 2**20, 1)
            relayed = gateway["ok"] * gateway["events_max"]
            # All the workers' CPU over the run (each request's own work included) per event relayed.
            gateway["cpu_us_per_event"] = round(gateway["cpu_s"] * 1e6 / relayed, 1) if relayed else None
            gateway["loop_lag"] = loop_lag_delta(lag_before, loop_lag(self.gateway_url))
            levels.append(
                {
                    "streams": count,
                    "run": run,
                    "chunks": chunks,
                    "chunk_delay_ms": delay,
                    "ramp_s": ramp,
                    "key": self.args.stream_key,
                    "api": self.args.stream_api,
                    "direct": direct,
                    "gateway": gateway,
                    "first_byte_added_p50_ms": _added(gateway, direct, "p50"),
                    "first_byte_added_p99_ms": _added(gateway, direct, "p99"),
                }
            )
            time.sleep(1)
        return {"levels": levels}

    def start_profilers(self, workers: list[int], name: str) -> list:
        """`py-spy record` on each worker for the run (`--py-spy`), raw stacks into the work directory."""
        if not self.args.py_spy:
            return []
        py_spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
        profilers = []
        for pid in workers:
            out = self.workdir / f"py-spy-{name}-{pid}.txt"
            argv = [py_spy, "record", "--pid", str(pid), "--nonblocking", "--format", "raw", "--rate", "200",
                    "--output", str(out)]  # fmt: skip
            process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            profilers.append(process)
            log(f"py-spy on worker {pid}: {out}")
        return profilers


def stop_profilers(profilers: list) -> None:
    for process in profilers:
        process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    for process in profilers:
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


LAG_METRIC = "tollgate_event_loop_lag_seconds"


def loop_lag(url: str) -> dict:
    """{worker: {le: cumulative count}} of the gateway's event-loop lag histogram ({} if it has none)."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as response:  # noqa: S310 (loopback)
            text = response.read().decode()
    except OSError:
        return {}
    found: dict = {}
    for family in text_string_to_metric_families(text):
        if family.name != LAG_METRIC:
            continue
        for sample in family.samples:
            if sample.name == LAG_METRIC + "_bucket":
                found.setdefault(sample.labels["worker"], {})[sample.labels["le"]] = sample.value
    return found


def loop_lag_delta(before: dict, after: dict) -> dict:
    """Per worker over a run: samples, how many lagged over 50 and 100 ms, and the upper bound of the worst."""
    out = {}
    for worker, buckets in after.items():
        old = before.get(worker, {})
        delta = {le: count - old.get(le, 0) for le, count in buckets.items()}
        total = delta.get("+Inf", 0)
        bounds = sorted((float(le), count) for le, count in delta.items())
        worst = next((le for le, count in bounds if count >= total), None)
        out[worker] = {
            "samples": int(total),
            "over_50ms": int(total - delta.get("0.05", 0)),
            "over_100ms": int(total - delta.get("0.1", 0)),
            "worst_at_most_ms": None if worst is None or worst == float("inf") else worst * 1000,
        }
    return out


def table_deltas(before: dict, after: dict, requests: int) -> dict:
    """The tables the run touched: scans, inserts and updates during it, and scans per request."""
    touched = {}
    for name, counts in after.items():
        delta = {kind: value - before.get(name, {}).get(kind, 0) for kind, value in counts.items()}
        if any(delta.values()):
            delta["scans_per_request"] = round(delta["scans"] / max(1, requests), 4)
            touched[name] = delta
    return touched


def _added(gateway: dict, direct: dict, percentile: str) -> float | None:
    try:
        return round(gateway["first_byte_ms"][percentile] - direct["first_byte_ms"][percentile], 2)
    except KeyError:
        return None


# REPORT


def bars(results: dict) -> list[dict]:
    """The performance bars, each with the figure it is judged on and whether it is met.

    `judged` is False for figures shown beside a bar for reference: the median added latency of a saturated
    closed-loop run is queueing (p50 is about connections / throughput by Little's law), so the added-latency
    bar is judged below saturation, on the open-loop run.
    """
    out = []
    plain = results.get("plain")
    if plain:
        by_conn = {level["connections"]: level for level in plain["levels"]}
        if 16 in by_conn:
            rps = by_conn[16]["gateway"]["rps"]
            out.append(_bar("plain, 16 connections: req/s", rps, f">= {BARS['plain_rps_16']:g}", rps >= 1000))
            added = by_conn[16]["added_p50_ms"]
            name = "plain, 16 connections (closed loop, saturated): added p50 ms"
            out.append(_bar(name, added, "<= 2", added <= BARS["added_p50_ms"], judged=False))
        paced = plain["paced"]
        added = paced["added_p50_ms"]
        errors = paced["gateway"]["errors"] + paced["gateway"]["non_2xx"]
        out.append(
            _bar(
                f"plain, open loop at {paced['rate']:g} req/s: added p50 ms",
                added,
                "<= 2",
                added <= BARS["added_p50_ms"] and errors == 0,
            )
        )
        if 1 in by_conn:
            added = by_conn[1]["added_p50_ms"]
            name = "plain, 1 connection: added p50 ms"
            out.append(_bar(name, added, "<= 2", added <= BARS["added_p50_ms"], judged=False))
        responses = results.get("responses")
        if responses and 16 in by_conn:
            share = responses["levels"][0]["gateway"]["rps"] / by_conn[16]["gateway"]["rps"]
            limit = BARS["responses_share_of_chat"]
            name = "plain Responses req/s / chat req/s, 16 connections"
            out.append(_bar(name, round(share, 3), f">= {limit:g}", share >= limit))
        database = plain.get("database", {}).get("counters")
        if database:
            per_request = database["transactions"]["per_request"]
            name = "known key: DB transactions per request (a query per request would be >= 1)"
            out.append(_bar(name, per_request, "< 0.5", per_request < 0.5))
    streams = results.get("streams")
    if streams:
        by_count: dict[int, list[dict]] = {}
        for level in streams["levels"]:
            by_count.setdefault(level["streams"], []).append(level)
        for count, runs in by_count.items():
            if count not in (1000, 3000) and len(by_count) > 1:
                continue
            limit = BARS["first_byte_p99_added_ms"] if count <= 1000 else BARS["first_byte_p99_added_ms_3000"]
            if count <= 1000 and runs[0].get("api") == "responses":
                limit = BARS["responses_first_event_p99_added_ms"]
            errors = [level["gateway"]["errors"] for level in runs]
            out.append(_bar(f"{count} streams: errors (each run)", errors, "0", not any(errors)))
            added = [level["first_byte_added_p99_ms"] for level in runs]
            met = sum(1 for value in added if value is not None and value <= limit)
            name = f"{count} streams: first byte p99 added ms (each run; {met} of {len(runs)} met)"
            out.append(_bar(name, added, f"<= {limit:g} in every run", met == len(runs)))
            gib = max(level["gateway"]["rss_peak_mib"] for level in runs) / 1024
            out.append(_bar(f"{count} streams: workers' RSS GiB", round(gib, 3), "<= 1", gib <= BARS["rss_gib"]))
    return out


def _bar(name, value, bar, met, judged=True) -> dict:
    return {"name": name, "value": value, "bar": bar, "met": bool(met), "judged": judged}


def print_report(results: dict) -> None:
    meta = results["meta"]
    w = sys.stdout.write
    w(
        f"\nTollgate bench: {meta['workers']} workers, {meta['database']} database, "
        f"Redis {'on' if meta['redis'] else 'off'}; {meta['machine']['cpus']} CPUs ({meta['machine']['cpu_model']}), "
        f"load average before {meta['loadavg_before']}\n"
    )
    plain = results.get("plain")
    if plain:
        w(f"\nPlain completions, wrk closed loop, {plain['duration_s']:g} s each (latency in ms)\n")
        w(
            f"{'conns':>5} | {'direct req/s':>12} {'p50':>7} {'p99':>7} | {'gateway req/s':>13} {'p50':>7} "
            f"{'p99':>8} {'non-2xx':>7} {'CPU ms/req':>10} | {'added p50':>9}\n"
        )
        for level in plain["levels"]:
            d, g = level["direct"], level["gateway"]
            w(
                f"{level['connections']:>5} | {d['rps']:>12,.0f} {d['p50_ms']:>7.2f} {d['p99_ms']:>7.2f} | "
                f"{g['rps']:>13,.0f} {g['p50_ms']:>7.2f} {g['p99_ms']:>8.2f} {g['non_2xx'] + g['socket_errors']:>7} "
                f"{g['cpu_ms_per_request']:>10.3f} | {level['added_p50_ms']:>9.2f}\n"
            )
        paced = plain["paced"]
        d, g = paced["direct"]["latency_ms"], paced["gateway"]["latency_ms"]
        w(
            f"\nOpen loop at {paced['rate']:g} req/s (latency from the scheduled send, ms): "
            f"direct p50 {d['p50']:.2f} p99 {d['p99']:.2f} max {d['max']:.1f} | gateway p50 {g['p50']:.2f} "
            f"p99 {g['p99']:.2f} max {g['max']:.1f}, errors {paced['gateway']['errors'] + paced['gateway']['non_2xx']}"
            f" | added p50 {paced['added_p50_ms']:.2f}, p99 {paced['added_p99_ms']:.2f}\n"
        )
        cost = plain.get("limits_cost")
        if cost:
            w(
                f"Limits + usage recording at 1 connection: p50 {cost['with_limits']['p50_ms']:.3f} ms with limits vs "
                f"{cost['without_limits']['p50_ms']:.3f} without (+{cost['p50_ms']:.3f} ms); CPU per request "
                f"{cost['with_limits']['cpu_ms_per_request']:.3f} vs {cost['without_limits']['cpu_ms_per_request']:.3f}"
                f" ms (+{cost['cpu_ms_per_request']:.3f})\n"
            )
        database = plain.get("database", {})
        if "counters" in database:
            c = database["counters"]
            t = c["transactions"]
            w(
                f"Database during the 16-connection run ({database['requests']:,} requests in {database['seconds']} s):"
                f" {t['during_run']:,} transactions ({t['per_request']:.3f} per request: "
                f"key-cache polls and usage batches per worker, not per request), "
                f"{c['rows_inserted']['per_request']:.3f} rows inserted per request\n"
            )
            for table, delta in sorted(database.get("tables", {}).items()):
                w(
                    f"    {table}: {delta['scans']:,} scans ({delta['scans_per_request']:.4f}/request), "
                    f"{delta['inserted']:,} inserted, {delta['updated']:,} updated\n"
                )
        else:
            w(f"Database: {database.get('note', 'not measured')}\n")
    endpoints = [(name, results[name]) for name in ("embeddings", "completions", "responses") if name in results]
    if endpoints:
        if plain:
            # The chat row again, so the three endpoints read side by side.
            chat = next((level for level in plain["levels"] if level["connections"] == ENDPOINT_CONNECTIONS), None)
            if chat is not None:
                endpoints.insert(0, ("chat", {"path": CHAT_PATH, "duration_s": plain["duration_s"], "levels": [chat]}))
        w(
            f"\nEndpoints, wrk closed loop at {ENDPOINT_CONNECTIONS} connections, "
            f"{endpoints[-1][1]['duration_s']:g} s each (latency in ms)\n"
        )
        w(
            f"{'endpoint':<21} | {'direct req/s':>12} {'p50':>7} {'p99':>7} | {'gateway req/s':>13} {'p50':>7} "
            f"{'p99':>8} {'non-2xx':>7} {'CPU ms/req':>10} | {'added p50':>9}\n"
        )
        for _name, case in endpoints:
            for level in case["levels"]:
                d, g = level["direct"], level["gateway"]
                w(
                    f"{case['path']:<21} | {d['rps']:>12,.0f} {d['p50_ms']:>7.2f} {d['p99_ms']:>7.2f} | "
                    f"{g['rps']:>13,.0f} {g['p50_ms']:>7.2f} {g['p99_ms']:>8.2f} "
                    f"{g['non_2xx'] + g['socket_errors']:>7} {g['cpu_ms_per_request']:>10.3f} | "
                    f"{level['added_p50_ms']:>9.2f}\n"
                )
    streams = results.get("streams")
    if streams:
        level0 = streams["levels"][0]
        w(
            f"\nHeld {'Responses' if level0.get('api') == 'responses' else 'chat'} streams ({level0['chunks']} chunks "
            f"{level0['chunk_delay_ms']} ms apart, starts spread over "
            f"{level0['ramp_s']:g} s; first byte in ms)\n"
        )
        w(
            f"{'streams':>7} {'run':>3} | {'direct err':>10} {'fb p50':>7} {'fb p99':>7} | {'gateway err':>11} "
            f"{'fb p50':>7} {'fb p99':>8} {'RSS MiB':>8} {'CPU s':>6} {'µs/event':>8} {'lag>100ms':>9} "
            f"{'worst lag':>9} | {'added fb p99':>12}\n"
        )
        for level in streams["levels"]:
            d, g = level["direct"], level["gateway"]
            dfb, gfb = d["first_byte_ms"], g["first_byte_ms"]
            lag = g.get("loop_lag") or {}
            stalls = sum(worker["over_100ms"] for worker in lag.values())
            worst = max((worker["worst_at_most_ms"] or float("inf") for worker in lag.values()), default=0)
            w(
                f"{level['streams']:>7} {level.get('run', 1):>3} | {d['errors']:>10} {dfb.get('p50', 0):>7.1f} "
                f"{dfb.get('p99', 0):>7.1f} | {g['errors']:>11} {gfb.get('p50', 0):>7.1f} {gfb.get('p99', 0):>8.1f} "
                f"{g['rss_peak_mib']:>8.0f} {g['cpu_s']:>6.1f} {g.get('cpu_us_per_event') or 0:>8.1f} {stalls:>9} "
                f"{'≤' + format(worst, 'g') + ' ms' if worst != float('inf') else '> 10 s':>9} | "
                f"{level['first_byte_added_p99_ms'] or 0:>12.1f}\n"
            )
            if g["error_kinds"]:
                w(f"{'':>11}   gateway errors: {g['error_kinds']}\n")
        w(
            "  µs/event: both workers' CPU over the run / events relayed (each request's own work included); "
            "lag>100ms: event-loop lag samples over 100 ms, both workers (tollgate_event_loop_lag_seconds)\n"
        )
    if results["bars"]:  # the bars are on chat and streams: none for a run of the other endpoints alone
        w("\nBars\n")
        for bar in results["bars"]:
            verdict = ("met" if bar["met"] else "NOT met") if bar["judged"] else "ref"
            w(f"  [{verdict:>7}] {bar['name']}: {bar['value']} (bar {bar['bar']})\n")
        w("  (ref: shown for reference, not what the bar is judged on; see README, Performance)\n")
    w(f"\nResults: {results['meta']['results_file']}\n")


def machine() -> dict:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = 0
    with contextlib.suppress(OSError, ValueError):
        memory = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def git_commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return (result.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def loadavg() -> str:
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return ""


def cases(value: str) -> list[str]:
    chosen = [name.strip() for name in value.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in CASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(CASES)} (comma-separated), not {value!r}")
    return chosen


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short runs (the smoke test uses this)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--only",
        type=cases,
        help=f"comma-separated cases to run, of {','.join(CASES)} (default all; plain is chat, completions the"
        " legacy endpoint)",
    )
    parser.add_argument("--duration", type=float, help="seconds per plain run (6, or 1 with --quick)")
    parser.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")], help="default 1,16,64,256")
    parser.add_argument(
        "--streams", type=lambda s: [int(x) for x in s.split(",")], help="held-stream levels (default 1000,3000)"
    )
    parser.add_argument(
        "--stream-runs", type=int, help="runs in a row of the first --streams level (default 5, 1 with --quick)"
    )
    parser.add_argument("--py-spy", action="store_true", help="profile each worker during the stream runs (py-spy)")
    parser.add_argument(
        "--stream-api", choices=["chat", "responses"], default="chat",
        help="what the held streams are: chat completions, or Responses typed events (/v1/responses)",
    )  # fmt: skip
    parser.add_argument("--rate", type=float, default=500.0, help="open-loop request rate (req/s)")
    parser.add_argument(
        "--stream-key", choices=["limited", "unlimited"], default="limited", help="the key the streams use"
    )
    parser.add_argument("--out", type=Path, help="results file (default bench/results/<timestamp>.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their path is printed)")
    parser.add_argument("--max-seconds", type=float, help="stop the whole run after this long (default 900)")
    args = parser.parse_args(argv)
    args.only = args.only or list(CASES)
    args.connections = args.connections or [1, 16, 64, 256]
    args.streams = args.streams or ([20, 100] if args.quick else [1000, 3000])
    args.stream_runs = args.stream_runs or (1 if args.quick else 5)
    if args.py_spy:
        args.keep_logs = True  # the profiles are written there
    args.max_seconds = args.max_seconds or (300 if args.quick else 1500)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.stderr.write("bench: `wrk` is not installed; install it with `apt-get install wrk` and run again.\n")
        return 2

    def stop_now(signum, frame):
        raise BenchError(f"stopped by signal {signum}" if signum != signal.SIGALRM else "the run hit --max-seconds")

    signal.signal(signal.SIGTERM, stop_now)
    signal.signal(signal.SIGALRM, stop_now)
    signal.alarm(int(args.max_seconds))
    started = datetime.now(UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out = args.out or BENCH / "results" / f"{stamp}.json"
    bench = Bench(args)
    results = {
        "meta": {
            "started": started.isoformat(),
            "commit": git_commit(),
            "quick": args.quick,
            "workers": args.workers,
            "machine": machine(),
            "loadavg_before": loadavg(),
            "results_file": str(out),
        }
    }
    try:
        bench.start()
        results["meta"].update(database=bench.db.vendor, redis=bool(bench.redis_url))
        if "plain" in args.only:
            results["plain"] = bench.plain()
        for endpoint in ("embeddings", "completions", "responses"):
            if endpoint in args.only:
                results[endpoint] = bench.endpoint(endpoint)
        if "streams" in args.only:
            results["streams"] = bench.streams()
    except (BenchError, subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        sys.stderr.write(f"bench: {exc}\n")
        return 1
    finally:
        signal.alarm(0)
        bench.stop()
    results["meta"]["loadavg_after"] = loadavg()
    results["meta"]["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    results["bars"] = bars(results)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
