"""usage/0003 seeds OpenAI's list prices with cached-input rates: it updates the rows the previous seed wrote
only while they still hold its values, adds models that have no row, audits what it does, and reverses cleanly.

Runs the real migration backwards and forwards (`migrate usage 0002`, then `migrate usage`).
"""

import importlib
from datetime import UTC, datetime
from decimal import Decimal

from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from usage.models import ModelPrice, PriceAuditEntry

SEED = importlib.import_module("usage.migrations.0003_openai_prices_with_cached_input")
SEEDED_AT = datetime(2024, 1, 1, tzinfo=UTC)


def rates(model: str) -> tuple:
    # Only these columns: the test runs at migration 0002 too, whose table lacks later columns (`upstream`).
    return ModelPrice.objects.values_list(
        "input_per_million", "cached_input_per_million", "output_per_million", "max_output_tokens"
    ).get(model=model, effective_from=SEEDED_AT)


def price_at_0002(**fields) -> None:
    """A row written as migration 0002's model knows it (the current model names columns 0002 lacks)."""
    state = MigrationExecutor(connection).loader.project_state(("usage", "0002_endpoint_cached_tokens_price_audit"))
    state.apps.get_model("usage", "ModelPrice").objects.create(**fields)


def test_the_seed_respects_edits_adds_missing_models_and_reverses(transactional_db):
    call_command("migrate", "usage", "0002", verbosity=0)
    # As the previous seed left it (whatever an earlier test's flush left): no cached rates, no embedding or
    # moderation rows.
    ModelPrice.objects.all().delete()
    for model, (input_rate, output_rate, max_output) in SEED.PREVIOUS.items():
        price_at_0002(
            model=model, input_per_million=Decimal(input_rate), output_per_million=Decimal(output_rate),
            max_output_tokens=max_output, effective_from=SEEDED_AT,
        )  # fmt: skip
    assert rates("gpt-4o") == (Decimal("2.50"), None, Decimal("10.00"), 16_384)
    assert not ModelPrice.objects.filter(model__startswith="text-embedding").exists()
    # An admin's changes: an edited default, a deleted one, and a later row of a model of their own.
    ModelPrice.objects.filter(model="gpt-4o-mini").update(input_per_million=Decimal("0.20"))
    ModelPrice.objects.filter(model="o1").delete()
    price_at_0002(
        model="gpt-4.1", input_per_million=Decimal("1.00"), output_per_million=Decimal("4.00"),
        effective_from=datetime(2026, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    price_at_0002(
        model="text-embedding-3-small", input_per_million=Decimal("0.05"), output_per_million=Decimal(0),
        effective_from=datetime(2025, 1, 1, tzinfo=UTC),
    )  # fmt: skip
    PriceAuditEntry.objects.all().delete()

    call_command("migrate", "usage", verbosity=0)
    assert rates("gpt-4o") == (Decimal("2.50"), Decimal("1.25"), Decimal("10.00"), 16_384)
    assert rates("gpt-5-nano")[1] == Decimal("0.005")
    assert rates("gpt-4.1")[1] == Decimal("0.50")  # the seeded row; the admin's later row is untouched
    assert ModelPrice.objects.get(model="gpt-4.1", effective_from__year=2026).cached_input_per_million is None
    assert rates("gpt-4o-mini") == (Decimal("0.20"), None, Decimal("0.60"), 16_384)  # edited: left alone
    assert rates("o1") == (Decimal("15.00"), Decimal("7.50"), Decimal("60.00"), 100_000)  # no row: added
    assert rates("text-embedding-3-large") == (Decimal("0.13"), None, Decimal(0), 0)
    assert ModelPrice.objects.filter(model="text-embedding-3-small").count() == 1  # had a row: not added
    assert rates("omni-moderation-latest") == (Decimal(0), None, Decimal(0), 0)
    update = PriceAuditEntry.objects.get(model="gpt-4o", action="update")
    assert update.actor == "migration:usage.0003"
    assert update.changes == {"cached_input_per_million": [None, "1.25"]}
    assert PriceAuditEntry.objects.filter(model="text-embedding-3-large", action="create").count() == 1
    assert not PriceAuditEntry.objects.filter(model="gpt-4o-mini").exists()

    ModelPrice.objects.filter(model="gpt-4o", effective_from=SEEDED_AT).update(output_per_million=Decimal("9"))
    call_command("migrate", "usage", "0002", verbosity=0)
    assert rates("gpt-5") == (Decimal("1.25"), None, Decimal("10.00"), 128_000)  # back to the previous seed
    assert rates("gpt-4o") == (Decimal("2.50"), Decimal("1.25"), Decimal("9.0000"), 16_384)  # edited since
    assert rates("gpt-4o-mini") == (Decimal("0.20"), None, Decimal("0.60"), 16_384)
    assert not ModelPrice.objects.filter(model="text-embedding-3-large").exists()
    assert ModelPrice.objects.filter(model="text-embedding-3-small").count() == 1  # the admin's row
    assert rates("o1") == (Decimal("15.00"), None, Decimal("60.00"), 100_000)

    call_command("migrate", "usage", verbosity=0)  # and forwards again: the same result as the first time
    assert rates("gpt-5") == (Decimal("1.25"), Decimal("0.125"), Decimal("10.00"), 128_000)
    assert rates("text-embedding-3-large") == (Decimal("0.13"), None, Decimal(0), 0)


def test_every_model_of_the_previous_seed_is_still_priced():
    current = {model for model, *_ in SEED.CURRENT}
    assert set(SEED.PREVIOUS) <= current
    for model, input_rate, cached_rate, _output, _max in SEED.CURRENT:
        if cached_rate is not None:
            assert Decimal(cached_rate) < Decimal(input_rate), model
