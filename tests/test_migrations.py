"""The split of the relay app by concern (completions/0005, usage/0001, metering/0001) on a database with data.

Rows written at the pre-split state (apikeys 0003, completions 0004) survive the split with every value, and the
rest of the way to the latest state too; the tables take their new apps' names; content types move (so a staff
user's permission on usage records follows, and admin log entries still point at the right model); and the
backward migration restores the pre-split tables, names, values and permissions. The database is left fully
migrated, whatever happens.
"""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission, User
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

PRE_SPLIT = [("apikeys", "0003_key_lineage"), ("completions", "0004_usage_key_without_db_constraint")]
SPLIT = [("usage", "0001_initial"), ("metering", "0001_initial")]
# Which app holds each moved model, and its table, before and after the split.
MOVED = {
    "UsageRecord": (("completions", "completions_usagerecord"), ("usage", "usage_usagerecord")),
    "ModelPrice": (("completions", "completions_modelprice"), ("usage", "usage_modelprice")),
    "LimitCounter": (("completions", "completions_limitcounter"), ("metering", "metering_limitcounter")),
}
# Tables that stay where they were; their rows must survive too.
STAYING = {"APIKey": "apikeys", "AuditLogEntry": "apikeys", "KeyGeneration": "apikeys"}

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def migrate(targets):
    """Migrate to `targets` and return the app registry of the state reached (historical models)."""
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()
    return executor.loader.project_state(targets).apps


def latest_targets():
    """Every app's newest migration: later migrations of any app are included without naming them here."""
    return MigrationExecutor(connection).loader.graph.leaf_nodes()


def table_names() -> set[str]:
    with connection.cursor() as cursor:
        return set(connection.introspection.table_names(cursor))


def snapshot(apps, placement: int) -> dict[str, list[dict]]:
    """Every row of every table concerned, as {model: [row values, by primary key]}."""
    rows = {}
    for model_name, places in MOVED.items():
        app_label = places[placement][0]
        rows[model_name] = list(apps.get_model(app_label, model_name).objects.order_by("pk").values())
    for model_name, app_label in STAYING.items():
        rows[model_name] = list(apps.get_model(app_label, model_name).objects.order_by("pk").values())
    return rows


def same_columns(before: dict[str, list[dict]], after: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """`after` restricted to the columns `before` had (a later migration may add columns)."""
    return {name: [{k: row[k] for k in before[name][0]} for row in rows] for name, rows in after.items()}


def write_pre_split_data(apps) -> None:
    APIKey = apps.get_model("apikeys", "APIKey")
    key = APIKey.objects.create(
        id="abcd1234", prefix="abcd1234", hashed_key="sha512$$" + "0" * 128, name="alice", owner="team a",
        notes="n", rpm=40, tpm=10_000, max_concurrent=3, allowed_models=["gpt-4o-mini", "gpt-4o"],
        budget_usd=Decimal("12.3400"), budget_period="day", expiry_date=T0, last_used_at=T0, lineage="abcd1234",
    )  # fmt: skip
    APIKey.objects.create(
        id="efgh5678", prefix="efgh5678", hashed_key="sha512$$" + "1" * 128, name="alice", predecessor=key,
        lineage="abcd1234", grace_until=T0, revoked=True, revoked_at=T0,
    )  # fmt: skip
    apps.get_model("apikeys", "KeyGeneration").objects.create(pk=1, value=1_767_323_045_000_000_001)
    apps.get_model("apikeys", "AuditLogEntry").objects.create(
        created_at=T0, actor="command:create_api_key", action="create", key_prefix="abcd1234", key_name="alice",
        changes={"rpm": [None, 40], "allowed_models": [[], ["gpt-4o-mini"]]},
    )  # fmt: skip
    UsageRecord = apps.get_model("completions", "UsageRecord")
    for i, (status, streamed) in enumerate([(200, False), (200, True), (429, False), (499, True)]):
        UsageRecord.objects.create(
            created_at=T0, request_id=f"req-{i}", api_key_id="abcd1234", key_prefix="abcd1234", key_name="alice",
            model="gpt-4o-mini", status=status, error_type="" if status == 200 else "rate_limit_exceeded",
            streamed=streamed, prompt_tokens=11 + i, completion_tokens=7 * i, total_tokens=11 + 8 * i,
            usage_estimated=status == 499, cost_usd=Decimal("0.00001234") * (i + 1), latency_ms=12.5 + i,
            ttfb_ms=None if i == 0 else 3.25, upstream_request_id=f"up-{i}",
        )  # fmt: skip
    apps.get_model("completions", "ModelPrice").objects.create(
        model="tollgate-test-model", input_per_million=Decimal("1.2345"), output_per_million=Decimal("9.8765"),
        max_output_tokens=4096, effective_from=T0,
    )  # fmt: skip
    LimitCounter = apps.get_model("completions", "LimitCounter")
    LimitCounter.objects.create(name="rpm:abcd1234", scope="abcd1234", value=17, window_end=1_767_323_105.25)
    LimitCounter.objects.create(name="budget:abcd1234:2026-01-02", scope="abcd1234", value=123_400, window_end=-1.0)


def grant_view_usage(content_type: ContentType) -> User:
    permission, _ = Permission.objects.get_or_create(
        content_type=content_type, codename="view_usagerecord", defaults={"name": "Can view usage record"}
    )
    user = User.objects.create_user("auditor", password="x", is_staff=True)
    user.user_permissions.add(permission)
    return user


def fresh_user(user: User) -> User:
    return User.objects.get(pk=user.pk)  # has_perm caches the permissions on the instance


def assert_tables(placement: int) -> None:
    tables = table_names()
    for places in MOVED.values():
        assert places[placement][1] in tables
        assert places[1 - placement][1] not in tables


@pytest.mark.django_db(transaction=True)
def test_the_split_keeps_every_row_and_moves_tables_and_permissions_both_ways():
    try:
        old_apps = migrate(PRE_SPLIT)
        assert_tables(0)
        # Start from empty tables: a live gateway of an earlier test may still flush usage records, and the
        # transactional tests before this one leave the seeded prices in whatever state they left them.
        for model_name in (*MOVED, *STAYING):
            app_label = MOVED[model_name][0][0] if model_name in MOVED else STAYING[model_name]
            old_apps.get_model(app_label, model_name).objects.all().delete()
        # The test database's content types were created at the latest state; reversing the split moved them.
        ContentType.objects.clear_cache()
        usage_ct, _ = ContentType.objects.get_or_create(app_label="completions", model="usagerecord")
        write_pre_split_data(old_apps)
        user = grant_view_usage(usage_ct)
        log = LogEntry.objects.create(
            user=user, content_type=usage_ct, object_id="1", object_repr="req-0", action_flag=CHANGE
        )
        assert fresh_user(user).has_perm("completions.view_usagerecord")
        before = snapshot(old_apps, 0)
        assert len(before["UsageRecord"]) == 4 and len(before["LimitCounter"]) == 2
        assert [row["model"] for row in before["ModelPrice"]] == ["tollgate-test-model"]

        # The split alone changes no value of any row.
        split_apps = migrate(SPLIT)
        assert_tables(1)
        assert snapshot(split_apps, 1) == before

        # Up to the latest state (later migrations may add columns and update the seeded list prices in place:
        # every row is kept, and every value of the rows written above).
        new_apps = migrate(latest_targets())
        assert_tables(1)
        after = same_columns(before, snapshot(new_apps, 1))
        for name, rows in before.items():
            assert {row["id"] for row in rows} <= {row["id"] for row in after[name]}, name
            if name != "ModelPrice":
                assert after[name][: len(rows)] == rows, name
        assert [row for row in after["ModelPrice"] if row["model"] == "tollgate-test-model"] == [
            row for row in before["ModelPrice"] if row["model"] == "tollgate-test-model"
        ]
        ContentType.objects.clear_cache()
        user = fresh_user(user)
        assert user.has_perm("usage.view_usagerecord")
        assert not user.has_perm("completions.view_usagerecord")
        assert LogEntry.objects.get(pk=log.pk).content_type.app_label == "usage"
        assert ContentType.objects.get(app_label="metering", model="limitcounter")
        assert not ContentType.objects.filter(app_label="completions", model__in=["usagerecord", "limitcounter"])
        # The renamed tables keep their id sequences: a new row follows the old ones.
        NewUsageRecord = new_apps.get_model("usage", "UsageRecord")
        added = NewUsageRecord.objects.create(request_id="req-after", key_prefix="abcd1234", status=200)
        assert added.pk > max(row["id"] for row in before["UsageRecord"])
        added.delete()

        old_apps = migrate(PRE_SPLIT)
        assert_tables(0)
        restored = snapshot(old_apps, 0)
        # The later seeding migrations add list prices (and, reversed, leave the old seed's rows): compare ours.
        restored["ModelPrice"] = [row for row in restored["ModelPrice"] if row["model"] == "tollgate-test-model"]
        assert restored == before
        ContentType.objects.clear_cache()
        user = fresh_user(user)
        assert user.has_perm("completions.view_usagerecord")
        assert not user.has_perm("usage.view_usagerecord")
        assert LogEntry.objects.get(pk=log.pk).content_type.app_label == "completions"
    finally:
        migrate(latest_targets())
        ContentType.objects.clear_cache()
    assert_tables(1)
