"""Every write to API keys goes through here: the admin, the management commands and the tests all call these.

Each service is keyword-only, runs in one transaction, and writes an `AuditLogEntry`. Raw keys are returned
to the caller once and never stored or logged.
"""

from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from .models import APIKey, AuditAction, AuditLogEntry, BudgetPeriod


class KeyLookupError(ValueError):
    """No key, or more than one, matches what was given."""


class KeyStateError(ValueError):
    """The key cannot take this step (for example: it is revoked)."""


def _audit(*, actor: str, action: str, api_key: APIKey, changes: dict) -> None:
    AuditLogEntry.objects.create(
        actor=actor, action=action, key_prefix=api_key.prefix, key_name=api_key.name, changes=changes
    )


def _validate_limits(**limits) -> None:
    for name, value in limits.items():
        if value is not None and value < 0:
            raise ValueError(f"{name} must not be negative (got {value}).")


@transaction.atomic
def api_key_create(
    *,
    name: str,
    actor: str,
    owner: str = "",
    notes: str = "",
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrent: int | None = None,
    allowed_models: list[str] | None = None,
    expires: datetime | None = None,
    budget_usd: Decimal | None = None,
    budget_period: str = BudgetPeriod.MONTH,
) -> tuple[APIKey, str]:
    """Create a key; return it with its raw value (shown once). Raises ValueError on bad input."""
    name = (name or "").strip()
    if not name:
        raise ValueError("name must not be empty.")
    if len(name) > 50:
        raise ValueError("name must be at most 50 characters.")
    _validate_limits(rpm=rpm, tpm=tpm, max_concurrent=max_concurrent, budget_usd=budget_usd)
    if budget_period not in BudgetPeriod.values:
        raise ValueError(f"budget period must be one of {', '.join(BudgetPeriod.values)}.")
    if expires is not None and timezone.is_naive(expires):
        expires = timezone.make_aware(expires, timezone.utc)
    models = sorted({m.strip() for m in (allowed_models or []) if m.strip()})
    api_key, raw = APIKey.objects.create_key(
        name=name,
        owner=owner,
        notes=notes,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        allowed_models=models,
        expiry_date=expires,
        budget_usd=budget_usd,
        budget_period=budget_period,
    )
    _audit(
        actor=actor,
        action=AuditAction.CREATE,
        api_key=api_key,
        changes={
            "rpm": rpm,
            "tpm": tpm,
            "max_concurrent": max_concurrent,
            "allowed_models": models,
            "expires": expires.isoformat() if expires else None,
            "budget_usd": str(budget_usd) if budget_usd is not None else None,
            "budget_period": budget_period,
        },
    )
    return api_key, raw


def api_key_find(key_or_prefix: str) -> APIKey:
    """The key matching a raw key (`prefix.secret`, verified) or a bare prefix. Raises KeyLookupError."""
    value = (key_or_prefix or "").strip()
    prefix, dot, _ = value.partition(".")
    api_key = APIKey.objects.filter(prefix=prefix).first() if prefix else None
    if api_key is None or (dot and not api_key.is_valid(value)):
        raise KeyLookupError("No API key matches that key or prefix.")
    return api_key


@transaction.atomic
def api_key_revoke(*, api_key: APIKey, actor: str) -> APIKey:
    """Revoke a key for good. Every instance refuses it within KEY_CACHE_CHECK_SECONDS. Idempotent errors:
    revoking a revoked key raises KeyStateError and changes nothing."""
    api_key = APIKey.objects.select_for_update().get(pk=api_key.pk)
    if api_key.revoked:
        raise KeyStateError(f"Key {api_key.prefix} is already revoked.")
    api_key.revoked = True
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked", "revoked_at", "updated_at"])
    _audit(actor=actor, action=AuditAction.REVOKE, api_key=api_key, changes={"revoked": True})
    return api_key
