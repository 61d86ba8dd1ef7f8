"""Before/after: the plain chat case at 16 connections against two checkouts of Tollgate, interleaved.

    python bench/compare.py --base /tmp/base [--head .] [--rounds 3] [--duration S] [--quick] [--out FILE]

One run of `make bench` on a shared machine moves by tens of percent, so two runs made minutes apart cannot
tell a 10% change from the machine's mood. This starts both gateways at once, each from its own checkout with
its own interpreter (`<checkout>/.venv/bin/python`: `make -C <checkout> .venv/.dev-installed` creates it), its
own fresh database (`tollgate_bench_<pid>_base` / `_head` on the server of `DATABASE_URL`, else a temporary
SQLite file each) and its own Redis database (14 for base, 15 for head, flushed before and after, when
`REDIS_URL` is set), both in front of one bundled fake upstream (this checkout's). Then, for each round, the
same `wrk` run (bench/wrk/chat.lua, the limited key, as in `make bench`) against one gateway and right after
against the other; the order flips every round (base-head, head-base, ...), so neither side is always the one
measured second. While one is measured, the other sits idle.

Prints every round, the median of each side and the head/base ratio (req/s above 1 and latency or CPU below 1
mean head is faster), and writes `bench/results/compare-<timestamp>.json`. Exits 1 if any request failed.
Passing the same checkout twice measures the noise: the ratio a change has to beat.
"""

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import run as bench
from run import BenchError, Server, log

SIDES = ("base", "head")
REDIS_DBS = {"base": 14, "head": 15}
FIGURES = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_request")


class Side:
    """One checkout: its interpreter, database, Redis database, gateway and keys."""

    def __init__(self, name: str, root: Path, workdir: Path):
        self.name = name
        self.root = root
        self.python = str(root / ".venv" / "bin" / "python")
        self.commit = commit_of(root)
        self.workdir = workdir
        self.db: bench.FreshDatabase | None = None
        self.redis_url = ""
        self.gateway: Server | None = None
        self.url = ""
        self.keys: dict[str, str] = {}

    def start(self, fake_url: str, workers: int) -> None:
        self.db = bench.FreshDatabase(self.workdir, name=f"tollgate_bench_{os.getpid()}_{self.name}")
        self.redis_url = bench.bench_redis_url(REDIS_DBS[self.name])
        env = bench.gateway_env(fake_url, self.db.url, self.redis_url)
        # gunicorn.conf.py makes a metrics directory per arbiter unless this is set; if it were set, the two
        # gateways would share one and each would empty it under the other.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        log(f"{self.name} ({self.root}, {self.commit}): migrating a fresh {self.db.vendor} database, creating keys")
        self.keys = bench.create_keys(self.python, self.root, env)
        port = bench.free_port()
        self.url = f"http://127.0.0.1:{port}"
        log(f"{self.name}: gunicorn with {workers} workers on {self.url}")
        self.gateway = bench.start_gateway(
            self.python, self.root, env, port, workers, self.workdir / f"gateway-{self.name}.log"
        )
        bench.check_gateway(self.url, self.keys["limited"], self.gateway.log_path)

    def measure(self, connections: int, duration: float) -> dict:
        return bench.measure_gateway(
            self.gateway, self.url, connections=connections, duration=duration, key=self.keys["limited"]
        )

    def stop(self) -> None:
        if self.gateway is not None:
            with contextlib.suppress(Exception):
                self.gateway.stop()
        if self.db is not None:
            try:
                self.db.drop()
            except Exception as exc:
                log(f"could not drop database {self.db.name}: {exc}")
        with contextlib.suppress(Exception):
            bench.flush_redis(self.redis_url)


def commit_of(root: Path) -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True).stdout.strip()
    return (result.stdout.strip() or "unknown") + ("+changes" if dirty else "")


def summarize(rounds: list[dict]) -> dict:
    """Per side, the median (and range) of every figure over the rounds; then head/base of the medians."""
    summary = {}
    for side in SIDES:
        runs = [r[side] for r in rounds]
        summary[side] = {
            figure: {
                "median": round(statistics.median(run[figure] for run in runs), 3),
                "min": min(run[figure] for run in runs),
                "max": max(run[figure] for run in runs),
            }
            for figure in FIGURES
        }
        summary[side]["errors"] = sum(run["non_2xx"] + run["socket_errors"] for run in runs)
    summary["ratio"] = {
        figure: round(summary["head"][figure]["median"] / summary["base"][figure]["median"], 3)
        if summary["base"][figure]["median"]
        else None
        for figure in FIGURES
    }
    return summary


def print_report(results: dict) -> None:
    meta, summary = results["meta"], results["summary"]
    w = sys.stdout.write
    w(
        f"\nTollgate before/after: plain chat, wrk closed loop at {meta['connections']} connections, "
        f"{meta['duration_s']:g} s per run, rounds: {meta['rounds']}, {meta['workers']} workers each, "
        f"{meta['database']} database, Redis {'on' if meta['redis'] else 'off'}; load average before "
        f"{meta['loadavg_before']}, after {meta['loadavg_after']}\n"
    )
    for side in SIDES:
        w(f"  {side}: {meta[side]['root']} ({meta[side]['commit']})\n")
    w(
        f"\n{'round':>5} {'order':<10} | {'base req/s':>10} {'p50':>7} {'p99':>8} {'CPU ms/req':>10} | "
        f"{'head req/s':>10} {'p50':>7} {'p99':>8} {'CPU ms/req':>10} | {'load':>5}\n"
    )
    for number, entry in enumerate(results["rounds"], 1):
        b, h = entry["base"], entry["head"]
        w(
            f"{number:>5} {'-'.join(entry['order']):<10} | {b['rps']:>10,.0f} {b['p50_ms']:>7.2f} {b['p99_ms']:>8.2f} "
            f"{b['cpu_ms_per_request']:>10.3f} | {h['rps']:>10,.0f} {h['p50_ms']:>7.2f} {h['p99_ms']:>8.2f} "
            f"{h['cpu_ms_per_request']:>10.3f} | {(entry['loadavg_after'] or '?').split()[0]:>5}\n"
        )
    b, h, ratio = summary["base"], summary["head"], summary["ratio"]
    w(
        f"{'median':>5} {'':<10} | {b['rps']['median']:>10,.0f} {b['p50_ms']['median']:>7.2f} "
        f"{b['p99_ms']['median']:>8.2f} {b['cpu_ms_per_request']['median']:>10.3f} | {h['rps']['median']:>10,.0f} "
        f"{h['p50_ms']['median']:>7.2f} {h['p99_ms']['median']:>8.2f} {h['cpu_ms_per_request']['median']:>10.3f} |\n"
    )

    def fmt(value):
        return "n/a" if value is None else f"{value:.3f}"

    w(
        f"\nhead/base (medians): req/s {fmt(ratio['rps'])}, p50 {fmt(ratio['p50_ms'])}, p99 {fmt(ratio['p99_ms'])}, "
        f"CPU per request {fmt(ratio['cpu_ms_per_request'])}  (req/s above 1, the others below 1: head is faster)\n"
    )
    for side in SIDES:
        spread = summary[side]["rps"]
        w(f"  {side} req/s over the rounds: {spread['min']:,.0f} to {spread['max']:,.0f}\n")
    if b["errors"] or h["errors"]:
        w(f"FAILED REQUESTS: base {b['errors']}, head {h['errors']} (non-2xx or socket errors): figures not valid\n")
    w(f"\nResults: {meta['results_file']}\n")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", type=Path, required=True, help="the checkout before (with its own .venv)")
    parser.add_argument("--head", type=Path, default=bench.ROOT, help="the checkout after (default: this one)")
    parser.add_argument("--rounds", type=int, default=3, help="base and head runs each (default 3)")
    parser.add_argument("--quick", action="store_true", help="short runs, to check the harness works")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (6, or 1 with --quick)")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers per gateway")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between runs (sockets and writers settle)")
    parser.add_argument("--out", type=Path, help="results file (default bench/results/compare-<timestamp>.json)")
    parser.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their path is printed)")
    parser.add_argument("--max-seconds", type=float, help="stop the whole run after this long")
    args = parser.parse_args(argv)
    args.base, args.head = args.base.resolve(), args.head.resolve()
    args.duration = args.duration or (1.0 if args.quick else 6.0)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    # Start-up (two migrations, two gateways) plus every run with its pause and wrk's own start and stop.
    args.max_seconds = args.max_seconds or 300 + args.rounds * 2 * (args.duration + args.pause + 5)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        sys.stderr.write("compare: `wrk` is not installed; install it with `apt-get install wrk` and run again.\n")
        return 2
    for root in (args.base, args.head):
        if not (root / "manage.py").is_file():
            sys.stderr.write(f"compare: {root} is not a Tollgate checkout (no manage.py)\n")
            return 2
        if not (root / ".venv" / "bin" / "python").is_file():
            sys.stderr.write(f"compare: {root} has no .venv; create it with `make -C {root} .venv/.dev-installed`\n")
            return 2

    def stop_now(signum, frame):
        raise BenchError(f"stopped by signal {signum}" if signum != signal.SIGALRM else "the run hit --max-seconds")

    signal.signal(signal.SIGTERM, stop_now)
    signal.signal(signal.SIGALRM, stop_now)
    signal.alarm(int(args.max_seconds))
    started = datetime.now(UTC)
    out = args.out or bench.BENCH / "results" / f"compare-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    workdir = Path(tempfile.mkdtemp(prefix="tollgate-compare-"))
    sides = {"base": Side("base", args.base, workdir), "head": Side("head", args.head, workdir)}
    fake = None
    rounds = []
    meta = {
        "started": started.isoformat(),
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "workers": args.workers,
        "quick": args.quick,
        "machine": bench.machine(),
        "loadavg_before": bench.loadavg(),
        "results_file": str(out),
        **{name: {"root": str(side.root), "commit": side.commit} for name, side in sides.items()},
    }
    try:
        fake_port = bench.free_port()
        fake_url = f"http://127.0.0.1:{fake_port}"
        log(f"fake upstream on {fake_url}")
        fake = Server(
            [bench.PY, "-m", "fakeupstream", "--no-record", "--port", str(fake_port)],
            {**os.environ, "PYTHONUNBUFFERED": "1"},
            workdir / "fake.log",
        )
        bench.wait_for_http(f"{fake_url}/_fake/stats", fake.process, fake.log_path)
        for side in sides.values():
            side.start(fake_url, args.workers)
        meta.update(database=sides["base"].db.vendor, redis=bool(sides["base"].redis_url))
        # Warm up both before the first round, so neither pays for its workers' first requests (lazy imports,
        # the upstream pool, the key cache) inside a measured run.
        for side in sides.values():
            bench.run_wrk(
                side.url, connections=args.connections, duration=1 if args.quick else 2, key=side.keys["limited"]
            )
        for number in range(args.rounds):
            order = SIDES if number % 2 == 0 else SIDES[::-1]
            entry = {"order": list(order)}
            for name in order:
                time.sleep(args.pause)
                log(f"round {number + 1}/{args.rounds}: {name}, {args.connections} connections, {args.duration:g} s")
                entry[name] = sides[name].measure(args.connections, args.duration)
            entry["loadavg_after"] = bench.loadavg()
            rounds.append(entry)
    except (BenchError, subprocess.TimeoutExpired, KeyboardInterrupt) as exc:
        sys.stderr.write(f"compare: {exc}\n")
        return 1
    finally:
        signal.alarm(0)
        for side in sides.values():
            side.stop()
        if fake is not None:
            with contextlib.suppress(Exception):
                fake.stop()
        if args.keep_logs:
            log(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    meta["loadavg_after"] = bench.loadavg()
    meta["seconds"] = round((datetime.now(UTC) - started).total_seconds(), 1)
    results = {"meta": meta, "rounds": rounds, "summary": summarize(rounds)}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_report(results)
    summary = results["summary"]
    return 1 if summary["base"]["errors"] or summary["head"]["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
