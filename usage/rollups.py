"""Hourly usage rollups (`UsageRollup`) and their daily sums (`UsageDailyRollup`): how the usage writer adds to
them, and how they are rebuilt from records.

The writer inserts a batch of records with `INSERT … ON CONFLICT DO NOTHING RETURNING …`, so only the records the
database actually took (a retried batch takes none) reach the rollups, in the same transaction: the rollups move
exactly with the records. Each (hour, key, model, endpoint, outcome) row is upserted once per batch, adding the
batch's sums (`ON CONFLICT … DO UPDATE SET x = x + excluded.x`), in a fixed order so that two workers' batches
lock shared rows in the same order and cannot deadlock; then the same for the daily rows. On PostgreSQL that is
part of the insert's own statement (`rollup_upserts_sql`: the sums are the database's); elsewhere the writer
calls `rollup_add` with the returned records.

`rollup_rebuild(since)` recomputes every rollup from the hour `since` on from the records (backfills, and records
written without the writer); on the same records it gives exactly what the writer produced.
"""

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal

from django.db import connections, transaction
from django.db.models import BigIntegerField, Case, Count, F, Sum, Value, When
from django.db.models.functions import Cast, Round, TruncDay, TruncHour

from .models import Outcome, UsageDailyRollup, UsageRecord, UsageRollup
from .pricing import MONEY_UNITS_PER_USD

# The dimensions of a rollup row, then its sums, in the order of the upsert's columns.
DIMENSIONS = ("hour", "key_prefix", "key_name", "model", "endpoint", "outcome")
MEASURES = (
    "requests",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "total_tokens",
    "cost_units",
)
# The conflict target: the columns of `usage_rollup_once`, in its order.
UNIQUE = ("key_prefix", "hour", "model", "endpoint", "outcome", "key_name")


def outcome_class(status: int) -> str:
    if status < 400:
        return Outcome.OK.value
    if status == 429:
        return Outcome.THROTTLED.value
    return Outcome.ERROR.value


def hour_of(moment: datetime) -> datetime:
    """The UTC hour `moment` falls in (aware)."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def rollup_deltas(records: Iterable[dict]) -> dict[tuple, list[int]]:
    """Sums per rollup row of `records` (dicts of UsageRecord column values, fitted as the writer inserts them):
    {(hour, key_prefix, key_name, model, endpoint, outcome): [requests, prompt, cached, completion, reasoning,
    total, cost units]}."""
    deltas: dict[tuple, list[int]] = {}
    for r in records:
        key = (
            hour_of(r["created_at"]),
            r["key_prefix"],
            r["key_name"],
            r["model"],
            r["endpoint"],
            outcome_class(r["status"]),
        )
        cost = int(Decimal(r["cost_usd"]) * MONEY_UNITS_PER_USD)
        row = deltas.get(key)
        if row is None:
            deltas[key] = [1, r["prompt_tokens"], r["cached_tokens"], r["completion_tokens"], r["reasoning_tokens"],
                           r["total_tokens"], cost]  # fmt: skip
        else:
            row[0] += 1
            row[1] += r["prompt_tokens"]
            row[2] += r["cached_tokens"]
            row[3] += r["completion_tokens"]
            row[4] += r["reasoning_tokens"]
            row[5] += r["total_tokens"]
            row[6] += cost
    return deltas


def _upsert(model, deltas: dict[tuple, list[int]], using: str) -> None:
    connection = connections[using]
    ops = connection.ops
    into, adding = _upsert_clauses(model, ops.quote_name)
    sql = f"{into} VALUES ({', '.join(['%s'] * (len(DIMENSIONS) + len(MEASURES)))}) {adding}"
    adapt_time = ops.adapt_datetimefield_value
    order = [DIMENSIONS.index(name) for name in UNIQUE]
    items = sorted(deltas.items(), key=lambda item: tuple(item[0][i] for i in order))
    with connection.cursor() as cursor:
        cursor.executemany(sql, [[adapt_time(hour), *rest, *sums] for (hour, *rest), sums in items])


def _upsert_clauses(model, quote) -> tuple[str, str]:
    """`INSERT INTO <rollup table> (<dimensions>, <measures>)` and the `ON CONFLICT … DO UPDATE` that adds the new
    sums to a row that exists: what both ways of upserting rollups (`rollup_add`, `rollup_upserts_sql`) share."""
    table = quote(model._meta.db_table)
    into = f"INSERT INTO {table} ({', '.join(quote(c) for c in (*DIMENSIONS, *MEASURES))})"
    updates = ", ".join(f"{quote(m)} = {table}.{quote(m)} + excluded.{quote(m)}" for m in MEASURES)
    return into, f"ON CONFLICT ({', '.join(quote(c) for c in UNIQUE)}) DO UPDATE SET {updates}"


def daily_deltas(deltas: dict[tuple, list[int]]) -> dict[tuple, list[int]]:
    """Hourly deltas summed per UTC day (the key's time is the day's midnight)."""
    days: dict[tuple, list[int]] = {}
    for (hour, *rest), sums in deltas.items():
        key = (hour.replace(hour=0), *rest)
        row = days.get(key)
        if row is None:
            days[key] = list(sums)
        else:
            for i, value in enumerate(sums):
                row[i] += value
    return days


def rollup_add(deltas: dict[tuple, list[int]], *, using: str = "default") -> None:
    """Add `deltas` (see `rollup_deltas`) to the hourly rollups and their daily sums: one upsert per row, sent
    together (`executemany`: one round trip on PostgreSQL), rows in the unique index's order. Call inside the
    transaction that inserted the records."""
    if not deltas:
        return
    _upsert(UsageRollup, deltas, using)
    _upsert(UsageDailyRollup, daily_deltas(deltas), using)


def rollup_upserts_sql(source: str, *, quote) -> list[str]:
    """PostgreSQL: the two upserts (hourly, then daily) that add the rows of `source` (a query or CTE name with
    UsageRecord's columns) to the rollups, as `rollup_add` does from Python, for the usage writer's one-statement
    batch (`usage.writer`): sums in SQL, rows in the unique index's order, the same outcome classes and cost
    units. `quote` is the connection's `quote_name`."""
    q = quote
    ok, throttled, error = (f"'{o.value}'" for o in (Outcome.OK, Outcome.THROTTLED, Outcome.ERROR))
    outcome = f"CASE WHEN {q('status')} < 400 THEN {ok} WHEN {q('status')} = 429 THEN {throttled} ELSE {error} END"
    sums = [
        "count(*)",
        *(f"sum({q(m)})" for m in MEASURES[1:-1]),
        f"sum(({q('cost_usd')} * {MONEY_UNITS_PER_USD})::bigint)",
    ]
    group = ", ".join(str(i) for i in range(1, len(DIMENSIONS) + 1))
    order = ", ".join(str(DIMENSIONS.index(name) + 1) for name in UNIQUE)
    statements = []
    for model, unit in ((UsageRollup, "hour"), (UsageDailyRollup, "day")):
        into, adding = _upsert_clauses(model, q)
        dimensions = [f"date_trunc('{unit}', {q('created_at')}, 'UTC')", *map(q, DIMENSIONS[1:-1]), outcome]
        statements.append(
            f"{into} SELECT {', '.join(dimensions + sums)} FROM {source} "  # noqa: S608
            f"GROUP BY {group} ORDER BY {order} {adding}"
        )
    return statements


def _insert_grouped(cursor, connection, model, grouped, time_alias: str, sums: tuple) -> int:
    """INSERT INTO `model`'s table the rows of `grouped` (a values().annotate() queryset with the dimensions,
    the time as `time_alias` and the sums as `sums`): one INSERT … SELECT, nothing comes through Python."""
    select_sql, params = grouped.query.sql_with_params()
    quote = connection.ops.quote_name
    target = ", ".join(quote(name) for name in (*DIMENSIONS, *MEASURES))
    source = ", ".join(
        [f"q.{quote(time_alias)}", *(f"q.{quote(name)}" for name in DIMENSIONS[1:]),
         *(f"COALESCE(q.{quote(s)}, 0)" for s in sums)]
    )  # fmt: skip
    sql = f"INSERT INTO {quote(model._meta.db_table)} ({target}) SELECT {source} FROM ({select_sql}) q"  # noqa: S608
    cursor.execute(sql, params)
    return cursor.rowcount


def rollup_rebuild(
    *,
    since: datetime | None = None,
    using: str = "default",
    record_model=UsageRecord,
    rollup_model=UsageRollup,
    daily_model=UsageDailyRollup,
) -> int:
    """Recompute the hourly rollups of every hour from `since` (an aware datetime, truncated to its hour; None:
    all of them) from the usage records, and the daily ones from that day on from the hourly ones, in one
    transaction; return how many hourly rows there are now for that span. The models are parameters for a
    migration's historical ones.

    Rows of hours whose records were purged are kept only before `since`: rebuild from a `since` after the
    retention horizon (a full rebuild after a purge would drop the purged hours' totals).
    """
    records = record_model.objects.using(using).all()
    rollups = rollup_model.objects.using(using).all()
    hourly_for_days = rollup_model.objects.using(using).all()
    days = daily_model.objects.using(using).all()
    if since is not None:
        since = hour_of(since)
        day = since.replace(hour=0)
        records = records.filter(created_at__gte=since)
        rollups = rollups.filter(hour__gte=since)
        hourly_for_days = hourly_for_days.filter(hour__gte=day)
        days = days.filter(hour__gte=day)
    grouped = (
        records.order_by()
        .annotate(
            start=TruncHour("created_at", tzinfo=UTC),
            outcome=Case(
                When(status__lt=400, then=Value(Outcome.OK.value)),
                When(status=429, then=Value(Outcome.THROTTLED.value)),
                default=Value(Outcome.ERROR.value),
            ),
        )
        .values("start", *DIMENSIONS[1:])
        .annotate(
            n=Count("id"),
            prompt=Sum("prompt_tokens"),
            cached=Sum("cached_tokens"),
            completion=Sum("completion_tokens"),
            reasoning=Sum("reasoning_tokens"),
            total=Sum("total_tokens"),
            # Each record's cost in units (exact: 8 decimals stored), then summed: what the writer adds.
            cost=Sum(Cast(Round(F("cost_usd") * Value(Decimal(MONEY_UNITS_PER_USD))), BigIntegerField())),
        )
    )
    by_day = (
        hourly_for_days.order_by()
        .annotate(start=TruncDay("hour", tzinfo=UTC))
        .values("start", *DIMENSIONS[1:])
        .annotate(**{f"s_{m}": Sum(m) for m in MEASURES})
    )
    connection = connections[using]
    with transaction.atomic(using=using), connection.cursor() as cursor:
        rollups.delete()
        sums = ("n", "prompt", "cached", "completion", "reasoning", "total", "cost")
        hourly = _insert_grouped(cursor, connection, rollup_model, grouped, "start", sums)
        days.delete()
        _insert_grouped(cursor, connection, daily_model, by_day, "start", tuple(f"s_{m}" for m in MEASURES))
        return hourly
