"""Every write to model prices goes through here: the admin, commands, migrations' callers and tests.

Each service is keyword-only, runs in one transaction, validates the row as the admin form would
(`full_clean`: no negative rate, one row per model and `effective_from`), and writes an append-only
`PriceAuditEntry` (actor: the admin's username or `command:<name>`; changes as `{field: [old, new]}`).

Workers pick a change up on their next price-table reload (`PRICE_CACHE_SECONDS`, see `usage.pricing`); each
usage record keeps the cost it was charged.
"""

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
)


class PriceChanges(TypedDict, total=False):
    """What `model_price_update` may change (any subset)."""

    model: str
    input_per_million: Decimal
    cached_input_per_million: Decimal | None
    output_per_million: Decimal
    max_output_tokens: int
    effective_from: datetime


def _jsonable(value: Any) -> Any:
    """A field value as the audit trail stores it (JSON: amounts as strings, times as ISO-8601)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    return value


def _snapshot(price: ModelPrice) -> dict[str, Any]:
    return {name: _jsonable(getattr(price, name)) for name in PRICE_FIELDS}


def _audit(*, actor: str, action: str, price: ModelPrice, changes: dict[str, list[Any]], price_id: int | None) -> None:
    PriceAuditEntry.objects.create(actor=actor, action=action, price_id=price_id, model=price.model, changes=changes)


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
    )
    if effective_from is not None:
        price.effective_from = effective_from
    price.full_clean()
    price.save()
    price.refresh_from_db()  # the values as stored (decimal places), for the audit trail and the caller
    changes = {name: [None, value] for name, value in _snapshot(price).items()}
    _audit(actor=actor, action=PriceAuditAction.CREATE, price=price, changes=changes, price_id=price.pk)
    return price


@transaction.atomic
def model_price_update(*, price: ModelPrice, actor: str, **changes: Unpack[PriceChanges]) -> ModelPrice:
    """Change fields of a price row and audit what actually changed (`{field: [old, new]}`; nothing changed:
    nothing written, no entry). Returns the row as stored.

    The old values are read from the database under a row lock, whatever `price` holds in memory (the admin
    passes an instance its form already modified). Raises `TypeError` for a field not in `PriceChanges` and
    `ValidationError` (nothing written) as `model_price_create` does; `ModelPrice.DoesNotExist` if the row is gone.
    """
    unknown = set(changes) - set(PRICE_FIELDS)
    if unknown:
        raise TypeError(f"model_price_update() got unexpected fields: {', '.join(sorted(unknown))}")
    current = ModelPrice.objects.select_for_update().get(pk=price.pk)
    before = _snapshot(current)
    for name, value in changes.items():
        setattr(current, name, value)
    current.full_clean()
    current.save()
    current.refresh_from_db()
    after = _snapshot(current)
    diff = {name: [before[name], after[name]] for name in PRICE_FIELDS if before[name] != after[name]}
    if diff:
        _audit(actor=actor, action=PriceAuditAction.UPDATE, price=current, changes=diff, price_id=current.pk)
    return current


@transaction.atomic
def model_price_delete(*, price: ModelPrice, actor: str) -> None:
    """Delete a price row and audit it (`changes`: `{field: [old, None]}`). Records already written keep their
    cost; requests from now on take the model's other rows, or the fallback price."""
    current = ModelPrice.objects.select_for_update().get(pk=price.pk)
    changes = {name: [value, None] for name, value in _snapshot(current).items()}
    price_id = current.pk
    current.delete()
    _audit(actor=actor, action=PriceAuditAction.DELETE, price=current, changes=changes, price_id=price_id)


# HOSTED TOOL PRICES (the same audit trail, `table` = `tool`, `model` naming the tool)

TOOL_PRICE_FIELDS = ("tool", "per_call_usd", "effective_from")


def _tool_snapshot(price: ToolPrice) -> dict[str, Any]:
    return {name: _jsonable(getattr(price, name)) for name in TOOL_PRICE_FIELDS}


def _tool_audit(*, actor: str, action: str, price: ToolPrice, changes: dict, price_id: int | None) -> None:
    PriceAuditEntry.objects.create(
        actor=actor, action=action, table="tool", price_id=price_id, model=price.tool, changes=changes
    )


@transaction.atomic
def tool_price_create(
    *, actor: str, tool: str, per_call_usd: Decimal, effective_from: datetime | None = None
) -> ToolPrice:
    """Add a hosted tool's price per call (`tool`: its call item type, `web_search_call`) and audit it. Raises
    `ValidationError` (nothing written) for a negative price or a duplicate (tool, effective_from)."""
    price = ToolPrice(tool=tool, per_call_usd=per_call_usd)
    if effective_from is not None:
        price.effective_from = effective_from
    price.full_clean()
    price.save()
    price.refresh_from_db()
    changes = {name: [None, value] for name, value in _tool_snapshot(price).items()}
    _tool_audit(actor=actor, action=PriceAuditAction.CREATE, price=price, changes=changes, price_id=price.pk)
    return price


@transaction.atomic
def tool_price_update(*, price: ToolPrice, actor: str, **changes: Any) -> ToolPrice:
    """Change a tool price row and audit what changed (as `model_price_update`)."""
    unknown = set(changes) - set(TOOL_PRICE_FIELDS)
    if unknown:
        raise TypeError(f"tool_price_update() got unexpected fields: {', '.join(sorted(unknown))}")
    current = ToolPrice.objects.select_for_update().get(pk=price.pk)
    before = _tool_snapshot(current)
    for name, value in changes.items():
        setattr(current, name, value)
    current.full_clean()
    current.save()
    current.refresh_from_db()
    after = _tool_snapshot(current)
    diff = {name: [before[name], after[name]] for name in TOOL_PRICE_FIELDS if before[name] != after[name]}
    if diff:
        _tool_audit(actor=actor, action=PriceAuditAction.UPDATE, price=current, changes=diff, price_id=current.pk)
    return current


@transaction.atomic
def tool_price_delete(*, price: ToolPrice, actor: str) -> None:
    """Delete a tool price row and audit it; the tool's calls then cost its other rows' price, or nothing."""
    current = ToolPrice.objects.select_for_update().get(pk=price.pk)
    changes = {name: [value, None] for name, value in _tool_snapshot(current).items()}
    price_id = current.pk
    current.delete()
    _tool_audit(actor=actor, action=PriceAuditAction.DELETE, price=current, changes=changes, price_id=price_id)
