"""Usage knows the endpoint: the writer records it and the cached tokens from the request outcome, records of
the previous release count as chat completions, and the admin's pictures split usage by endpoint."""

import json
import re
import uuid
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apikeys.keycache import KeySnapshot
from core.outcome import ErrorType, RequestOutcome
from usage.dashboard import key_usage_panel
from usage.models import UsageRecord
from usage.rollups import rollup_rebuild
from usage.writer import UsageWriter, capture


@pytest.fixture
def api_key(make_key):
    api_key, _ = make_key(name="endpoints-key")
    return api_key


def outcome(api_key, **fields) -> RequestOutcome:
    result = RequestOutcome(request_id=f"req_{uuid.uuid4().hex}", key=KeySnapshot.from_model(api_key))
    for name, value in fields.items():
        setattr(result, name, value)
    return result


def test_the_writer_records_endpoint_and_cached_tokens(api_key):
    writer = UsageWriter(flush_seconds=3600)
    chat = outcome(
        api_key, endpoint="chat.completions", model="gpt-4o", prompt_tokens=2048, cached_tokens=1024,
        completion_tokens=10, cost_usd=Decimal("0.00396"),
    )  # fmt: skip
    embedding = outcome(api_key, endpoint="embeddings", model="text-embedding-3-small", prompt_tokens=8)
    # An upstream reporting more cached than prompt tokens: clamped to the prompt tokens they are part of.
    odd = outcome(api_key, endpoint="completions", model="gpt-3.5-turbo-instruct", prompt_tokens=5, cached_tokens=9)
    refused = outcome(api_key, endpoint="moderations", status=429, error_type=ErrorType.RATE_LIMIT_REQUESTS)
    unnamed = outcome(api_key, model="gpt-4o-mini")  # a relay that names no endpoint: recorded as chat
    for item in (chat, embedding, odd, refused, unnamed):
        writer._buffer.append(capture(item))
    assert writer.flush()
    stored = {r.request_id: r for r in UsageRecord.objects.filter(key_prefix=api_key.prefix)}
    assert (stored[chat.request_id].endpoint, stored[chat.request_id].cached_tokens) == ("chat.completions", 1024)
    assert stored[chat.request_id].cost_usd == Decimal("0.00396")
    assert (stored[embedding.request_id].endpoint, stored[embedding.request_id].cached_tokens) == ("embeddings", 0)
    assert (stored[odd.request_id].endpoint, stored[odd.request_id].cached_tokens) == ("completions", 5)
    assert stored[refused.request_id].endpoint == "moderations"
    assert stored[refused.request_id].error_type == "rate_limit_requests"
    assert stored[unnamed.request_id].endpoint == "chat.completions"


def test_an_insert_of_the_previous_release_is_a_chat_completion(api_key):
    """Workers of the previous release insert without the new columns during a rolling deploy."""
    table = connection.ops.quote_name(UsageRecord._meta.db_table)
    columns = ("request_id", "api_key_id", "key_prefix", "key_name", "model", "status", "error_type", "streamed",
               "prompt_tokens", "completion_tokens", "total_tokens", "usage_estimated", "cost_usd", "latency_ms",
               "upstream_request_id", "created_at")  # fmt: skip
    values = ["req_old_release", api_key.pk, api_key.prefix, api_key.name, "gpt-4o", 200, "", False, 3, 2, 5,
              False, "0.00001", 1.0, "", timezone.now()]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(values))})",  # noqa: S608
            values,
        )
    old = UsageRecord.objects.get(request_id="req_old_release")
    assert (old.endpoint, old.cached_tokens) == ("chat.completions", 0)


def seed(api_key) -> None:
    now = timezone.now()
    rows = [("chat.completions", "gpt-4o", 100, 40, 20, "0.0004", 200)] * 3 + [
        ("embeddings", "text-embedding-3-small", 1000, 0, 0, "0.00002", 200),
        ("embeddings", "text-embedding-3-small", 0, 0, 0, "0", 429),
        ("moderations", "omni-moderation-latest", 0, 0, 0, "0", 200),
    ]
    UsageRecord.objects.bulk_create(
        UsageRecord(
            request_id=f"req_{uuid.uuid4().hex}", api_key=api_key, key_prefix=api_key.prefix, key_name=api_key.name,
            endpoint=endpoint, model=model, status=status, prompt_tokens=prompt, cached_tokens=cached,
            completion_tokens=completion, total_tokens=prompt + completion, cost_usd=Decimal(cost), created_at=now,
        )
        for endpoint, model, prompt, cached, completion, cost, status in rows
    )  # fmt: skip
    rollup_rebuild()  # records made without the writer: their rollups, as a backfill makes them


def payload(html: str, json_id: str) -> dict:
    return json.loads(re.search(rf'<script id="{json_id}" type="application/json">(.*?)</script>', html).group(1))


def endpoint_table(html: str) -> dict[str, list[str]]:
    rows = re.findall(r'<tr data-endpoint="([^"]+)">(.*?)</tr>', html, re.S)
    return {name: re.findall(r'<td class="tg-num">([^<]*)</td>', cells) for name, cells in rows}


def test_the_key_panel_splits_usage_by_endpoint(api_key):
    seed(api_key)
    html = str(key_usage_panel(api_key))
    data = payload(html, f"usage-{api_key.prefix}-data")["endpoints"]
    assert [s["name"] for s in data["series"]] == ["chat.completions", "embeddings", "moderations"]
    assert [sum(s["requests"]) for s in data["series"]] == [3, 2, 1]
    assert all(len(s["requests"]) == 30 for s in data["series"])
    assert 'data-usage-chart="endpoints"' in html
    table = endpoint_table(html)
    # requests, prompt tokens, of which cached, completion tokens, cost, error rate
    assert table["chat.completions"] == ["3", "300", "120", "60", "$0.0012", "0.0 %"]
    assert table["embeddings"] == ["2", "1,000", "0", "0", "$0.0000", "50.0 %"]


def test_the_dashboard_splits_usage_by_endpoint(api_key, transactional_db):
    UsageRecord.objects.all().delete()
    seed(api_key)
    user = get_user_model().objects.create_superuser("endpoint-admin", "e@example.com", "pw-for-tests-only")
    client = Client()
    client.force_login(user)
    html = client.get(reverse("admin:usage_usagerecord_dashboard")).content.decode()
    data = payload(html, "usage-dashboard-data")["daily_by_endpoint"]
    assert {s["name"]: sum(s["requests"]) for s in data["series"]} == {
        "chat.completions": 3,
        "embeddings": 2,
        "moderations": 1,
    }
    assert 'data-usage-chart="endpoints" data-usage-data="usage-dashboard-data"' in html
    assert set(endpoint_table(html)) == {"chat.completions", "embeddings", "moderations"}


def test_rows_from_before_the_migration_become_chat_completions(transactional_db, api_key):
    from django.core.management import call_command
    from django.db.migrations.executor import MigrationExecutor

    call_command("migrate", "usage", "0001", verbosity=0)
    try:
        historic = MigrationExecutor(connection).loader.project_state(("usage", "0001_initial")).apps
        OldRecord = historic.get_model("usage", "UsageRecord")
        assert "endpoint" not in {f.name for f in OldRecord._meta.get_fields()}
        OldRecord.objects.create(
            request_id="req_before", key_prefix=api_key.prefix, key_name=api_key.name, model="gpt-4o", status=200,
            prompt_tokens=3, completion_tokens=2, total_tokens=5,
        )  # fmt: skip
    finally:
        call_command("migrate", "usage", verbosity=0)
    before = UsageRecord.objects.get(request_id="req_before")
    assert (before.endpoint, before.cached_tokens) == ("chat.completions", 0)
