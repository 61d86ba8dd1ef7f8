"""Hourly usage rollups: the writer adds exactly the records it inserts (a retried batch adds nothing), a rebuild
from the records gives the same rows, and the budget readers (panel, counter rebuild, alert scanner) agree.

Runs on SQLite and PostgreSQL (DATABASE_URL).
"""

import io
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.test.utils import CaptureQueriesContext

from apikeys.keycache import KeySnapshot
from apikeys.services import api_key_create, api_key_rotate, team_create
from core.outcome import RequestOutcome
from metering.base import BudgetWindow, budget_spent_in_database
from usage.models import UsageDailyRollup, UsageRecord, UsageRollup
from usage.pricing import usd_to_units
from usage.rollups import rollup_rebuild
from usage.selectors import usage_budget_status, usage_budgets_spent, usage_team_budget_status, usage_totals
from usage.writer import UsageWriter, capture, fit

MEASURES = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens", "total_tokens",
            "cost_units")  # fmt: skip
DIMENSIONS = ("hour", "key_prefix", "key_name", "model", "endpoint", "outcome")


def rollups(model=UsageRollup) -> dict[tuple, tuple]:
    return {
        tuple(row[d] for d in DIMENSIONS): tuple(row[m] for m in MEASURES)
        for row in model.objects.values(*DIMENSIONS, *MEASURES)
    }


def days_of(hourly: dict[tuple, tuple]) -> dict[tuple, tuple]:
    """The hourly rows summed per UTC day: what the daily rollups must hold."""
    out: dict[tuple, list] = {}
    for (hour, *rest), sums in hourly.items():
        row = out.setdefault((hour.replace(hour=0), *rest), [0] * len(sums))
        for i, value in enumerate(sums):
            row[i] += value
    return {key: tuple(values) for key, values in out.items()}


def outcome(key, *, at, status=200, model="gpt-4o-mini", endpoint="chat.completions", cost="0.00012345", **fields):
    o = RequestOutcome(request_id=f"req_{uuid.uuid4().hex}", key=KeySnapshot.from_model(key))
    o.model, o.endpoint, o.status = model, endpoint, status
    o.prompt_tokens, o.cached_tokens, o.completion_tokens, o.reasoning_tokens = 100, 30, 20, 5
    o.cost_usd = Decimal(cost)
    o.started_at = at
    for name, value in fields.items():
        setattr(o, name, value)
    return o


def mixed_outcomes(keys, *, now):
    """Records over three hours and two days, three keys, two models and endpoints, every outcome class."""
    out = []
    for i in range(60):
        key = keys[i % len(keys)]
        at = now - timedelta(hours=(i % 3) + 24 * (i % 2), minutes=i % 50, seconds=i)
        status = (200, 200, 429, 502, 400)[i % 5]
        out.append(
            outcome(
                key,
                at=at,
                status=status,
                model=("gpt-4o-mini", "gpt-4o")[i % 2],
                endpoint=("chat.completions", "embeddings")[(i // 2) % 2],
                cost=f"0.{i:04d}1234",
            )
        )
    return out


def write(writer: UsageWriter, batch: list) -> None:
    """One batch through the writer's real insert (what its thread does per batch)."""
    writer._write([capture(o) for o in batch])


@pytest.fixture
def keys(transactional_db):
    return [api_key_create(name=f"rollup-{i}", actor="test")[0] for i in range(3)]


def test_writer_rollups_count_each_inserted_record_once_and_equal_a_rebuild(keys):
    writer = UsageWriter(flush_seconds=60)
    now = datetime.now(UTC)
    batch = mixed_outcomes(keys, now=now)
    write(writer, batch[:40])
    written = rollups()
    assert sum(m[0] for m in written.values()) == 40
    # The batch retried after a commit whose answer was lost (all of it again), plus new records: only the new
    # ones count, and a request id reported twice within one batch counts once.
    write(writer, batch[:40] + batch[40:] + batch[40:45])
    written = rollups()
    assert UsageRecord.objects.count() == 60
    assert sum(m[0] for m in written.values()) == 60
    fitted = [dict(zip_fit(o)) for o in batch]
    assert sum(m[6] for m in written.values()) == sum(usd_to_units(r["cost_usd"]) for r in fitted)
    errors = sum(m[0] for d, m in written.items() if d[5] != "ok")
    assert errors == sum(1 for r in fitted if r["status"] >= 400)
    assert sum(m[0] for d, m in written.items() if d[5] == "throttled") == sum(r["status"] == 429 for r in fitted)
    assert {d[0] for d in written} == {
        (o.started_at.replace(minute=0, second=0, microsecond=0)).astimezone(UTC) for o in batch
    }
    daily = rollups(UsageDailyRollup)
    assert daily == days_of(written)
    # The rebuild from the records gives exactly the writer's rows, hourly and daily.
    out = io.StringIO()
    call_command("rebuild_usage_rollups", stdout=out)
    assert rollups() == written
    assert rollups(UsageDailyRollup) == daily
    assert f"{len(written)} rollup rows" in out.getvalue()


def test_writer_thread_and_a_record_refused_alone_keep_rollups_exact(keys):
    writer = UsageWriter(flush_seconds=0.05)
    now = datetime.now(UTC)
    batch = mixed_outcomes(keys, now=now)[:10]
    for o in batch:
        writer.record(o)
    writer.record(batch[0])  # reported twice
    deadline = time.monotonic() + 10
    while (writer.pending() or UsageRecord.objects.count() < 10) and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.stop(timeout=10)
    assert UsageRecord.objects.count() == 10
    assert sum(m[0] for m in rollups().values()) == 10
    # The one-by-one path (taken when a batch is refused) adds rollups too.
    writer._write_one_by_one([UsageRecord(**dict(zip_fit(outcome(keys[0], at=now))))])
    assert sum(m[0] for m in rollups().values()) == 11
    written = rollups()
    assert rollups(UsageDailyRollup) == days_of(written)
    rollup_rebuild()
    assert rollups() == written
    assert rollups(UsageDailyRollup) == days_of(written)


def zip_fit(o):
    from usage.writer import INSERT_COLUMNS

    return zip(INSERT_COLUMNS, fit(capture(o)), strict=True)


def test_rebuild_since_a_day_leaves_earlier_hours_alone(keys):
    writer = UsageWriter(flush_seconds=60)
    now = datetime(2026, 3, 10, 12, 30, tzinfo=UTC)
    write(writer, [outcome(keys[0], at=now - timedelta(days=2)), outcome(keys[0], at=now)])
    UsageRollup.objects.update(requests=99)  # damage every row
    UsageDailyRollup.objects.update(requests=98)
    call_command("rebuild_usage_rollups", "--since", "2026-03-10", stdout=io.StringIO())
    by_day = {d[0].date().isoformat(): m[0] for d, m in rollups().items()}
    assert by_day == {"2026-03-08": 99, "2026-03-10": 1}
    by_day = {d[0].date().isoformat(): m[0] for d, m in rollups(UsageDailyRollup).items()}
    assert by_day == {"2026-03-08": 98, "2026-03-10": 1}
    with pytest.raises(Exception, match="YYYY-MM-DD"):
        call_command("rebuild_usage_rollups", "--since", "10/03/2026")


def test_totals_read_rollups_and_refuse_bounds_that_are_not_whole_hours(keys):
    writer = UsageWriter(flush_seconds=60)
    now = datetime.now(UTC).replace(minute=30)
    write(writer, [outcome(keys[0], at=now), outcome(keys[0], at=now, status=429)])
    hour = now.replace(minute=0, second=0, microsecond=0)
    totals = usage_totals(key_prefix=keys[0].prefix, since=hour)
    assert (totals["requests"], totals["throttled"], totals["errors"]) == (2, 1, 1)
    assert totals["cost_usd"] == Decimal("0.00024690")
    day = hour.replace(hour=0)
    assert usage_totals(key_prefix=keys[0].prefix, since=day)["requests"] == 2  # from the daily rollups
    UsageRecord.objects.all().delete()  # purged records: the totals stay
    assert usage_totals(key_prefix=keys[0].prefix, since=hour)["requests"] == 2
    assert usage_totals(key_prefix=keys[0].prefix, since=day)["requests"] == 2
    with pytest.raises(ValueError, match="whole hour"):
        usage_totals(since=now)


def test_budget_readers_agree_with_one_another_in_a_constant_number_of_queries(transactional_db):
    now = datetime.now(UTC)
    team = team_create(name="rollup-team", actor="test", budget_usd=Decimal("10"), budget_period="month")
    writer = UsageWriter(flush_seconds=60)
    keys = []
    for i, period in enumerate(("day", "month", "total", "day", "month", "total")):
        key, _ = api_key_create(
            name=f"budgeted-{i}", actor="test", budget_usd=Decimal("5"), budget_period=period,
            team=team if i % 2 else None,
        )  # fmt: skip
        keys.append(key)
    # Spend in this hour, earlier this month (or last month), and long ago, before and after a rotation.
    month_start = BudgetWindow.at("month", now).start
    assert month_start is not None
    moments = [now, now - timedelta(hours=1), month_start, month_start - timedelta(hours=1), now - timedelta(days=400)]
    batch = [outcome(key, at=at, cost=f"0.{i + 1:02d}") for i, key in enumerate(keys) for at in moments]
    write(writer, batch)
    successor, _ = api_key_rotate(api_key=keys[0], grace=60, actor="test")
    write(writer, [outcome(successor, at=now, cost="0.5")])
    heads = [successor, *keys[1:]]
    with CaptureQueriesContext(connection) as queries:
        by_key, by_team = usage_budgets_spent(keys=heads, teams=[team], now=now)
    assert len(queries) == 2  # the keys of those lineages and teams, then their rollups: not one per key
    for key in heads:
        status = usage_budget_status(api_key=key, now=now)
        assert by_key[key.pk] == status["spent_usd"], key.budget_period
        window = BudgetWindow.at(key.budget_period, now)
        assert budget_spent_in_database(key.lineage or key.prefix, window) == usd_to_units(status["spent_usd"])
    assert by_key[successor.pk] > by_key[keys[3].pk]  # the successor carries its predecessor's spend
    assert by_team[team.pk] == usage_team_budget_status(team=team, now=now)["spent_usd"] > 0
    window = BudgetWindow.at("month", now)
    assert budget_spent_in_database(f"team:{team.pk}", window) == usd_to_units(by_team[team.pk])
