"""Default prices: OpenAI's public list prices (standard tier, USD per million text tokens) for current models.

These are defaults for admins to edit (ModelPrice rows in the admin): a price change is a new row with a later
`effective_from`, so past usage keeps the price it was made at. A row prices its model and, by the longest-prefix
rule of `completions.pricing`, its dated snapshots (`gpt-4o` prices `gpt-4o-2024-08-06`). `max_output_tokens` is
the model's documented output maximum: a budget reserves it for a request that sets no max_tokens.
Rows that already exist (same model) are left alone, so re-running is harmless.
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = datetime(2024, 1, 1, tzinfo=UTC)

# model, input, output (USD per 1M tokens), max output tokens
DEFAULT_PRICES = [
    ("gpt-5", "1.25", "10.00", 128_000),
    ("gpt-5-mini", "0.25", "2.00", 128_000),
    ("gpt-5-nano", "0.05", "0.40", 128_000),
    ("gpt-4.1", "2.00", "8.00", 32_768),
    ("gpt-4.1-mini", "0.40", "1.60", 32_768),
    ("gpt-4.1-nano", "0.10", "0.40", 32_768),
    ("gpt-4o", "2.50", "10.00", 16_384),
    ("gpt-4o-2024-05-13", "5.00", "15.00", 4_096),
    ("gpt-4o-mini", "0.15", "0.60", 16_384),
    ("o3", "2.00", "8.00", 100_000),
    ("o3-pro", "20.00", "80.00", 100_000),
    ("o3-mini", "1.10", "4.40", 100_000),
    ("o4-mini", "1.10", "4.40", 100_000),
    ("o1", "15.00", "60.00", 100_000),
    ("o1-mini", "1.10", "4.40", 65_536),
    ("gpt-4-turbo", "10.00", "30.00", 4_096),
    ("gpt-4", "30.00", "60.00", 8_192),
    ("gpt-3.5-turbo", "0.50", "1.50", 4_096),
]


def seed(apps, schema_editor):
    ModelPrice = apps.get_model("completions", "ModelPrice")
    existing = set(ModelPrice.objects.values_list("model", flat=True))
    ModelPrice.objects.bulk_create(
        [
            ModelPrice(
                model=model,
                input_per_million=Decimal(input_price),
                output_per_million=Decimal(output_price),
                max_output_tokens=max_output,
                effective_from=EFFECTIVE_FROM,
            )
            for model, input_price, output_price, max_output in DEFAULT_PRICES
            if model not in existing
        ]
    )


def unseed(apps, schema_editor):
    ModelPrice = apps.get_model("completions", "ModelPrice")
    for model, input_price, output_price, _max_output in DEFAULT_PRICES:
        ModelPrice.objects.filter(
            model=model,
            effective_from=EFFECTIVE_FROM,
            input_per_million=Decimal(input_price),
            output_per_million=Decimal(output_price),
        ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("completions", "0002_limitcounter_scope"),
    ]

    operations = [
        migrations.RunPython(seed, unseed),
    ]
