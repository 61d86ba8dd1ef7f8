"""The soak: `SOAK_SECONDS` (default 600) of steady mixed load against a two-worker gateway.

Not part of `make test` (`pytest.mark.soak` is deselected by default in pyproject.toml); `make soak` runs it.
The load is bounded (a few client threads with pauses, well under what the machine can serve): plain and streamed
completions on kept-alive connections, the same on a new connection per request, and a client that drops a stream
halfway every second. Every few seconds each worker's RSS and open file descriptors, and the test database's
connections (Postgres), are sampled. After the warm-up (the first fifth of the run, at most two minutes):

* RSS grows by less than 5% per worker (median of the last samples against the median just after warm-up);
* open file descriptors and database connections do not grow (the last window's maximum against the maximum
  just after warm-up, with a small slack for connections that happen to be open at a sample);
* zero errors: every request is a whole 200; the workers are the same processes at the end.

The figures are printed (`pytest -s`).
"""

import os
import statistics
import threading
import time

import httpx
import pytest
from django.db import connection

from tests.conftest import SteadyLoad, worker_pids

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "600"))
# Past pyproject's 300 s per-test timeout: the run itself, plus starting and stopping.
pytestmark = [pytest.mark.soak, pytest.mark.timeout(SOAK_SECONDS + 300)]
WARMUP_SECONDS = min(120.0, SOAK_SECONDS / 5)
SAMPLE_EVERY = 5.0
WINDOW = 6  # samples (30 s) compared at each end
RSS_GROWTH_LIMIT = 0.05
FD_SLACK = 8
DB_SLACK = 2


def rss_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status").read().splitlines():  # noqa: SIM115 (tiny /proc file)
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def database_connections() -> int | None:
    """Connections to the test database other than this process's own (Postgres only)."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return cursor.fetchone()[0]


class Dropper(threading.Thread):
    """Every second: start a slow stream, read its first event, hang up (the leak-prone path)."""

    def __init__(self, url: str, raw_key: str):
        super().__init__(name="soak-dropper", daemon=True)
        self.url, self.raw_key = url, raw_key
        self.stop_event = threading.Event()
        self.dropped = 0
        self.failures = []

    def run(self):
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "a long answer that nobody waits for"}],
            "stream": True,
            "fake": {"chunks": 40, "chunk_delay_ms": 50},
        }
        while not self.stop_event.wait(1.0):
            try:
                with httpx.stream(
                    "POST",
                    f"{self.url}/v1/chat/completions",
                    headers={"Authorization": f"Bearer {self.raw_key}"},
                    json=body,
                    timeout=30,
                ) as response:
                    if response.status_code != 200:
                        self.failures.append(response.status_code)
                        continue
                    next(response.iter_lines())
                self.dropped += 1
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))


def window_stat(samples: list, start: int, fn) -> float:
    return fn(samples[start : start + WINDOW])


def test_soak(make_key, start_gateway):
    gateway = start_gateway(name="soak", workers=2)
    pids = sorted(worker_pids(gateway, 2))
    _, raw = make_key(name="soak", rpm=1_000_000, tpm=1_000_000_000)
    stream_fake = {"chunks": 8, "chunk_delay_ms": 10}
    kept_alive = SteadyLoad(gateway.url, raw, threads=2, pause=0.05, stream_fake=stream_fake, fresh_connections=False)
    fresh = SteadyLoad(gateway.url, raw, threads=2, pause=0.05, stream_fake=stream_fake, fresh_connections=True)
    dropper = Dropper(gateway.url, raw)

    samples = []  # (seconds since start, {pid: rss kB}, {pid: fds}, database connections)
    started = time.monotonic()
    kept_alive.start()
    fresh.start()
    dropper.start()
    try:
        while (elapsed := time.monotonic() - started) < SOAK_SECONDS:
            time.sleep(SAMPLE_EVERY)
            samples.append(
                (elapsed, {p: rss_kb(p) for p in pids}, {p: open_fds(p) for p in pids}, database_connections())
            )
    finally:
        dropper.stop_event.set()
        sent = kept_alive.stop() + fresh.stop()
        dropper.join(30)

    errors = [s for s in sent if s.status != 200 or s.problem]
    after_warmup = next(i for i, sample in enumerate(samples) if sample[0] >= WARMUP_SECONDS)
    last = len(samples) - WINDOW
    assert last > after_warmup, "the run is too short for a warm-up and two windows: raise SOAK_SECONDS"
    lines = [
        f"soak: {SOAK_SECONDS:.0f} s, {len(sent)} requests ({sum(s.kind == 'stream' for s in sent)} streamed, "
        f"{len(sent) / SOAK_SECONDS:.1f}/s) + {dropper.dropped} dropped streams; errors {len(errors)}"
    ]
    growth, fd_limits = {}, {}
    for pid in pids:
        rss = [sample[1][pid] for sample in samples]
        fds = [sample[2][pid] for sample in samples]
        base, end = window_stat(rss, after_warmup, statistics.median), window_stat(rss, last, statistics.median)
        growth[pid] = (end - base) / base
        fd_limits[pid] = (window_stat(fds, after_warmup, max), window_stat(fds, last, max))
        lines.append(
            f"worker {pid}: RSS {rss[0] / 1024:.1f} MB at the first sample, {base / 1024:.1f} MB after warm-up, "
            f"{end / 1024:.1f} MB at the end ({growth[pid] * 100:+.2f}%); open fds max {fd_limits[pid][0]} after "
            f"warm-up, max {fd_limits[pid][1]} at the end"
        )
    database = [sample[3] for sample in samples]
    if database[0] is not None:
        db_limits = (window_stat(database, after_warmup, max), window_stat(database, last, max))
        lines.append(f"database connections: max {db_limits[0]} after warm-up, max {db_limits[1]} at the end")
    print("\n" + "\n".join(lines))

    assert errors == [], errors[:5]
    assert dropper.failures == [], dropper.failures[:5]
    assert sorted(worker_pids(gateway, 2)) == pids, "a worker died or was replaced"
    for pid in pids:
        assert growth[pid] < RSS_GROWTH_LIMIT, (pid, growth[pid])
        assert fd_limits[pid][1] <= fd_limits[pid][0] + FD_SLACK, [sample[2][pid] for sample in samples]
    if database[0] is not None:
        assert db_limits[1] <= db_limits[0] + DB_SLACK, database
