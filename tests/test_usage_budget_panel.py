"""The admin's budget panel counts what budget enforcement counts: the spend of the key's whole rotation lineage."""

import uuid
from decimal import Decimal

from django.utils import timezone

from apikeys.services import api_key_create, api_key_rotate
from metering.base import BudgetWindow, budget_spent_in_database
from usage.dashboard import key_usage_panel
from usage.models import UsageRecord
from usage.pricing import usd_to_units
from usage.rollups import rollup_rebuild
from usage.selectors import usage_budget_status


def spend(api_key, cost: str) -> None:
    UsageRecord.objects.create(
        request_id=f"req_{uuid.uuid4().hex}", api_key=api_key, key_prefix=api_key.prefix, key_name=api_key.name,
        model="gpt-4o", status=200, prompt_tokens=10, completion_tokens=5, total_tokens=15,
        cost_usd=Decimal(cost), created_at=timezone.now(),
    )  # fmt: skip
    rollup_rebuild()  # a record made without the writer: its rollup, as a backfill makes it


def test_a_successor_shows_its_lineages_spend(db):
    old, _ = api_key_create(name="rotating", actor="test", budget_usd=Decimal("2"), budget_period="month")
    spend(old, "1.50")
    new, _ = api_key_rotate(api_key=old, grace=60, actor="test")
    spend(new, "0.25")
    unrelated, _ = api_key_create(name="other", actor="test", budget_usd=Decimal("2"), budget_period="month")
    spend(unrelated, "0.40")

    status = usage_budget_status(api_key=new)
    assert status["spent_usd"] == Decimal("1.75")  # before the fix: 0.25, the successor's own spend only
    assert status["remaining_usd"] == Decimal("0.25")
    assert status["lineage_keys"] == 2
    # The predecessor (still in grace) shows the same lineage spend, and so does enforcement.
    assert usage_budget_status(api_key=old)["spent_usd"] == Decimal("1.75")
    window = BudgetWindow.at(new.budget_period, timezone.now())
    assert budget_spent_in_database(new.lineage, window) == usd_to_units(status["spent_usd"])
    assert usage_budget_status(api_key=unrelated)["spent_usd"] == Decimal("0.40")

    html = " ".join(str(key_usage_panel(new)).split())
    assert "$1.75 spent of $2.00 this month (87.5 %) across the 2 keys of its rotation lineage" in html


def test_a_key_never_rotated_counts_its_own_spend(db):
    api_key, _ = api_key_create(name="single", actor="test", budget_usd=Decimal("1"), budget_period="total")
    spend(api_key, "0.30")
    status = usage_budget_status(api_key=api_key)
    assert (status["spent_usd"], status["lineage_keys"]) == (Decimal("0.30"), 1)
    assert "rotation lineage" not in str(key_usage_panel(api_key))
