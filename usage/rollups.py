"""Hourly usage rollups (`UsageRollup`): how the usage writer adds to them, and how they are rebuilt from records.

The writer inserts a batch of records with `INSERT … ON CONFLICT DO NOTHING RETURNING request_id`, so it knows
which records the database actually took (a retried batch takes none), and calls `rollup_add` with those in the
same transaction: the rollups move exactly with the records. `rollup_add` upserts each (hour, key, model,
endpoint, outcome) row once per batch, adding the batch's sums (`ON CONFLICT … DO UPDATE SET x = x + excluded.x`),
in a fixed order so that two workers' batches lock shared rows in the same order and cannot deadlock.

`rollup_rebuild(since)` recomputes every rollup from the hour `since` on from the records (backfills, and records
written without the writer); on the same records it gives exactly what the writer produced.
"""

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal

from django.db import connections, transaction
from django.db.models import BigIntegerField, Case, Count, F, Sum, Value, When
from django.db.models.functions import Cast, Round, TruncHour

from .models import Outcome, UsageRecord, UsageRollup
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


def rollup_add(deltas: dict[tuple, list[int]], *, using: str = "default") -> None:
    """Add `deltas` (see `rollup_deltas`) to the rollups: one upsert per row, sent together (`executemany`: one
    round trip on PostgreSQL), rows in the unique index's order. Call inside the transaction that inserted the
    records."""
    if not deltas:
        return
    connection = connections[using]
    ops = connection.ops
    quote = ops.quote_name
    table = quote(UsageRollup._meta.db_table)
    columns = (*DIMENSIONS, *MEASURES)
    updates = ", ".join(f"{quote(m)} = {table}.{quote(m)} + excluded.{quote(m)}" for m in MEASURES)
    sql = (
        f"INSERT INTO {table} ({', '.join(quote(c) for c in columns)}) "  # noqa: S608
        f"VALUES ({', '.join(['%s'] * len(columns))}) "
        f"ON CONFLICT ({', '.join(quote(c) for c in UNIQUE)}) DO UPDATE SET {updates}"
    )
    adapt_time = ops.adapt_datetimefield_value
    order = [DIMENSIONS.index(name) for name in UNIQUE]
    items = sorted(deltas.items(), key=lambda item: tuple(item[0][i] for i in order))
    with connection.cursor() as cursor:
        cursor.executemany(sql, [[adapt_time(hour), *rest, *sums] for (hour, *rest), sums in items])


def rollup_rebuild(
    *, since: datetime | None = None, using: str = "default", record_model=UsageRecord, rollup_model=UsageRollup
) -> int:
    """Recompute the rollups of every hour from `since` (an aware datetime, truncated to its hour; None: all of
    them) from the usage records, in one transaction; return how many rollup rows there are now for that span.
    `record_model` and `rollup_model` are for a migration's historical models.

    Rows of hours whose records were purged are kept only before `since`: rebuild from a `since` after the
    retention horizon (a full rebuild after a purge would drop the purged hours' totals).
    """
    records = record_model.objects.using(using).all()
    rollups = rollup_model.objects.using(using).all()
    if since is not None:
        since = hour_of(since)
        records = records.filter(created_at__gte=since)
        rollups = rollups.filter(hour__gte=since)
    grouped = (
        records.order_by()
        .annotate(
            hour=TruncHour("created_at", tzinfo=UTC),
            outcome=Case(
                When(status__lt=400, then=Value(Outcome.OK.value)),
                When(status=429, then=Value(Outcome.THROTTLED.value)),
                default=Value(Outcome.ERROR.value),
            ),
        )
        .values(*DIMENSIONS)
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
    # One INSERT … SELECT: the grouping runs in the database, nothing comes through Python.
    select_sql, params = grouped.query.sql_with_params()
    connection = connections[using]
    quote = connection.ops.quote_name
    sums = ("n", "prompt", "cached", "completion", "reasoning", "total", "cost")
    target = ", ".join(quote(name) for name in (*DIMENSIONS, *MEASURES))
    source = ", ".join([*(f"q.{quote(name)}" for name in DIMENSIONS), *(f"COALESCE(q.{quote(s)}, 0)" for s in sums)])
    with transaction.atomic(using=using), connection.cursor() as cursor:
        rollups.delete()
        cursor.execute(
            f"INSERT INTO {quote(rollup_model._meta.db_table)} ({target}) SELECT {source} FROM ({select_sql}) q",  # noqa: S608
            params,
        )
        return cursor.rowcount
