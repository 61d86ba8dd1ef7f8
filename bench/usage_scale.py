"""Usage at scale: the usage readers and the usage writer over tens of millions of usage records, with the hourly
rollups and without them (the readers as they were before rollups, summing records).

    python bench/usage_scale.py [--rows 50000000] [--days 90] [--keys 500] [--database tollgate_bench15] [--keep]

PostgreSQL only (`--server`, default postgres://postgres@127.0.0.1:5432). It creates the database `--database`
(refusing if it exists), migrates it (records partitioned by month), creates `--keys` keys (every tenth in a
team of ten; budgets on some), and loads `--rows` synthetic records spread evenly over the last `--days` days
through COPY (indexes and keys dropped during the load and rebuilt after: how a bulk load is done; the
writer's figure below is measured against the fully indexed table). Each key uses one or two models on one
endpoint; 2 % of requests are throttled, 1 % fail upstream. Then the rollups are built (`rollup_rebuild`: what
`rebuild_usage_rollups` runs, timed) and it measures, median of `--repeat` warm runs (the first run, cold, is
printed too):

* the usage dashboard (`usage_dashboard`: 30 days, every key) — bar 300 ms;
* a key's admin page (its usage panel's queries and budget status, `key_usage_context`) — bar 200 ms;
* a month's `usage_report` (`usage_report_rows` over the last full month, every key) — bar 1 s;
* a budget counter rebuild (`budget_spent_in_database`, a key lineage's month) — bar 50 ms;
* the budget-alert scan's spend query (every budgeted key and team);
* the usage writer: records per second on one thread (`UsageWriter.flush`, batches of USAGE_BATCH_SIZE), with
  rollups and without — bar 10,000/s with rollups;
* table and index bytes per million records, and of the rollups.

"Without rollups" runs the readers of the commit before rollups (`usage/selectors.py` of `--raw-ref`, loaded from
git) on the same records. Figures depend on the machine and on what else runs on it: indicative. The database
is dropped at the end unless `--keep` (it takes tens of GB at 50 M rows). Results as JSON in bench/results/.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import types
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Heap and indexes of one record, measured (about 480 B) plus headroom for the rebuilds' temporary space.
BYTES_PER_ROW_ESTIMATE = 700
MODELS = [
    ("gpt-4o-mini", "0.15", "0.60"),
    ("gpt-4o", "2.50", "10.00"),
    ("gpt-4.1-mini", "0.40", "1.60"),
    ("o4-mini", "1.10", "4.40"),
    ("text-embedding-3-small", "0.02", "0"),
    ("omni-moderation-latest", "0", "0"),
]
ENDPOINT_OF = {"text-embedding-3-small": "embeddings", "omni-moderation-latest": "moderations"}


def log(message: str) -> None:
    print(f"[{datetime.now(UTC):%H:%M:%S}] {message}", flush=True)


def admin_connect(server: str):
    import psycopg

    return psycopg.connect(f"{server}/postgres", autocommit=True)


def check_disk(server: str, rows: int, force: bool) -> None:
    with admin_connect(server) as conn:
        data_dir = conn.execute("SHOW data_directory").fetchone()[0]
    free = shutil.disk_usage(data_dir if os.path.exists(data_dir) else "/").free
    need = rows * BYTES_PER_ROW_ESTIMATE
    log(f"disk: {free / 1e9:.1f} GB free where PostgreSQL keeps its data; about {need / 1e9:.1f} GB needed")
    if need > free * 0.8 and not force:
        raise SystemExit("not enough disk for that many rows (use fewer --rows, or --force)")


def setup_django(server: str, database: str) -> None:
    os.environ["DATABASE_URL"] = f"{server}/{database}"
    os.environ["REDIS_URL"] = ""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only")
    import django

    django.setup()


def create_keys(count: int):
    from apikeys.models import APIKey
    from apikeys.services import api_key_create, team_create

    keys, teams = [], []
    for t in range(max(count // 100, 1)):
        teams.append(team_create(name=f"bench-team-{t}", actor="bench", budget_usd=Decimal("5000"),
                                 budget_period="month"))  # fmt: skip
    for i in range(count):
        fields: dict = {}
        if i % 3 == 0:
            fields.update(budget_usd=Decimal("500"), budget_period=("day", "month", "total")[i % 9 // 3])
        if i % 10 == 0:
            fields["team"] = teams[(i // 10) % len(teams)]
        keys.append(api_key_create(name=f"bench-key-{i}", actor="bench", **fields)[0])
    return [APIKey.objects.get(pk=k.pk) for k in keys], teams


def load_rows(connection, keys, rows: int, days: int, now: datetime) -> float:
    """COPY `rows` synthetic records into usage_usagerecord; returns seconds. Indexes are dropped before and
    rebuilt after (their rebuild is included in the time)."""
    table = "usage_usagerecord"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND NOT EXISTS "
            "(SELECT 1 FROM pg_constraint c WHERE c.conname = indexname AND c.conrelid = to_regclass(%s))",
            [table, table],
        )
        indexes = cursor.fetchall()
        for name, _ in indexes:
            cursor.execute(f"DROP INDEX {name}")
        cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT usage_request_once")
        cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey")
    from usage.partitions import usage_partitions_ensure

    # A partition for every month loaded (the writer would have made each in its month).
    usage_partitions_ensure(now=now - timedelta(days=days), months_ahead=days // 28 + 2)
    connection.ensure_connection()
    raw = connection.connection  # the psycopg connection
    start = now - timedelta(days=days)
    step = (now - start) / rows
    plans = []
    for i, key in enumerate(keys):
        models = [MODELS[i % 4]] if i % 2 else [MODELS[i % 4], MODELS[4 + i % 2]]
        plans.append((key.id, key.prefix, key.name, models))
    columns = (
        "id, created_at, request_id, api_key_id, key_prefix, key_name, endpoint, model, status, error_type, "
        "streamed, prompt_tokens, cached_tokens, completion_tokens, reasoning_tokens, hosted_tool_calls, "
        "hosted_tools, total_tokens, usage_estimated, cost_usd, latency_ms, ttfb_ms, upstream_request_id"
    )
    started = time.perf_counter()
    t0 = start.timestamp()
    step_s = step.total_seconds()
    nkeys = len(plans)
    with raw.cursor() as cursor, cursor.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        lines = []
        for n in range(rows):
            key_id, prefix, name, models = plans[(n * 7919) % nkeys]
            model, price_in, price_out = models[n % len(models)]
            endpoint = ENDPOINT_OF.get(model, "chat.completions")
            r = n % 100
            status = 429 if r < 2 else 502 if r == 2 else 200
            if status == 200:
                prompt = 200 + (n * 37) % 1800
                completion = 0 if endpoint != "chat.completions" else 50 + (n * 13) % 700
                cost = (prompt * float(price_in) + completion * float(price_out)) / 1e6
                error = ""
            else:
                prompt = completion = 0
                cost = 0.0
                error = "rate_limit_requests" if status == 429 else "upstream_error"
            at = datetime.fromtimestamp(t0 + n * step_s, UTC)
            lines.append(
                f"{n + 1}\t{at.isoformat()}\tb{n:015x}\t{key_id}\t{prefix}\t{name}\t{endpoint}\t{model}\t{status}\t"
                f"{error}\tf\t{prompt}\t{prompt // 4}\t{completion}\t0\t0\t\t{prompt + completion}\tf\t{cost:.8f}\t"
                f"{(n % 900) + 100}.5\t\\N\t\n"
            )
            if len(lines) >= 20_000:
                copy.write("".join(lines))
                lines = []
                if n % 1_000_000 < 20_000:
                    log(f"  {n:,} rows copied")
        copy.write("".join(lines))
    log(f"  copied in {time.perf_counter() - started:.0f} s; rebuilding keys and indexes")
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY (id, created_at)")
        cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT usage_request_once UNIQUE (request_id, created_at)")
        for _, definition in indexes:
            # pg_indexes spells a partitioned table's index `ON ONLY` (the parent alone): build them everywhere.
            cursor.execute(definition.replace(" ON ONLY ", " ON "))
        cursor.execute(f"SELECT setval('{table}_id_seq', %s)", [rows + 1])
        cursor.execute(f"ANALYZE {table}")
    return time.perf_counter() - started


def raw_selectors(ref: str) -> types.ModuleType:
    """`usage/selectors.py` as of `ref` (the readers before rollups), loaded as a module of the usage package."""
    source = subprocess.run(["git", "show", f"{ref}:usage/selectors.py"], cwd=ROOT, check=True, capture_output=True,
                            text=True).stdout  # fmt: skip
    module = types.ModuleType("usage.selectors_raw")
    module.__package__ = "usage"
    exec(compile(source, f"{ref}:usage/selectors.py", "exec"), module.__dict__)  # noqa: S102
    return module


def timed(fn, repeat: int) -> dict:
    """The first run (`cold_ms`), then the median and max of `repeat` more (none when `repeat` is 0)."""
    cold_start = time.perf_counter()
    fn()
    cold = (time.perf_counter() - cold_start) * 1000
    if not repeat:
        return {"cold_ms": round(cold, 1)}
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - t) * 1000)
    return {"cold_ms": round(cold, 1), "median_ms": round(statistics.median(runs), 1), "max_ms": round(max(runs), 1)}


def measure_readers(keys, teams, now: datetime, repeat: int, raw_ref: str, scan_records: bool = True) -> dict:
    from django.db.models import Sum

    from metering.base import BudgetWindow, budget_spent_in_database
    from usage import selectors
    from usage.dashboard import key_usage_context
    from usage.models import UsageRecord
    from usage.pricing import usd_to_units

    old = raw_selectors(raw_ref)
    key = next(k for k in keys if k.budget_usd is not None and k.budget_period == "month")
    month = BudgetWindow.at("month", now)
    last_month_end = month.start
    last_month_start = BudgetWindow.at("month", last_month_end - timedelta(days=1)).start
    budgeted = [k for k in keys if k.budget_usd is not None]

    def raw_key_page():
        start = old._day_start(now) - timedelta(days=29)
        old.usage_daily_series(key_prefix=key.prefix, days=30, now=now)
        old.usage_daily_series_by_endpoint(key_prefix=key.prefix, days=30, now=now)
        old.usage_totals_by_endpoint(key_prefix=key.prefix, since=start)
        old.usage_budget_status(api_key=key, now=now)

    def raw_budget_rebuild():
        prefixes = [k.prefix for k in keys if (k.lineage or k.prefix) == (key.lineage or key.prefix)]
        total = (
            UsageRecord.objects.filter(key_prefix__in=prefixes, created_at__gte=month.start,
                                       created_at__lt=month.renews_at)
            .aggregate(total=Sum("cost_usd"))["total"]
        )  # fmt: skip
        return usd_to_units(total or Decimal(0))

    def raw_alert_scan():
        for k in budgeted:
            old.usage_budget_status(api_key=k, now=now)
        for team in teams:
            old.usage_team_budget_status(team=team, now=now)

    # Both paths must agree before their times mean anything.
    assert (
        selectors.usage_budget_status(api_key=key, now=now)["spent_usd"]
        == old.usage_budget_status(api_key=key, now=now)["spent_usd"]
    )
    report_new = selectors.usage_report_rows(since=last_month_start, until=last_month_end)
    assert report_new == old.usage_report_rows(since=last_month_start, until=last_month_end), "reports differ"
    cases = {
        "dashboard": (lambda: selectors.usage_dashboard(now=now), lambda: old.usage_dashboard(now=now)),
        "key_page": (lambda: key_usage_context(key, now=now), raw_key_page),
        "usage_report_month": (
            lambda: selectors.usage_report_rows(since=last_month_start, until=last_month_end),
            lambda: old.usage_report_rows(since=last_month_start, until=last_month_end),
        ),
        "budget_rebuild": (lambda: budget_spent_in_database(key.lineage or key.prefix, month), raw_budget_rebuild),
        "alert_scan_spend": (
            lambda: selectors.usage_budgets_spent(keys=budgeted, teams=teams, now=now),
            raw_alert_scan,
        ),
    }
    out = {}
    for name, (with_rollups, without) in cases.items():
        out[name] = {"rollups": timed(with_rollups, repeat)}
        log(f"  {name}: rollups {out[name]['rollups']}")
        if name == "alert_scan_spend" and not scan_records:
            continue
        # Summing records takes seconds to minutes at these sizes: the slow ones run once.
        raw_repeat = 0 if name in ("dashboard", "usage_report_month", "alert_scan_spend") else repeat
        out[name]["records"] = timed(without, raw_repeat)
        log(f"  {name}: records {out[name]['records']}")
    out["usage_report_month"]["rows"] = len(report_new)
    return out


def measure_writer(keys, records: int, rollups: bool) -> dict:
    from apikeys.keycache import KeySnapshot
    from core.outcome import RequestOutcome
    from usage.writer import UsageWriter

    writer = UsageWriter(flush_seconds=3600)
    writer.rollups_enabled = rollups
    snaps = [KeySnapshot.from_model(k) for k in keys[:100]]
    now = datetime.now(UTC)
    for n in range(records):
        o = RequestOutcome(request_id=f"w{uuid.uuid4().hex}", key=snaps[n % len(snaps)])
        o.model, o.endpoint, o.status = MODELS[n % 4][0], "chat.completions", 200 if n % 50 else 429
        o.prompt_tokens, o.completion_tokens, o.cost_usd = 500, 120, Decimal("0.00012345")
        o.started_at = now
        writer._buffer.append(writer_capture(o))
    started = time.perf_counter()
    assert writer.flush()
    seconds = time.perf_counter() - started
    return {"records": records, "seconds": round(seconds, 2), "records_per_second": round(records / seconds)}


def writer_capture(outcome):
    from usage.writer import capture

    return capture(outcome)


def sizes(connection, rows: int) -> dict:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT COALESCE(sum(pg_relation_size(c.oid)), 0), COALESCE(sum(pg_indexes_size(c.oid)), 0) "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'usage_usagerecord'::regclass"
        )
        heap, index = (int(v) for v in cursor.fetchone())
        cursor.execute("SELECT pg_relation_size('usage_usagerollup'), pg_indexes_size('usage_usagerollup')")
        rheap, rindex = (int(v) for v in cursor.fetchone())
        cursor.execute("SELECT count(*) FROM usage_usagerollup")
        rollup_rows = cursor.fetchone()[0]
    per_million = 1_000_000 / rows
    return {
        "records_table_bytes_per_million": round(heap * per_million),
        "records_index_bytes_per_million": round(index * per_million),
        "rollup_rows": rollup_rows,
        "rollup_rows_per_million_records": round(rollup_rows * per_million),
        "rollup_table_bytes_per_million_records": round(rheap * per_million),
        "rollup_index_bytes_per_million_records": round(rindex * per_million),
        "records_total_bytes": heap + index,
        "rollup_total_bytes": rheap + rindex,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--keys", type=int, default=500)
    parser.add_argument("--server", default="postgres://postgres@127.0.0.1:5432")
    parser.add_argument("--database", default="tollgate_bench15")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--writer-records", type=int, default=100_000)
    parser.add_argument("--raw-ref", default="d3898fa", help="The commit whose usage/selectors.py sums records.")
    parser.add_argument(
        "--no-raw-alert-scan", action="store_true", help="Skip the alert scan over records (minutes at 50 M rows)."
    )
    parser.add_argument("--keep", action="store_true", help="Keep the database (default: drop it at the end).")
    parser.add_argument("--force", action="store_true", help="Load even if the disk looks too small.")
    args = parser.parse_args()

    check_disk(args.server, args.rows, args.force)
    with admin_connect(args.server) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [args.database]).fetchone():
            raise SystemExit(f"database {args.database} exists: drop it or choose another --database")
        conn.execute(f'CREATE DATABASE "{args.database}"')
    result: dict = {"rows": args.rows, "days": args.days, "keys": args.keys, "started": datetime.now(UTC).isoformat()}
    try:
        setup_django(args.server, args.database)
        from django.core.management import call_command
        from django.db import connection

        from usage.rollups import rollup_rebuild

        call_command("migrate", verbosity=0)
        now = datetime.now(UTC)
        log(f"creating {args.keys} keys")
        keys, teams = create_keys(args.keys)
        log(f"loading {args.rows:,} records over {args.days} days through COPY")
        result["load_seconds"] = round(load_rows(connection, keys, args.rows, args.days, now), 1)
        log(f"loaded in {result['load_seconds']} s; building the rollups")
        started = time.perf_counter()
        rollup_rebuild()
        result["rollup_rebuild_seconds"] = round(time.perf_counter() - started, 1)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE usage_usagerollup")
        result["sizes"] = sizes(connection, args.rows)
        log(f"rollups in {result['rollup_rebuild_seconds']} s; sizes {result['sizes']}")
        log("readers (with rollups, then summing records as before rollups)")
        result["readers"] = measure_readers(
            keys, teams, now, args.repeat, args.raw_ref, scan_records=not args.no_raw_alert_scan
        )
        log("writer")
        result["writer"] = {
            "rollups": measure_writer(keys, args.writer_records, True),
            "no_rollups": measure_writer(keys, args.writer_records, False),
        }
        log(f"writer: {result['writer']}")
    finally:
        from django.db import connections

        connections.close_all()
        if not args.keep:
            with admin_connect(args.server) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            log(f"dropped {args.database}")
    out = ROOT / "bench" / "results" / f"usage_scale_{args.rows}_{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    log(f"written {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
