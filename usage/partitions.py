"""The usage records' monthly partitions on PostgreSQL, and the retention purge.

On PostgreSQL `usage_usagerecord` is partitioned by range of `created_at` (migration 0007), one partition per UTC
month named `usage_usagerecord_pYYYYMM`, plus `usage_usagerecord_default` so that no insert can ever fail for want
of a partition. `usage_partitions_ensure` creates this month's and the next month's partitions (the migration
does; each writer process does once a month before its first insert; `purge_usage` does): idempotent, serialised
by an advisory lock, and if rows of that month already sit in the default partition they are moved into the new
one in the same transaction.

`usage_records_purge(before)` drops every monthly partition that ends at or before `before` (a metadata
operation: no row-by-row delete, no bloat, no long lock) and deletes the default partition's rows older than
`before`; a partition that straddles `before` is kept whole until a later purge. On SQLite (a plain table) it
deletes the rows older than `before`. The hourly rollups are never touched: totals outlive their records.
"""

from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connections, transaction
from django.utils import timezone

TABLE = "usage_usagerecord"
DEFAULT_PARTITION = f"{TABLE}_default"
# Taken for the transaction while a partition is created, so two workers never race to create the same one.
_LOCK_ID = 7_315_001


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime  # inclusive
    end: datetime  # exclusive


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(start: datetime) -> datetime:
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def partition_for(moment: datetime) -> Partition:
    start = month_start(moment)
    return Partition(f"{TABLE}_p{start:%Y%m}", start, next_month(start))


def _literal(moment: datetime) -> str:
    return f"'{moment:%Y-%m-%d %H:%M:%S}+00'"


def is_partitioned(using: str = "default") -> bool:
    connection = connections[using]
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        cursor.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", [TABLE])
        row = cursor.fetchone()
    return row is not None and row[0] == "p"


def usage_partitions(using: str = "default") -> list[Partition]:
    """The monthly partitions that exist, oldest first (not the default partition). [] when not partitioned."""
    if not is_partitioned(using):
        return []
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(%s) ORDER BY c.relname",
            [TABLE],
        )
        names = [name for (name,) in cursor.fetchall()]
    out = []
    for name in names:
        suffix = name[len(TABLE) + 2 :]
        if name.startswith(f"{TABLE}_p") and len(suffix) == 6 and suffix.isdigit():
            start = datetime(int(suffix[:4]), int(suffix[4:]), 1, tzinfo=UTC)
            out.append(Partition(name, start, next_month(start)))
    return out


def create_partition(cursor, partition: Partition) -> bool:
    """Create `partition` unless it exists (call in a transaction holding the advisory lock); True if created.

    Rows of its month in the default partition (written while it was missing) are moved into it: PostgreSQL
    refuses to create a partition whose rows the default partition holds.
    """
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [partition.name])
    if cursor.fetchone()[0]:
        return False
    bounds = f"created_at >= {_literal(partition.start)} AND created_at < {_literal(partition.end)}"
    cursor.execute(f"SELECT EXISTS (SELECT 1 FROM {DEFAULT_PARTITION} WHERE {bounds})")  # noqa: S608
    moving = cursor.fetchone()[0]
    if moving:
        cursor.execute(f"CREATE TEMP TABLE usage_moving (LIKE {TABLE}) ON COMMIT DROP")
        cursor.execute(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE {bounds} RETURNING *) "  # noqa: S608
            "INSERT INTO usage_moving SELECT * FROM moved"
        )
    cursor.execute(
        f"CREATE TABLE {partition.name} PARTITION OF {TABLE} "
        f"FOR VALUES FROM ({_literal(partition.start)}) TO ({_literal(partition.end)})"
    )
    if moving:
        cursor.execute(f"INSERT INTO {TABLE} SELECT * FROM usage_moving")  # noqa: S608
        cursor.execute("DROP TABLE usage_moving")
    return True


def usage_partitions_ensure(*, now: datetime | None = None, months_ahead: int = 1, using: str = "default") -> list:
    """Make sure the partitions of the month of `now` and the `months_ahead` following months exist (PostgreSQL,
    partitioned table; a no-op otherwise). Returns the names of the partitions created."""
    if not is_partitioned(using):
        return []
    start = month_start(now or timezone.now())
    wanted = [partition_for(start)]
    for _ in range(months_ahead):
        wanted.append(partition_for(wanted[-1].end))
    existing = {p.name for p in usage_partitions(using)}
    if all(p.name in existing for p in wanted):
        return []  # the usual case: no lock, no DDL
    created = []
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_ID])
        for partition in wanted:
            if create_partition(cursor, partition):
                created.append(partition.name)
    return created


@dataclass
class PurgePlan:
    """What a purge removes: whole partitions (PostgreSQL) and rows deleted one by one (the default partition's,
    or on SQLite every old row), with the row counts."""

    before: datetime
    partitions: list[tuple[str, int]]
    rows: int


def usage_records_purge(*, before: datetime, dry_run: bool = False, using: str = "default") -> PurgePlan:
    """Remove the usage records older than `before` as described in the module docstring; with `dry_run`, only
    count. Rollups are kept."""
    from .models import UsageRecord

    connection = connections[using]
    if not is_partitioned(using):
        old = UsageRecord.objects.using(using).filter(created_at__lt=before)
        if dry_run:
            return PurgePlan(before, [], old.count())
        deleted, _ = old.delete()
        return PurgePlan(before, [], deleted)
    doomed = [p for p in usage_partitions(using) if p.end <= before]
    counts = []
    with transaction.atomic(using=using), connection.cursor() as cursor:
        for partition in doomed:
            # The planner's estimate, not count(*): a month of records can be hundreds of millions of rows.
            cursor.execute("SELECT GREATEST(reltuples, 0)::bigint FROM pg_class WHERE oid = to_regclass(%s)",
                           [partition.name])  # fmt: skip
            counts.append((partition.name, cursor.fetchone()[0]))
        where = f"created_at < {_literal(before)}"
        if dry_run:
            cursor.execute(f"SELECT count(*) FROM {DEFAULT_PARTITION} WHERE {where}")  # noqa: S608
            rows = cursor.fetchone()[0]
        else:
            for partition in doomed:
                cursor.execute(f"DROP TABLE {partition.name}")
            cursor.execute(f"DELETE FROM {DEFAULT_PARTITION} WHERE {where}")  # noqa: S608
            rows = cursor.rowcount
    return PurgePlan(before, counts, rows)
