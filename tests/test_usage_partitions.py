"""Usage records partitioned by month on PostgreSQL, and the retention purge (`purge_usage`).

The partition tests need PostgreSQL (DATABASE_URL) and are skipped on SQLite; the purge test runs on both (rows are
deleted on SQLite, whole partitions dropped on PostgreSQL), and on both the rollups outlive the records.
"""

import io
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from apikeys.keycache import KeySnapshot
from apikeys.services import api_key_create
from core.outcome import RequestOutcome
from usage.models import UsageRecord, UsageRollup
from usage.partitions import (
    DEFAULT_PARTITION,
    is_partitioned,
    partition_for,
    usage_partitions,
    usage_partitions_ensure,
)
from usage.writer import UsageWriter, capture

postgres_only = pytest.mark.skipif(connection.vendor != "postgresql", reason="partitions are PostgreSQL's")


def outcome(key, at: datetime) -> RequestOutcome:
    o = RequestOutcome(request_id=f"req_{uuid.uuid4().hex}", key=KeySnapshot.from_model(key))
    o.model, o.status, o.prompt_tokens, o.completion_tokens = "gpt-4o-mini", 200, 10, 5
    o.cost_usd = Decimal("0.001")
    o.started_at = at
    return o


def write(key, moments) -> list[str]:
    batch = [outcome(key, at) for at in moments]
    UsageWriter(flush_seconds=60)._write([capture(o) for o in batch])
    return [o.request_id for o in batch]


def partition_of(request_id: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT tableoid::regclass::text FROM usage_usagerecord WHERE request_id = %s", [request_id])
        return cursor.fetchone()[0]


@pytest.fixture
def key(transactional_db):
    return api_key_create(name="partitioned", actor="test")[0]


@postgres_only
def test_migrated_database_has_this_and_next_month_and_a_default_partition(transactional_db):
    assert is_partitioned()
    names = {p.name for p in usage_partitions()}
    now = timezone.now()
    this = partition_for(now)
    assert {this.name, partition_for(this.end).name} <= names
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [DEFAULT_PARTITION])
        assert cursor.fetchone()[0]


@postgres_only
def test_records_land_in_their_months_partition_and_a_late_partition_takes_the_default_ones(key):
    jan, feb = datetime(2025, 1, 31, 23, 59, 59, tzinfo=UTC), datetime(2025, 2, 1, tzinfo=UTC)
    assert usage_partitions_ensure(now=jan) == ["usage_usagerecord_p202501", "usage_usagerecord_p202502"]
    assert usage_partitions_ensure(now=jan) == []  # idempotent
    june = datetime(2024, 6, 10, 12, tzinfo=UTC)
    in_jan, in_feb, in_june = write(key, [jan, feb, june])
    assert partition_of(in_jan) == "usage_usagerecord_p202501"
    assert partition_of(in_feb) == "usage_usagerecord_p202502"
    assert partition_of(in_june) == DEFAULT_PARTITION  # no partition for that month: the insert still succeeds
    assert usage_partitions_ensure(now=june, months_ahead=0) == ["usage_usagerecord_p202406"]
    assert partition_of(in_june) == "usage_usagerecord_p202406"  # moved out of the default partition
    assert UsageRecord.objects.filter(request_id__in=[in_jan, in_feb, in_june]).count() == 3
    # The writer's dedup works across the partitioned table: the same records again insert nothing.
    before = list(UsageRollup.objects.values_list("requests", flat=True).order_by("pk"))
    UsageWriter(flush_seconds=60)._write(
        [capture(o) for o in [outcome(key, jan)]] + [_again(key, in_feb, feb)]  # one new, one retried
    )
    assert UsageRecord.objects.filter(request_id=in_feb).count() == 1
    assert sum(UsageRollup.objects.values_list("requests", flat=True)) == sum(before) + 1


def _again(key, request_id, at):
    o = outcome(key, at)
    o.request_id = request_id
    return capture(o)


def test_purge_removes_old_records_keeps_rollups_and_dry_run_changes_nothing(key):
    now = timezone.now()
    moments = [now - timedelta(days=days) for days in (400, 200, 95, 60, 10, 0)]
    for at in moments:
        usage_partitions_ensure(now=at, months_ahead=0)
    write(key, moments)
    rollups = sorted(UsageRollup.objects.values_list("hour", "requests"))
    out = io.StringIO()
    call_command("purge_usage", "--older-than", "90d", "--dry-run", stdout=out)
    assert "Would" in out.getvalue()
    assert UsageRecord.objects.count() == 6
    call_command("purge_usage", "--older-than", "90d", stdout=out)
    cutoff = now - timedelta(days=90)
    kept = set(UsageRecord.objects.values_list("created_at", flat=True))
    if is_partitioned():
        # Whole months only: a month that ends after the cutoff is kept entire.
        assert kept == {at for at in moments if partition_for(at).end > cutoff}
        assert "Dropped partition usage_usagerecord_p" in out.getvalue()
    else:
        assert kept == {at for at in moments if at >= cutoff}
    assert min(moments[:2]) not in kept and moments[-1] in kept
    assert sorted(UsageRollup.objects.values_list("hour", "requests")) == rollups
    with pytest.raises(Exception, match="90d"):
        call_command("purge_usage", "--older-than", "3 months")


def records(state, at=None) -> list[dict]:
    """The usage rows as the model of migration `state` knows their columns, read with the model of `at` (default:
    the same state): later migrations add columns, which the rows written before them cannot be compared on."""
    loader = MigrationExecutor(connection).loader
    fields = [
        field.attname
        for field in loader.project_state(state).apps.get_model("usage", "UsageRecord")._meta.concrete_fields
    ]
    model = loader.project_state(at or state).apps.get_model("usage", "UsageRecord")
    return list(model.objects.order_by("pk").values(*fields))


@postgres_only
@pytest.mark.django_db(transaction=True)
def test_the_partitioning_migration_keeps_every_row_both_ways():
    executor = MigrationExecutor(connection)
    latest = executor.loader.graph.leaf_nodes()
    before = [("usage", "0006_usage_rollups_request_once")]
    table = UsageRecord._meta.db_table
    moments = [datetime(2025, 3, 4, 5, 6, 7, 890123, tzinfo=UTC), datetime(2025, 4, 30, 23, tzinfo=UTC),
               datetime(2031, 1, 1, tzinfo=UTC)]  # fmt: skip
    try:
        executor.migrate(before)
        assert not is_partitioned()
        with connection.cursor() as cursor:
            for i, at in enumerate(moments):
                cursor.execute(
                    f"INSERT INTO {table} (created_at, request_id, key_prefix, key_name, model, status, streamed, "  # noqa: S608
                    "prompt_tokens, completion_tokens, total_tokens, usage_estimated, cost_usd, latency_ms, "
                    "upstream_request_id, error_type) "
                    "VALUES (%s, %s, 'abcd1234', 'k', 'gpt-4o', 200, false, %s, 1, %s, false, %s, 1.5, '', '')",
                    [at, f"req-{i}", i, i + 1, Decimal("0.00000123") * (i + 1)],
                )
        rows = records(before)
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
        assert is_partitioned()
        assert records(before, at=latest) == rows
        assert partition_of("req-0") == "usage_usagerecord_p202503"
        assert partition_of("req-1") == "usage_usagerecord_p202504"
        assert partition_of("req-2") == DEFAULT_PARTITION
        made = UsageRecord.objects.create(request_id="req-new", key_prefix="abcd1234", status=200)
        assert made.pk > rows[-1]["id"]
        rows.append(
            {
                name: value
                for name, value in UsageRecord.objects.filter(pk=made.pk).values().get().items()
                if name in rows[0]
            }
        )
        executor = MigrationExecutor(connection)
        executor.migrate(before)
        assert not is_partitioned()
        assert records(before) == rows
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(latest)
    assert is_partitioned()
    assert records(before, at=latest) == rows
