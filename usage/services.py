"""Every write to model prices goes through here: the admin, commands, migrations' callers and tests.

Each service is keyword-only, runs in one transaction, validates the row as the admin form would
(`full_clean`: no negative rate, one row per model and `effective_from`), and writes an append-only
`PriceAuditEntry` (actor: the admin's username or `command:<name>`; changes as `{field: [old, new]}`).

Workers pick a change up on their next price-table reload (`PRICE_CACHE_SECONDS`, see `usage.pricing`); each
usage record keeps the cost it was charged.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypedDict, Unpack

from django.db import transaction

from .models import ModelPrice, PriceAuditAction, PriceAuditEntry, ToolPrice

# The fields of a price that the services set, in the order the audit trail lists them.
PRICE_FIELDS = (
    "model",
    "input_per_million",
    "cached_input_per_million",
    "output_per_million",
    "max_output_tokens",
    "effective_from",
    "upstream",
)


class PriceChanges(TypedDict, total=False):
    """What `model_price_update` may change (any subset)."""

    model: str
    input_per_million: Decimal
    cached_input_per_million: Decimal | None
    output_per_million: Decimal
    max_output_tokens: int
    effective_from: datetime
    upstream: str


def _jsonable(value: Any) -> Any:
    """A field value as the audit trail stores it (JSON: amounts as strings, times as ISO-8601)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


@dataclass(frozen=True)
class _PriceTable:
    """One audited price table: its model, its audited fields, its `PriceAuditEntry.table`, and the field that
    names what is priced (stored as the entry's `model`)."""

    model: Any
    fields: tuple[str, ...]
    table: str
    name_field: str

    def snapshot(self, price: Any) -> dict[str, Any]:
        return {name: _jsonable(getattr(price, name)) for name in self.fields}

    def audit(self, *, actor: str, action: str, price: Any, changes: dict, price_id: int | None) -> None:
        PriceAuditEntry.objects.create(
            actor=actor,
            action=action,
            table=self.table,
            price_id=price_id,
            model=getattr(price, self.name_field),
            changes=changes,
        )

    def created(self, *, price: Any, actor: str) -> Any:
        """Validate and save a new row, and audit it (`{field: [None, new]}`)."""
        price.full_clean()
        price.save()
        price.refresh_from_db()
        changes = {name: [None, value] for name, value in self.snapshot(price).items()}
        self.audit(actor=actor, action=PriceAuditAction.CREATE, price=price, changes=changes, price_id=price.pk)
        return price

    def update(self, *, price: Any, actor: str, changes: dict, service: str) -> Any:
        """See `model_price_update`."""
        unknown = set(changes) - set(self.fields)
        if unknown:
            raise TypeError(f"{service}() got unexpected fields: {', '.join(sorted(unknown))}")
        current = self.model.objects.select_for_update().get(pk=price.pk)
        before = self.snapshot(current)
        for name, value in changes.items():
            setattr(current, name, value)
        current.full_clean()
        current.save()
        current.refresh_from_db()
        after = self.snapshot(current)
        diff = {name: [before[name], after[name]] for name in self.fields if before[name] != after[name]}
        if diff:
            self.audit(actor=actor, action=PriceAuditAction.UPDATE, price=current, changes=diff, price_id=current.pk)
        return current

    def delete(self, *, price: Any, actor: str) -> None:
        """Delete a row and audit it (`{field: [old, None]}`)."""
        current = self.model.objects.select_for_update().get(pk=price.pk)
        changes = {name: [value, None] for name, value in self.snapshot(current).items()}
        price_id = current.pk
        current.delete()
        self.audit(actor=actor, action=PriceAuditAction.DELETE, price=current, changes=changes, price_id=price_id)


_MODEL_PRICES = _PriceTable(model=ModelPrice, fields=PRICE_FIELDS, table="model", name_field="model")


@transaction.atomic
def model_price_create(
    *,
    actor: str,
    model: str,
    input_per_million: Decimal,
    output_per_million: Decimal,
    cached_input_per_million: Decimal | None = None,
    max_output_tokens: int = 16384,
    effective_from: datetime | None = None,
    upstream: str = "",
) -> ModelPrice:
    """Add a price row (from `effective_from`, default now) and audit it (`changes`: `{field: [None, new]}`).

    Raises `django.core.exceptions.ValidationError` (nothing written) for a negative rate or a row that already
    exists for the same model and `effective_from`.
    """
    price = ModelPrice(
        model=model,
        input_per_million=input_per_million,
        cached_input_per_million=cached_input_per_million,
        output_per_million=output_per_million,
        max_output_tokens=max_output_tokens,
        upstream=upstream,
    )
    if effective_from is not None:
        price.effective_from = effective_from
    # Saved, then read back as stored (decimal places), for the audit trail and the caller.
    return _MODEL_PRICES.created(price=price, actor=actor)


@transaction.atomic
def model_price_update(*, price: ModelPrice, actor: str, **changes: Unpack[PriceChanges]) -> ModelPrice:
    """Change fields of a price row and audit what actually changed (`{field: [old, new]}`; nothing changed:
    nothing written, no entry). Returns the row as stored.

    The old values are read from the database under a row lock, whatever `price` holds in memory (the admin
    passes an instance its form already modified). Raises `TypeError` for a field not in `PriceChanges` and
    `ValidationError` (nothing written) as `model_price_create` does; `ModelPrice.DoesNotExist` if the row is gone.
    """
    return _MODEL_PRICES.update(price=price, actor=actor, changes=dict(changes), service="model_price_update")


@transaction.atomic
def model_price_delete(*, price: ModelPrice, actor: str) -> None:
    """Delete a price row and audit it (`changes`: `{field: [old, None]}`). Records already written keep their
    cost; requests from now on take the model's other rows, or the fallback price."""
    _MODEL_PRICES.delete(price=price, actor=actor)


# HOSTED TOOL PRICES (the same audit trail, `table` = `tool`, `model` naming the tool)

TOOL_PRICE_FIELDS = ("tool", "per_call_usd", "effective_from")


_TOOL_PRICES = _PriceTable(model=ToolPrice, fields=TOOL_PRICE_FIELDS, table="tool", name_field="tool")


@transaction.atomic
def tool_price_create(
    *, actor: str, tool: str, per_call_usd: Decimal, effective_from: datetime | None = None
) -> ToolPrice:
    """Add a hosted tool's price per call (`tool`: its call item type, `web_search_call`) and audit it. Raises
    `ValidationError` (nothing written) for a negative price or a duplicate (tool, effective_from)."""
    price = ToolPrice(tool=tool, per_call_usd=per_call_usd)
    if effective_from is not None:
        price.effective_from = effective_from
    return _TOOL_PRICES.created(price=price, actor=actor)


@transaction.atomic
def tool_price_update(*, price: ToolPrice, actor: str, **changes: Any) -> ToolPrice:
    """Change a tool price row and audit what changed (as `model_price_update`)."""
    return _TOOL_PRICES.update(price=price, actor=actor, changes=changes, service="tool_price_update")


@transaction.atomic
def tool_price_delete(*, price: ToolPrice, actor: str) -> None:
    """Delete a tool price row and audit it; the tool's calls then cost its other rows' price, or nothing."""
    _TOOL_PRICES.delete(price=price, actor=actor)
