"""Default prices of hosted tool calls, as OpenAI lists them (USD per call; editable in the admin, audited).

* `web_search_call`: 10 USD per 1,000 calls. `file_search_call`: 2.50 USD per 1,000 calls.
* `code_interpreter_call`: 0.03 USD, OpenAI's price of a container session, charged per call (a conservative
  reading: several calls may share one session).
* `image_generation_call`: 0.04 USD, about one 1024x1024 image at medium quality (the image's tokens are
  billed by the image model; adjust to your usage).

A tool without a row costs nothing per call. Reversible: rows still holding these values are deleted.
"""

from datetime import UTC, datetime
from decimal import Decimal

from django.db import migrations

EFFECTIVE_FROM = datetime(2024, 1, 1, tzinfo=UTC)
ACTOR = "migration:usage.0005"
PRICES = [
    ("web_search_call", "0.010000"),
    ("file_search_call", "0.002500"),
    ("code_interpreter_call", "0.030000"),
    ("image_generation_call", "0.040000"),
]


def seed(apps, schema_editor):
    ToolPrice = apps.get_model("usage", "ToolPrice")
    PriceAuditEntry = apps.get_model("usage", "PriceAuditEntry")
    for tool, per_call in PRICES:
        if ToolPrice.objects.filter(tool=tool).exists():
            continue
        row = ToolPrice.objects.create(tool=tool, per_call_usd=Decimal(per_call), effective_from=EFFECTIVE_FROM)
        PriceAuditEntry.objects.create(
            actor=ACTOR,
            action="create",
            table="tool",
            price_id=row.pk,
            model=tool,
            changes={
                "tool": [None, tool],
                "per_call_usd": [None, per_call],
                "effective_from": [None, EFFECTIVE_FROM.isoformat()],
            },
        )


def unseed(apps, schema_editor):
    ToolPrice = apps.get_model("usage", "ToolPrice")
    for tool, per_call in PRICES:
        ToolPrice.objects.filter(tool=tool, per_call_usd=Decimal(per_call), effective_from=EFFECTIVE_FROM).delete()


class Migration(migrations.Migration):
    dependencies = [("usage", "0004_tool_prices_reasoning_tokens")]

    operations = [migrations.RunPython(seed, unseed)]
