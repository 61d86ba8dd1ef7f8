"""Per-key budgets: the worst-case cost is reserved atomically before the upstream call and settled to the real
cost after it, so no burst can push spend past the cap; a spent budget answers 429 `insufficient_quota` with
`x-should-retry: false`. Also the prices: longest-prefix match, the row in force at the time, the fallback.

Each server test prices a model of its own (ModelPrice rows) before starting its gateway, and steers the fake
upstream's reported usage (`fake.usage`), so every cost below is exact.
"""

import asyncio
import importlib
import os
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import openai
import pytest
from django.utils import timezone

from completions.tokens import estimate_prompt_tokens

REDIS_URL = os.environ.get("REDIS_URL", "")
STORES = [
    pytest.param(None, id="redis", marks=pytest.mark.skipif(not REDIS_URL, reason="REDIS_URL is not set")),
    pytest.param({"REDIS_URL": ""}, id="database"),
]
MESSAGES = [{"role": "user", "content": "what does this cost"}]
PROMPT_ESTIMATE = estimate_prompt_tokens(MESSAGES)
# 1,000 USD per million tokens: a token costs exactly 0.001 USD.
PER_MILLION = Decimal(1000)
TOKEN_USD = Decimal("0.001")


@pytest.fixture
def priced_model(transactional_db):
    from usage.models import ModelPrice

    model = f"budget-test-{uuid.uuid4().hex[:8]}"
    ModelPrice.objects.create(
        model=model,
        input_per_million=PER_MILLION,
        output_per_million=PER_MILLION,
        max_output_tokens=200,
        effective_from=timezone.now() - timedelta(days=1),
    )
    return model


def ask(client, model, *, max_tokens=None, usage=None, user=None, delay_ms=0):
    """One completion; the fake upstream reports `usage` = (prompt, completion) tokens."""
    fake = {"delay_ms": delay_ms}
    if usage is not None:
        fake["usage"] = {"prompt_tokens": usage[0], "completion_tokens": usage[1], "total_tokens": sum(usage)}
    kwargs = {"max_tokens": max_tokens} if max_tokens is not None else {}
    if user:
        kwargs["user"] = user
    try:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=MESSAGES, extra_body={"fake": fake}, **kwargs
        )
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers, exc.body
    raw.parse()
    return raw.status_code, raw.headers, None


@pytest.mark.slow
@pytest.mark.parametrize("env", STORES)
def test_100_concurrent_requests_never_spend_past_a_budget_that_fits_10(
    env, priced_model, make_key, start_gateway, fake_upstream
):
    max_tokens = 20
    worst_case = (PROMPT_ESTIMATE + max_tokens) * TOKEN_USD
    _, raw = make_key(name="budget-burst", budget_usd=worst_case * 10, budget_period="day")
    gateway = start_gateway(name="budget-burst", workers=4, env=env)
    marker = f"budget-burst-{uuid.uuid4().hex}"
    # Each request really costs its worst case, so exactly 10 fit whatever order they arrive in.
    fake = {"usage": {"prompt_tokens": PROMPT_ESTIMATE, "completion_tokens": max_tokens}, "delay_ms": 300}

    async def run():
        client = gateway.async_client(raw, timeout=120, max_retries=2)

        async def one():
            try:
                await client.chat.completions.create(
                    model=priced_model, messages=MESSAGES, max_tokens=max_tokens, user=marker, extra_body={"fake": fake}
                )
                return (200, None, None)
            except openai.APIStatusError as exc:
                return (exc.status_code, exc.body.get("code"), exc.response.headers.get("x-should-retry"))

        results = await asyncio.gather(*[one() for _ in range(100)])
        await client.close()
        return Counter(results)

    counts = asyncio.run(run())
    print("budget run:", dict(counts))
    assert counts == Counter({(200, None, None): 10, (429, "insufficient_quota", "false"): 90})
    # The SDK (max_retries=2) did not retry the refusals: the upstream saw exactly the 10 admitted requests.
    assert len([r for r in fake_upstream.requests() if (r.get("json") or {}).get("user") == marker]) == 10
    status, _headers, body = ask(gateway.client(raw), priced_model, max_tokens=1, usage=(1, 1))
    assert status == 429 and body["type"] == "insufficient_quota"


@pytest.mark.parametrize("env", STORES)
def test_reservations_settle_to_the_real_cost(env, priced_model, make_key, start_gateway):
    max_tokens = 10
    worst_case = (PROMPT_ESTIMATE + max_tokens) * TOKEN_USD
    real = (5, 3)  # 8 tokens: 0.008 USD
    budget = worst_case + 2 * 8 * TOKEN_USD + TOKEN_USD / 2
    key, raw = make_key(name="budget-settle", budget_usd=budget, budget_period="month")
    gateway = start_gateway(name="budget-settle", workers=1, env=env)
    client = gateway.client(raw)
    # Spent 0, 8, 16 (+ the worst case each time) fit; 24 + worst case does not. Had reservations stayed at the
    # worst case, only one request would have passed.
    statuses = [ask(client, priced_model, max_tokens=max_tokens, usage=real)[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    _status, headers, body = ask(client, priced_model, max_tokens=max_tokens, usage=real)
    assert body["code"] == "insufficient_quota" and headers["x-should-retry"] == "false"
    assert f"The budget of key {key.prefix} is spent: $0.0240 used of ${budget:.4f} per month (UTC)" in body["message"]
    renews = (datetime.now(UTC).replace(day=28) + timedelta(days=4)).replace(day=1)
    assert f"It renews at {renews:%Y-%m}-01 00:00 UTC." in body["message"]


@pytest.mark.parametrize("env", STORES)
def test_spend_already_recorded_in_the_database_counts(env, priced_model, make_key, start_gateway):
    from usage.models import UsageRecord
    from usage.rollups import rollup_rebuild

    key, raw = make_key(name="budget-recorded", budget_usd=Decimal("1.00"), budget_period="total")
    UsageRecord.objects.create(
        request_id=f"req_{uuid.uuid4().hex}", api_key=key, key_prefix=key.prefix, status=200, cost_usd=Decimal("0.95")
    )
    rollup_rebuild()  # a record made without the writer: its rollup, as a backfill makes it
    gateway = start_gateway(name="budget-recorded", workers=1, env=env)
    # At most (prompt + 100) x 0.001 USD: more than the 0.05 USD left.
    status, _headers, body = ask(gateway.client(raw), priced_model, max_tokens=100, usage=(1, 1))
    assert status == 429 and body["type"] == "insufficient_quota" and body["code"] == "insufficient_quota"
    assert "$0.9500 used of $1.0000 in total" in body["message"]
    assert "It does not renew" in body["message"]
    # A cheaper request still fits in what is left.
    assert ask(gateway.client(raw), priced_model, max_tokens=1, usage=(1, 1))[0] == 200


def test_request_cost_is_the_usage_at_the_price_of_the_model(priced_model, make_key, gateway):
    from usage.models import UsageRecord

    _, raw = make_key(name="cost")
    # The shared gateway reloads prices every PRICE_CACHE_SECONDS: retry until it knows the new model.
    deadline = timezone.now() + timedelta(seconds=15)
    while True:
        status, headers, _ = ask(gateway.client(raw), priced_model, usage=(100, 50))
        assert status == 200
        request_id = headers["x-request-id"]
        record = None
        for _ in range(100):
            record = UsageRecord.objects.filter(request_id=request_id).first()
            if record is not None:
                break
            time.sleep(0.05)
        if record is None:
            pytest.skip("usage records are not written by this build")
        if record.cost_usd or timezone.now() > deadline:
            break
    assert record.cost_usd == Decimal("0.15")


# PRICES


def _book(*rows):
    from usage.models import ModelPrice
    from usage.pricing import PriceBook

    for model, input_price, output_price, start in rows:
        ModelPrice.objects.create(
            model=model, input_per_million=input_price, output_per_million=output_price, effective_from=start
        )
    book = PriceBook(check_seconds=60)
    book.load()
    return book


def test_the_longest_matching_model_prefix_wins(db):
    old = datetime(2020, 1, 1, tzinfo=UTC)
    book = _book(("zz-4o", 2, 8, old), ("zz-4o-mini", 1, 4, old), ("zz-4", 30, 60, old))
    assert book.price_for("zz-4o-2024-08-06").model == "zz-4o"
    assert book.price_for("zz-4o-mini-2024-07-18").model == "zz-4o-mini"
    assert book.price_for("zz-4o").model == "zz-4o"
    # A prefix only counts up to a "-": zz-4 does not price zz-4.1.
    assert book.price_for("zz-4.1").model == ""
    assert book.price_for("zz-4-0613").model == "zz-4"


def test_the_price_in_force_at_the_time_of_the_request_applies(db):
    from usage.pricing import PriceBook

    book = _book(
        ("zz-model", 10, 40, datetime(2024, 1, 1, tzinfo=UTC)),
        ("zz-model", 2, 8, datetime(2025, 6, 10, tzinfo=UTC)),
    )
    assert isinstance(book, PriceBook)
    assert book.price_for("zz-model", datetime(2025, 1, 1, tzinfo=UTC)).cost(1_000_000, 0) == Decimal(10)
    assert book.price_for("zz-model", datetime(2025, 7, 1, tzinfo=UTC)).cost(1_000_000, 0) == Decimal(2)
    # Before the first row: the earliest price.
    assert book.price_for("zz-model", datetime(2023, 1, 1, tzinfo=UTC)).cost(0, 1_000_000) == Decimal(40)
    assert book.price_for("zz-model", datetime(2025, 7, 1, tzinfo=UTC)).cost(123, 456) == Decimal("0.003894")


def test_an_unknown_model_is_priced_at_the_fallback_with_a_warning(db, settings, caplog):
    settings.PRICE_FALLBACK_INPUT_PER_MILLION = 3.0
    settings.PRICE_FALLBACK_OUTPUT_PER_MILLION = 6.0
    book = _book()
    with caplog.at_level("WARNING", logger="tollgate.pricing"):
        assert book.price_for("zz-unknown").cost(1_000_000, 1_000_000) == Decimal(9)
        book.price_for("zz-unknown")
    assert [r.getMessage() for r in caplog.records].count(
        "prices: no ModelPrice row matches model 'zz-unknown'; pricing it at the fallback (3.0/6.0 USD per 1M tokens)"
    ) == 1


def test_default_prices_cover_current_openai_models(db):
    """The seeding of usage/0003 (through the models as they were at that migration) prices every current
    model, with its cached-input rate, and the endpoints beyond chat."""
    from types import SimpleNamespace

    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    from usage.models import ModelPrice
    from usage.pricing import PriceBook

    name = "0003_openai_prices_with_cached_input"
    migration = importlib.import_module(f"usage.migrations.{name}")
    historic = MigrationExecutor(connection).loader.project_state(("usage", name)).apps
    ModelPrice.objects.all().delete()
    migration.seed(historic, SimpleNamespace(connection=connection))
    book = PriceBook(check_seconds=60)
    book.load()
    for model in ("gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini", "gpt-5"):
        assert book.price_for(model).model == model
    assert book.price_for("gpt-4o-2024-08-06").cost(1_000_000, 1_000_000) == Decimal("12.50")
    assert book.price_for("gpt-4o-mini").cost(1_000_000, 1_000_000) == Decimal("0.75")
    # Cached input at its own rate: gpt-4o 1M prompt tokens of which 400k cached = 0.6 x 2.50 + 0.4 x 1.25.
    assert book.price_for("gpt-4o").cost(1_000_000, 0, 400_000) == Decimal("2.00")
    assert book.price_for("gpt-5-mini").cached_input_per_million == Decimal("0.025")
    # No cached rate (no prompt caching for the model): cached tokens cost the input rate.
    assert book.price_for("gpt-4-0613").cost(1_000_000, 0, 1_000_000) == Decimal(30)
    # The legacy completions model is not priced as gpt-3.5-turbo any more.
    assert book.price_for("gpt-3.5-turbo-instruct").cost(1_000_000, 1_000_000) == Decimal("3.50")
    # Embeddings: input only, nothing to reserve for output; moderations are free.
    assert book.price_for("text-embedding-3-small").cost(1_000_000, 0) == Decimal("0.02")
    assert book.price_for("text-embedding-3-large").cost(1_000_000, 0) == Decimal("0.13")
    assert book.price_for("text-embedding-ada-002").cost(1_000_000, 0) == Decimal("0.10")
    assert book.price_for("text-embedding-3-small").max_output_tokens == 0
    for model in ("omni-moderation-latest", "omni-moderation-2024-09-26", "text-moderation-latest"):
        price = book.price_for(model)
        assert price.model and price.cost(1_000_000, 1_000_000) == 0


@pytest.mark.parametrize("env", STORES)
def test_rotation_neither_resets_spend_nor_doubles_limits(env, priced_model, make_key, start_gateway):
    """Spend and rate-limit counters belong to the key's lineage: the successor inherits them."""
    from apikeys.services import api_key_rotate

    cost = (PROMPT_ESTIMATE + 10) * TOKEN_USD
    old, old_raw = make_key(name="rotating", budget_usd=cost * 3, budget_period="total")
    gateway = start_gateway(name="rotation-budget", env=env)
    usage = (PROMPT_ESTIMATE, 10)
    assert ask(gateway.client(old_raw), priced_model, max_tokens=10, usage=usage)[0] == 200
    assert ask(gateway.client(old_raw), priced_model, max_tokens=10, usage=usage)[0] == 200
    new, new_raw = api_key_rotate(api_key=old, grace=60, actor="test")
    assert new.lineage == old.prefix
    # One more request fits the budget, whichever key sends it; then both keys are out.
    assert ask(gateway.client(new_raw), priced_model, max_tokens=10, usage=usage)[0] == 200
    for raw in (new_raw, old_raw):
        status, _, body = ask(gateway.client(raw), priced_model, max_tokens=10, usage=usage)
        assert status == 429
        assert body["code"] == "insufficient_quota"


@pytest.mark.parametrize("env", STORES)
def test_rotation_shares_the_rate_limit_with_the_successor(env, priced_model, make_key, start_gateway):
    from apikeys.services import api_key_rotate

    old, old_raw = make_key(name="rotating-rpm", rpm=2)
    gateway = start_gateway(name="rotation-rpm", env=env)
    assert ask(gateway.client(old_raw), priced_model)[0] == 200
    assert ask(gateway.client(old_raw), priced_model)[0] == 200
    _, new_raw = api_key_rotate(api_key=old, grace=60, actor="test")
    status, _, body = ask(gateway.client(new_raw), priced_model)
    assert status == 429
    assert body["type"] == "requests"
