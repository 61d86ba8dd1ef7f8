"""What requests cost, as OpenAI bills them: uncached input, cached input and output, each at its own rate.

No servers: the price table is loaded from the test database into the process's `PriceBook`, then the
request path's own function, `usage.pricing.cost_usd`, prices each usage. The expected totals are computed by
hand, from the rates, with exact fractions.
"""

from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

import pytest

from usage.models import ModelPrice
from usage.pricing import PriceBook, cost_usd, get_price_book, units_to_usd, usd_to_units, worst_case_cost_usd

AT = datetime(2026, 3, 1, tzinfo=UTC)
FROM = datetime(2026, 1, 1, tzinfo=UTC)

# model: (input, cached input or None, output) in USD per 1M tokens
RATES = {
    "zz-chat": ("2.50", "1.25", "10.00"),
    "zz-nocache": ("30.00", None, "60.00"),
    "zz-embedding": ("0.02", None, "0"),
    "zz-moderation": ("0", None, "0"),
}


@pytest.fixture
def prices(db):
    for model, (input_rate, cached_rate, output_rate) in RATES.items():
        ModelPrice.objects.create(
            model=model,
            input_per_million=Decimal(input_rate),
            cached_input_per_million=None if cached_rate is None else Decimal(cached_rate),
            output_per_million=Decimal(output_rate),
            max_output_tokens=0 if model in ("zz-embedding", "zz-moderation") else 4096,
            effective_from=FROM,
        )
    get_price_book().load()  # the process's table, which `cost_usd` reads without a query


def by_hand(model: str, prompt: int, completion: int, cached: int = 0) -> Fraction:
    input_rate, cached_rate, output_rate = (Fraction(rate) if rate is not None else None for rate in RATES[model])
    cached_rate = input_rate if cached_rate is None else cached_rate
    return ((prompt - cached) * input_rate + cached * cached_rate + completion * output_rate) / 1_000_000


# model, prompt tokens (cached included), completion tokens, cached tokens
USAGES = [
    ("zz-chat", 1234, 567, 0),  # plain tokens
    ("zz-chat", 20_480, 311, 18_432),  # mostly from the prompt cache
    ("zz-chat-2026-02-01", 3, 1, 3),  # a dated snapshot, entirely cached
    ("zz-nocache", 1000, 100, 600),  # no cached rate: cached tokens cost the input rate
    ("zz-embedding", 8191, 0, 0),  # an embedding: input only
    ("zz-moderation", 2000, 0, 0),  # a moderation: free
]


def test_the_cost_of_mixed_usage_is_the_hand_computation(prices):
    total = Decimal(0)
    for model, prompt, completion, cached in USAGES:
        cost = cost_usd(model, prompt, completion, AT, cached_tokens=cached)
        base = model if model in RATES else "zz-chat"
        assert abs(Fraction(cost) - by_hand(base, prompt, completion, cached)) <= Fraction(1, 10**8) / 2
        total += cost
    expected = sum(by_hand(m if m in RATES else "zz-chat", p, c, k) for m, p, c, k in USAGES)
    assert abs(Fraction(total) - expected) < Fraction(1, 10**8)
    # The same, written out (USD per 1M tokens x tokens / 1M):
    #   1234 x 2.50 + 567 x 10                      = 0.008755
    #   (20480 - 18432) x 2.50 + 18432 x 1.25 + 311 x 10 = 0.03127
    #   3 x 1.25 + 1 x 10                           = 0.00001375
    #   1000 x 30 + 100 x 60 (600 cached, no rate)  = 0.036
    #   8191 x 0.02                                 = 0.00016382
    #   moderation                                  = 0
    assert abs(total - Decimal("0.07620257")) < Decimal("0.00000001")
    assert cost_usd("zz-moderation", 2000, 0, AT) == 0


def test_cached_tokens_default_to_zero_and_are_clamped(prices):
    # Positional callers of the old signature are charged every prompt token at the input rate.
    assert cost_usd("zz-chat", 1_000_000, 0, AT) == Decimal("2.50")
    assert cost_usd("zz-chat", 1_000_000, 0, AT, cached_tokens=1_000_000) == Decimal("1.25")
    # More cached than prompt tokens (a confused upstream) is charged as all cached, never below that.
    assert cost_usd("zz-chat", 1_000_000, 0, AT, cached_tokens=5_000_000) == Decimal("1.25")
    assert cost_usd("zz-chat", 1_000_000, 0, AT, cached_tokens=-5) == Decimal("2.50")


def test_the_worst_case_assumes_no_cache_hit_and_money_units_round_trip(prices):
    # Prompt at the full input rate, 4096 max output tokens x 2 choices at the output rate.
    assert worst_case_cost_usd("zz-chat", 1000, None, 2, at=AT) == Decimal("0.08442000")
    assert worst_case_cost_usd("zz-embedding", 1000, None, at=AT) == Decimal("0.00002000")
    assert usd_to_units(Decimal("0.08442000")) == 8_442_000
    assert units_to_usd(8_442_000) == Decimal("0.08442000")
    assert usd_to_units(Decimal("0.000000001"), round_up=True) == 1


def test_a_cached_rate_above_the_input_rate_still_bounds_the_worst_case(db):
    ModelPrice.objects.create(
        model="zz-odd", input_per_million=Decimal(1), cached_input_per_million=Decimal(3),
        output_per_million=Decimal(0), max_output_tokens=0, effective_from=FROM,
    )  # fmt: skip
    book = PriceBook(check_seconds=60)
    book.load()
    price = book.price_for("zz-odd", AT)
    assert price.cost(1_000_000, 0, 1_000_000) == Decimal(3)
    get_price_book().load()
    assert worst_case_cost_usd("zz-odd", 1_000_000, 0, at=AT) == Decimal(3)
