"""Default prices, as OpenAI bills them: list prices (standard tier, USD per 1M tokens) with cached-input rates,
and prices for the endpoints beyond chat (legacy completions, embeddings at output 0, moderations at 0).

* A row still as `completions/0003_seed_model_prices` seeded it (same model, `effective_from`, rates and
  `max_output_tokens`, no cached rate) takes the current default values in place. A row an admin edited, or
  added with another `effective_from`, is left alone.
* A model with no row at all gets one, from `EFFECTIVE_FROM`.
* Every row this changes or adds gets a `PriceAuditEntry` (actor `migration:usage.0003`).

Reversible: rows still holding this migration's values go back to the previous defaults (or are deleted, for
models the previous seed did not have); rows edited since are left alone. The values are copied here, not
imported, so that the migration keeps meaning what it meant when it ran.
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = datetime(2024, 1, 1, tzinfo=UTC)
ACTOR = "migration:usage.0003"

# What completions/0003_seed_model_prices wrote: model -> (input, output, max output tokens).
PREVIOUS = {
    "gpt-5": ("1.25", "10.00", 128_000),
    "gpt-5-mini": ("0.25", "2.00", 128_000),
    "gpt-5-nano": ("0.05", "0.40", 128_000),
    "gpt-4.1": ("2.00", "8.00", 32_768),
    "gpt-4.1-mini": ("0.40", "1.60", 32_768),
    "gpt-4.1-nano": ("0.10", "0.40", 32_768),
    "gpt-4o": ("2.50", "10.00", 16_384),
    "gpt-4o-2024-05-13": ("5.00", "15.00", 4_096),
    "gpt-4o-mini": ("0.15", "0.60", 16_384),
    "o3": ("2.00", "8.00", 100_000),
    "o3-pro": ("20.00", "80.00", 100_000),
    "o3-mini": ("1.10", "4.40", 100_000),
    "o4-mini": ("1.10", "4.40", 100_000),
    "o1": ("15.00", "60.00", 100_000),
    "o1-mini": ("1.10", "4.40", 65_536),
    "gpt-4-turbo": ("10.00", "30.00", 4_096),
    "gpt-4": ("30.00", "60.00", 8_192),
    "gpt-3.5-turbo": ("0.50", "1.50", 4_096),
}

# model, input, cached input (None: no prompt caching, the input rate applies), output, max output tokens.
# A row prices its model and, by the longest-prefix rule of usage.pricing, its dated snapshots.
CURRENT = [
    # Chat models.
    ("gpt-5.1", "1.25", "0.125", "10.00", 128_000),
    ("gpt-5", "1.25", "0.125", "10.00", 128_000),
    ("gpt-5-mini", "0.25", "0.025", "2.00", 128_000),
    ("gpt-5-nano", "0.05", "0.005", "0.40", 128_000),
    ("gpt-4.1", "2.00", "0.50", "8.00", 32_768),
    ("gpt-4.1-mini", "0.40", "0.10", "1.60", 32_768),
    ("gpt-4.1-nano", "0.10", "0.025", "0.40", 32_768),
    ("gpt-4o", "2.50", "1.25", "10.00", 16_384),
    ("gpt-4o-2024-05-13", "5.00", None, "15.00", 4_096),
    ("gpt-4o-mini", "0.15", "0.075", "0.60", 16_384),
    ("o3", "2.00", "0.50", "8.00", 100_000),
    ("o3-pro", "20.00", None, "80.00", 100_000),
    ("o3-mini", "1.10", "0.55", "4.40", 100_000),
    ("o4-mini", "1.10", "0.275", "4.40", 100_000),
    ("o1", "15.00", "7.50", "60.00", 100_000),
    ("o1-mini", "1.10", "0.55", "4.40", 65_536),
    ("gpt-4-turbo", "10.00", None, "30.00", 4_096),
    ("gpt-4", "30.00", None, "60.00", 8_192),
    ("gpt-3.5-turbo", "0.50", None, "1.50", 4_096),
    # Legacy completions (without its own row, gpt-3.5-turbo-instruct would take gpt-3.5-turbo's price).
    ("gpt-3.5-turbo-instruct", "1.50", None, "2.00", 4_096),
    ("davinci-002", "2.00", None, "2.00", 16_384),
    ("babbage-002", "0.40", None, "0.40", 16_384),
    # Embeddings: input only; nothing to reserve for output.
    ("text-embedding-3-small", "0.02", None, "0", 0),
    ("text-embedding-3-large", "0.13", None, "0", 0),
    ("text-embedding-ada-002", "0.10", None, "0", 0),
    # Moderations are free; the bare names price the dated snapshots (`omni-moderation-2024-09-26`).
    ("omni-moderation-latest", "0", None, "0", 0),
    ("omni-moderation", "0", None, "0", 0),
    ("text-moderation-latest", "0", None, "0", 0),
    ("text-moderation", "0", None, "0", 0),
]

FIELDS = ("input_per_million", "cached_input_per_million", "output_per_million", "max_output_tokens")


def _values(input_price, cached_price, output_price, max_output) -> dict:
    return {
        "input_per_million": Decimal(input_price),
        "cached_input_per_million": None if cached_price is None else Decimal(cached_price),
        "output_per_million": Decimal(output_price),
        "max_output_tokens": max_output,
    }


def _previous(model: str) -> dict:
    input_price, output_price, max_output = PREVIOUS[model]
    return _values(input_price, None, output_price, max_output)


def _matching(prices, model: str, values: dict):
    """The seeded row of `model` if it still holds exactly `values`."""
    lookups = {"model": model, "effective_from": EFFECTIVE_FROM}
    for name, value in values.items():
        lookups[f"{name}__isnull" if value is None else name] = True if value is None else value
    return prices.filter(**lookups)


def _audit_json(values: dict) -> dict:
    return {name: None if value is None else str(value) for name, value in values.items()}


def _audit(apps, db: str, *, action: str, price_id, model: str, old: dict | None, new: dict | None) -> None:
    PriceAuditEntry = apps.get_model("usage", "PriceAuditEntry")
    old_json, new_json = _audit_json(old or {}), _audit_json(new or {})
    changes = {
        name: [old_json.get(name), new_json.get(name)]
        for name in FIELDS
        if old is None or new is None or old_json.get(name) != new_json.get(name)
    }
    if old is None or new is None:
        stamp = EFFECTIVE_FROM.isoformat()
        changes = {"model": [None, model] if old is None else [model, None], **changes}
        changes["effective_from"] = [None, stamp] if old is None else [stamp, None]
    PriceAuditEntry.objects.using(db).create(actor=ACTOR, action=action, price_id=price_id, model=model, changes=changes)


def seed(apps, schema_editor) -> None:
    ModelPrice = apps.get_model("usage", "ModelPrice")
    db = schema_editor.connection.alias
    prices = ModelPrice.objects.using(db)
    present = set(prices.values_list("model", flat=True))
    for model, *row in CURRENT:
        values = _values(*row)
        if model in PREVIOUS:
            for price_id in _matching(prices, model, _previous(model)).values_list("pk", flat=True):
                prices.filter(pk=price_id).update(**values)
                _audit(apps, db, action="update", price_id=price_id, model=model, old=_previous(model), new=values)
        if model not in present:
            price = prices.create(model=model, effective_from=EFFECTIVE_FROM, **values)
            _audit(apps, db, action="create", price_id=price.pk, model=model, old=None, new=values)


def unseed(apps, schema_editor) -> None:
    ModelPrice = apps.get_model("usage", "ModelPrice")
    db = schema_editor.connection.alias
    prices = ModelPrice.objects.using(db)
    for model, *row in CURRENT:
        values = _values(*row)
        for price_id in list(_matching(prices, model, values).values_list("pk", flat=True)):
            if model in PREVIOUS:
                prices.filter(pk=price_id).update(**_previous(model))
                _audit(apps, db, action="update", price_id=price_id, model=model, old=values, new=_previous(model))
            else:
                prices.filter(pk=price_id).delete()
                _audit(apps, db, action="delete", price_id=price_id, model=model, old=values, new=None)


class Migration(migrations.Migration):
    dependencies = [
        ("usage", "0002_endpoint_cached_tokens_price_audit"),
    ]

    operations = [
        migrations.RunPython(seed, unseed),
    ]
