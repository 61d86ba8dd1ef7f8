"""Several upstreams, measured (README "Upstreams"): what failing over costs, and what routing costs.

    .venv/bin/python bench/upstreams.py [--duration 6] [--connections 16] [--workers 2] [--rounds 2]

Starts three fake upstreams and one gateway (production settings, `--workers` uvicorn workers, a fresh database
like `make bench`'s: PostgreSQL on DATABASE_URL's server or a temporary SQLite file, Redis database 15 of
REDIS_URL when set), then in the same run:

* **single vs three**: `wrk` closed loop (plain chat, the limited key, `--connections`) with no upstream defined
  (the default upstream of OPENAI_BASE_URL, one fake) and with three healthy upstreams defined (three fakes, equal
  weights), alternating `--rounds` times. Bar: three upstreams give at least 95% of the single upstream's req/s
  (medians of the rounds).
* **one refusing connections**: three upstreams, one of them a closed port, and an upstream failure threshold so
  high that it never rests (every request drawn to it fails over: about a third). `wrk` at 1 connection, then the
  usage records of that phase: median latency of the requests answered at the first attempt and of those that
  failed over (`attempts = 2`), as the gateway measured them. Bar: failing over adds at most 5 ms at the median.

Prints the figures and the bars; writes `bench/results/upstreams-<timestamp>.json`. Exits 1 if a request failed.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench
from run import BenchError, Server, log

ROOT = bench.ROOT

MEDIANS_CODE = """
import json, statistics
from datetime import datetime
from usage.models import UsageRecord
rows = UsageRecord.objects.filter(created_at__gte=datetime.fromisoformat(SINCE), status=200)
first = [r.latency_ms for r in rows.filter(attempts=1)]
over = [r.latency_ms for r in rows.filter(attempts__gt=1)]
failed = UsageRecord.objects.filter(created_at__gte=datetime.fromisoformat(SINCE)).exclude(status=200).count()
print("BENCH_MEDIANS " + json.dumps({
    "first_attempt": len(first), "failed_over": len(over), "not_200": failed,
    "first_attempt_p50_ms": statistics.median(first) if first else None,
    "failed_over_p50_ms": statistics.median(over) if over else None,
}))
"""


def manage(env: dict, *args: str) -> str:
    result = subprocess.run(
        [bench.PY, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise BenchError(f"manage.py {' '.join(args[:2])} failed: {result.stderr[-2000:]}")
    return result.stdout


def define(env: dict, upstreams: list[tuple[str, str]]) -> None:
    """Replace every upstream with `upstreams` ((name, base URL) pairs; none: the default upstream again)."""
    manage(env, "shell", "-c", "from upstreams.models import Upstream; Upstream.objects.all().delete()")
    for name, url in upstreams:
        manage(env, "create_upstream", name, "--kind", "openai", "--base-url", url, "--api-key", "sk-bench")
    time.sleep(float(env["UPSTREAM_CACHE_SECONDS"]) * 2 + 0.5)  # every worker has the new table


def medians_since(env: dict, since: datetime) -> dict:
    out = manage(env, "shell", "-c", MEDIANS_CODE.replace("SINCE", repr(since.isoformat())))
    line = next(x for x in out.splitlines() if x.startswith("BENCH_MEDIANS "))
    return json.loads(line.removeprefix("BENCH_MEDIANS "))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--one-fake", action="store_true", help="the three upstreams are one fake upstream (routing cost alone)"
    )
    args = parser.parse_args(argv)
    from cryptography.fernet import Fernet

    workdir = Path(tempfile.mkdtemp(prefix="tollgate-bench-upstreams-"))
    database = bench.FreshDatabase(workdir)
    servers: list[Server] = []
    redis_url = ""
    try:
        fakes = []
        for index in range(3):
            port = bench.free_port()
            fake = Server(
                [bench.PY, "-m", "fakeupstream", "--port", str(port), "--no-record"],
                {**os.environ, "PYTHONUNBUFFERED": "1"},
                workdir / f"fake-{index}.log",
            )
            servers.append(fake)
            bench.wait_for_http(f"http://127.0.0.1:{port}/_fake/stats", fake.process, fake.log_path)
            fakes.append(f"http://127.0.0.1:{port}")
        redis_url = bench.bench_redis_url()
        env = bench.gateway_env(fakes[0], database.url, redis_url)
        env.update(
            UPSTREAM_KEY_ENCRYPTION_KEYS=Fernet.generate_key().decode(),
            UPSTREAM_CACHE_SECONDS="0.5",
            # The refusing upstream must never rest, or failovers would stop after three of them.
            UPSTREAM_FAILURE_THRESHOLD="1000000000",
        )
        keys = bench.create_keys(bench.PY, ROOT, env)
        port = bench.free_port()
        url = f"http://127.0.0.1:{port}"
        gateway = bench.start_gateway(bench.PY, ROOT, env, port, args.workers, workdir / "gateway.log")
        servers.append(gateway)
        bench.check_gateway(url, keys["limited"], gateway.log_path)
        bench.run_wrk(url, connections=args.connections, duration=1, key=keys["limited"])  # warm-up

        three = [(f"up{index}", f"{fakes[0] if args.one_fake else fake}/v1") for index, fake in enumerate(fakes)]
        rounds = []
        for number in range(args.rounds):
            for case in ("single", "three") if number % 2 == 0 else ("three", "single"):
                define(env, three if case == "three" else [])
                bench.check_gateway(url, keys["limited"], gateway.log_path)
                result = bench.measure_gateway(
                    gateway, url, connections=args.connections, duration=args.duration, key=keys["limited"]
                )
                result.update(case=case, round=number + 1, loadavg=bench.loadavg())
                log(f"{case:6} round {number + 1}: {result['rps']} req/s, p50 {result['p50_ms']} ms, "
                    f"non-2xx {result['non_2xx']}, socket errors {result['socket_errors']}")  # fmt: skip
                rounds.append(result)

        refusing = [three[0], three[1], ("up-refusing", f"http://127.0.0.1:{bench.free_port()}/v1")]
        define(env, refusing)
        since = datetime.now(UTC)
        time.sleep(0.01)
        refusing_run = bench.measure_gateway(gateway, url, connections=1, duration=args.duration, key=keys["limited"])
        time.sleep(1.0)  # the usage writer flushes
        medians = medians_since(env, since)
        log(f"one refusing: {refusing_run['rps']} req/s at 1 connection; {medians}")

        def median_rps(case: str) -> float:
            return statistics.median(r["rps"] for r in rounds if r["case"] == case)

        single, triple = median_rps("single"), median_rps("three")
        added = (
            None
            if medians["failed_over_p50_ms"] is None
            else round(medians["failed_over_p50_ms"] - medians["first_attempt_p50_ms"], 3)
        )
        errors = sum(r["non_2xx"] + r["socket_errors"] for r in [*rounds, refusing_run]) + medians["not_200"]
        results = {
            "when": datetime.now(UTC).isoformat(),
            "commit": bench.git_commit(),
            "machine": bench.machine(),
            "database": database.vendor,
            "redis": bool(env.get("REDIS_URL")),
            "workers": args.workers,
            "connections": args.connections,
            "rounds": rounds,
            "refusing": {"wrk": refusing_run, **medians, "added_p50_ms": added},
            "single_rps": single,
            "three_rps": triple,
            "three_over_single": round(triple / single, 3) if single else None,
            "errors": errors,
        }
        print()
        ratio = results["three_over_single"]
        print(f"single upstream: {single} req/s; three upstreams: {triple} req/s "
              f"(ratio {ratio}; bar >= 0.95: {'met' if ratio and ratio >= 0.95 else 'NOT met'})")  # fmt: skip
        print(f"one of three refusing: {medians['failed_over']} of {medians['failed_over'] + medians['first_attempt']} "
              f"requests failed over; median latency {medians['first_attempt_p50_ms']} ms at the first attempt, "
              f"{medians['failed_over_p50_ms']} ms failed over: +{added} ms (bar <= 5 ms: "
              f"{'met' if added is not None and added <= 5 else 'NOT met'})")  # fmt: skip
        print(f"errors: {errors}")
        out = ROOT / "bench" / "results" / f"upstreams-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
        print(f"written: {out.relative_to(ROOT)}")
        return 1 if errors else 0
    except BenchError as exc:
        print(f"bench/upstreams.py: {exc}", file=sys.stderr)
        return 2
    finally:
        for server in reversed(servers):
            server.stop()
        database.drop()
        bench.flush_redis(redis_url)


if __name__ == "__main__":
    sys.exit(main())
