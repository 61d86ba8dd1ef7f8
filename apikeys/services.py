"""Every write to API keys goes through here: the admin, the management commands, the usage writer and the
tests all call these.

The lifecycle services (create, update, rotate, revoke) are keyword-only, run in one transaction, and write an
`AuditLogEntry` (actor: the admin's username or `command:<name>`). Raw keys are returned to the caller once and
never stored or logged. Every save bumps `KeyGeneration` (apikeys.signals), so each worker of each instance drops
its key cache within `KEY_CACHE_CHECK_SECONDS`.

`api_key_touch_last_used` is the exception on purpose: the usage writer's bookkeeping of when a key was last
used is not a change to the key, so it neither saves (no `KeyGeneration` bump, which would flush every worker's
key cache several times a second under load) nor writes an audit entry.
"""

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import cast

from django.db import DEFAULT_DB_ALIAS, models, transaction
from django.utils import timezone

from .models import APIKey, AuditAction, AuditLogEntry, BudgetPeriod, Team, default_alert_thresholds

# What the admin's rotate form and `rotate_api_key` offer when no grace is given.
DEFAULT_ROTATION_GRACE = timedelta(hours=1)

# The fields `api_key_update` may change, and the model field each one writes.
EDITABLE_FIELDS = {
    "name": "name",
    "owner": "owner",
    "notes": "notes",
    "rpm": "rpm",
    "tpm": "tpm",
    "max_concurrent": "max_concurrent",
    "allowed_models": "allowed_models",
    "hosted_tools": "hosted_tools",
    "expires": "expiry_date",
    "budget_usd": "budget_usd",
    "budget_period": "budget_period",
    "team": "team",
    "alert_thresholds": "alert_thresholds",
}
# A revoked key is final: only what describes it can still change.
EDITABLE_WHEN_REVOKED = frozenset({"owner", "notes"})


# What the columns hold: a 32-bit integer for limits, 12 digits with 4 decimals for a budget.
MAX_LIMIT = 2**31 - 1
MAX_BUDGET_USD = Decimal(10) ** 8


class KeyLookupError(ValueError):
    """No key, or more than one, matches what was given."""


class KeyStateError(ValueError):
    """The key cannot take this step (for example: it is revoked)."""


class KeyInputError(ValueError):
    """A value is not acceptable; `field` names it (a key of EDITABLE_FIELDS), for forms to attach the message."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _audit(*, actor: str, action: str, api_key: APIKey, changes: dict) -> None:
    AuditLogEntry.objects.create(
        actor=actor,
        action=action,
        key_prefix=api_key.prefix,
        key_name=api_key.name,
        team_name=api_key.team.name if api_key.team_id else "",
        changes=changes,
    )


def _jsonable(value):
    """A field value as the audit trail stores it (JSON: datetimes as ISO-8601, amounts as strings)."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, Team):
        return value.name
    return value


def _clean_limit(field: str, value):
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise KeyInputError(field, f"{field} must be a whole number or empty (got {value!r}).")
        if value < 0:
            raise KeyInputError(field, f"{field} must not be negative (got {value}).")
        if value > MAX_LIMIT:
            raise KeyInputError(field, f"{field} must be at most {MAX_LIMIT} (got {value}).")
    return value


def _clean_models(field: str, value) -> list[str]:
    if isinstance(value, str) or not all(isinstance(m, str) for m in value or ()):
        raise KeyInputError(field, "allowed models must be a list of model ids.")
    return sorted({m.strip() for m in (value or ()) if m.strip()})


def _clean_budget(field: str, value):
    if value is not None:
        try:
            value = Decimal(str(value))
        except InvalidOperation:
            raise KeyInputError(field, f"budget must be an amount in USD (got {value!r}).") from None
        if not value.is_finite() or value < 0:
            raise KeyInputError(field, f"budget must not be negative (got {value}).")
        if value >= MAX_BUDGET_USD:
            raise KeyInputError(field, f"budget must be less than {MAX_BUDGET_USD} USD (got {value}).")
    return value


def _clean_period(field: str, value) -> str:
    if value not in BudgetPeriod.values:
        raise KeyInputError(field, f"budget period must be one of {', '.join(BudgetPeriod.values)}.")
    return value


def _clean_thresholds(field: str, value) -> list[int]:
    """Alert thresholds: whole percentages from 1 to 1000, de-duplicated and sorted; None = the defaults."""
    if value is None:
        return default_alert_thresholds()
    if isinstance(value, str) or not isinstance(value, list | tuple):
        raise KeyInputError(field, "alert thresholds must be a list of whole percentages.")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or not 1 <= item <= 1000:
            raise KeyInputError(field, f"alert thresholds must be whole percentages from 1 to 1000 (got {item!r}).")
    return sorted(set(value))


def api_key_clean_fields(**fields) -> dict:
    """Validate and normalise key fields (any subset of EDITABLE_FIELDS); pure, writes nothing.

    Returns the normalised values: names and texts stripped, models de-duplicated and sorted, expiry made
    timezone-aware (UTC when naive), budgets as Decimal. Raises `KeyInputError` naming the first bad field, and
    `TypeError` for a field that does not exist. The admin form calls this too, so that it refuses exactly
    what the services refuse.
    """
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise TypeError(f"Unknown key field(s): {', '.join(sorted(unknown))}.")
    clean = {}
    for field, value in fields.items():
        if field == "name":
            value = (value or "").strip()
            if not value:
                raise KeyInputError(field, "name must not be empty.")
            if len(value) > 50:
                raise KeyInputError(field, "name must be at most 50 characters.")
        elif field == "owner":
            value = (value or "").strip()
            if len(value) > 200:
                raise KeyInputError(field, "owner must be at most 200 characters.")
        elif field == "notes":
            value = value or ""
        elif field in ("rpm", "tpm", "max_concurrent"):
            value = _clean_limit(field, value)
        elif field == "allowed_models":
            value = _clean_models(field, value)
        elif field == "hosted_tools":
            if isinstance(value, str) or not all(isinstance(t, str) for t in value or ()):
                raise KeyInputError(field, "hosted tools must be a list of tool types.")
            value = sorted({t.strip() for t in (value or ()) if t.strip()})
            if any(not t.replace("_", "").isalnum() for t in value):
                raise KeyInputError(field, "a hosted tool type is made of letters, digits and underscores.")
        elif field == "expires":
            if value is not None:
                if not isinstance(value, datetime):
                    raise KeyInputError(field, f"expires must be a date-time (got {value!r}).")
                if timezone.is_naive(value):
                    value = timezone.make_aware(value, UTC)
        elif field == "budget_usd":
            value = _clean_budget(field, value)
        elif field == "budget_period":
            value = _clean_period(field, value)
        elif field == "team":
            if value is not None and not isinstance(value, Team):
                raise KeyInputError(field, f"team must be a team (got {value!r}).")
        elif field == "alert_thresholds":
            value = _clean_thresholds(field, value)
        clean[field] = value
    return clean


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
    hosted_tools: list[str] | None = None,
    expires: datetime | None = None,
    budget_usd: Decimal | None = None,
    budget_period: str = BudgetPeriod.MONTH,
    team: Team | None = None,
    alert_thresholds: list[int] | None = None,
) -> tuple[APIKey, str]:
    """Create a key, in `team` if given; return it with its raw value (shown once). Raises `KeyInputError` (a
    ValueError)."""
    fields = api_key_clean_fields(
        name=name,
        owner=owner,
        notes=notes,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        allowed_models=allowed_models,
        hosted_tools=hosted_tools,
        expires=expires,
        budget_usd=budget_usd,
        budget_period=budget_period,
        team=team,
        alert_thresholds=alert_thresholds,
    )
    created, raw = APIKey.objects.create_key(**{EDITABLE_FIELDS[f]: v for f, v in fields.items()})
    api_key = cast(APIKey, created)
    _audit(
        actor=actor,
        action=AuditAction.CREATE,
        api_key=api_key,
        # What the key was created with, leaving out what was left empty.
        changes={f: [None, _jsonable(v)] for f, v in fields.items() if v not in (None, "", [])},
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
def api_key_update(*, api_key: APIKey, actor: str, **changes) -> APIKey:
    """Change some of a key's EDITABLE_FIELDS (`expires` sets the expiry date); return the key as saved.

    Compares against the stored row (locked), saves only what differs and records `{field: [old, new]}` in
    the audit trail; a call that changes nothing writes nothing. Raises `KeyInputError` for a bad value,
    `TypeError` for an unknown field, and `KeyStateError` when the key is revoked and a field other than owner
    or notes would change.
    """
    clean = api_key_clean_fields(**changes)
    api_key = APIKey.objects.select_for_update().get(pk=api_key.pk)
    diff = {}
    for field, new in clean.items():
        old = getattr(api_key, EDITABLE_FIELDS[field])
        if old != new:  # Decimals compare by value: 5 == 5.0000
            diff[field] = [old, new]
    if not diff:
        return api_key
    if api_key.revoked and set(diff) - EDITABLE_WHEN_REVOKED:
        refused = ", ".join(sorted(set(diff) - EDITABLE_WHEN_REVOKED))
        raise KeyStateError(f"Key {api_key.prefix} is revoked; its {refused} can no longer change.")
    for field, (_, new) in diff.items():
        setattr(api_key, EDITABLE_FIELDS[field], new)
    api_key.save(update_fields=[EDITABLE_FIELDS[f] for f in diff] + ["updated_at"])
    _audit(
        actor=actor,
        action=AuditAction.UPDATE,
        api_key=api_key,
        changes={f: [_jsonable(old), _jsonable(new)] for f, (old, new) in diff.items()},
    )
    return api_key


def _grace_seconds(grace: timedelta | float | int) -> float:
    seconds = grace.total_seconds() if isinstance(grace, timedelta) else float(grace)
    if seconds != seconds or seconds < 0:  # NaN or negative
        raise KeyInputError("grace", f"grace must be zero or more seconds (got {grace!r}).")
    return seconds


def api_key_rotation_check(*, api_key: APIKey, grace: timedelta | float | int, now: datetime | None = None):
    """Why `api_key_rotate` would refuse this key and grace, without changing anything.

    Returns the moment the old key would stop working. Raises `KeyInputError` for a negative grace and
    `KeyStateError` for a revoked key, a key that was rotated already (it has a successor) or one no longer
    usable (expired, or its grace ended). Dry runs call this.
    """
    seconds = _grace_seconds(grace)
    now = now or timezone.now()
    if api_key.revoked:
        raise KeyStateError(f"Key {api_key.prefix} is revoked; a revoked key cannot be rotated.")
    successor = APIKey.objects.filter(predecessor_id=api_key.pk).values_list("prefix", flat=True).first()
    if successor is not None:
        raise KeyStateError(f"Key {api_key.prefix} was already rotated; its successor is {successor}.")
    if not api_key.is_usable(now):
        raise KeyStateError(f"Key {api_key.prefix} has expired; create a new key instead.")
    grace_until = now + timedelta(seconds=seconds)
    return min(t for t in (grace_until, api_key.expiry_date) if t is not None)


@transaction.atomic
def api_key_rotate(*, api_key: APIKey, grace: timedelta | float | int, actor: str) -> tuple[APIKey, str]:
    """Replace a key with a successor; return the successor and its raw value (shown once).

    The successor copies the name, owner, notes, limits, allowed models, hosted tools, budget, expiry, team and
    alert thresholds, and records its predecessor. The old key keeps working until now + `grace` (a timedelta or
    seconds; 0 stops it at once),
    or its own expiry if that comes first. Raises what `api_key_rotation_check` raises; nothing changes then.
    """
    api_key = APIKey.objects.select_for_update().get(pk=api_key.pk)
    now = timezone.now()
    api_key_rotation_check(api_key=api_key, grace=grace, now=now)
    old_grace_until = api_key.grace_until
    api_key.grace_until = now + timedelta(seconds=_grace_seconds(grace))
    api_key.save(update_fields=["grace_until", "updated_at"])
    created, raw = APIKey.objects.create_key(
        name=api_key.name,
        owner=api_key.owner,
        notes=api_key.notes,
        rpm=api_key.rpm,
        tpm=api_key.tpm,
        max_concurrent=api_key.max_concurrent,
        allowed_models=list(api_key.allowed_models or []),
        hosted_tools=list(api_key.hosted_tools or []),
        expiry_date=api_key.expiry_date,
        budget_usd=api_key.budget_usd,
        budget_period=api_key.budget_period,
        team=api_key.team,
        alert_thresholds=list(api_key.alert_thresholds or []),
        predecessor=api_key,
    )
    successor = cast(APIKey, created)
    _audit(
        actor=actor,
        action=AuditAction.ROTATE,
        api_key=api_key,
        changes={
            "successor": [None, successor.prefix],
            "grace_until": [_jsonable(old_grace_until), _jsonable(api_key.grace_until)],
            "grace_seconds": _grace_seconds(grace),
        },
    )
    _audit(
        actor=actor,
        action=AuditAction.CREATE,
        api_key=successor,
        changes={"predecessor": [None, api_key.prefix]},
    )
    return successor, raw


@transaction.atomic
def api_key_revoke(*, api_key: APIKey, actor: str) -> APIKey:
    """Revoke a key for good. Every instance refuses it within KEY_CACHE_CHECK_SECONDS. Revoking a revoked key
    raises KeyStateError and changes nothing."""
    api_key = APIKey.objects.select_for_update().get(pk=api_key.pk)
    if api_key.revoked:
        raise KeyStateError(f"Key {api_key.prefix} is already revoked.")
    api_key.revoked = True
    api_key.revoked_at = timezone.now()
    api_key.save(update_fields=["revoked", "revoked_at", "updated_at"])
    _audit(actor=actor, action=AuditAction.REVOKE, api_key=api_key, changes={"revoked": [False, True]})
    return api_key


def api_key_touch_last_used(*, last_used: Mapping[str, datetime], using: str = DEFAULT_DB_ALIAS) -> int:
    """Move each key's `last_used_at` forward to the time given for it ({key primary key: aware datetime}).

    One UPDATE for the whole mapping, through `QuerySet.update`: no `post_save`, so no `KeyGeneration` bump and no
    key-cache flush on any worker; `updated_at` (auto_now) is not touched either. A key whose `last_used_at` is
    already at or after the time given is left alone, so concurrent writers (several workers, several instances)
    never move it backwards; unknown keys are ignored. Returns the number of keys updated.
    """
    if not last_used:
        return 0
    needs_update = models.Q()
    newer = []
    for pk, when in last_used.items():
        needs_update |= models.Q(pk=pk) & (models.Q(last_used_at__isnull=True) | models.Q(last_used_at__lt=when))
        newer.append(models.When(pk=pk, then=models.Value(when)))
    return (
        APIKey.objects.using(using)
        .filter(needs_update)
        .update(last_used_at=models.Case(*newer, output_field=models.DateTimeField()))
    )


# TEAMS

# The fields `team_update` may change (the model's own names).
TEAM_FIELDS = (
    "name",
    "notes",
    "rpm",
    "tpm",
    "max_concurrent",
    "allowed_models",
    "budget_usd",
    "budget_period",
    "alert_thresholds",
)


class TeamLookupError(ValueError):
    """No team has that name."""


def team_clean_fields(**fields) -> dict:
    """Validate and normalise team fields (any subset of TEAM_FIELDS); pure. Raises `KeyInputError` naming the
    first bad field, `TypeError` for a field that does not exist."""
    unknown = set(fields) - set(TEAM_FIELDS)
    if unknown:
        raise TypeError(f"Unknown team field(s): {', '.join(sorted(unknown))}.")
    clean = {}
    for field, value in fields.items():
        if field == "name":
            value = (value or "").strip()
            if not value:
                raise KeyInputError(field, "name must not be empty.")
            if len(value) > 100:
                raise KeyInputError(field, "name must be at most 100 characters.")
        elif field == "notes":
            value = value or ""
        elif field in ("rpm", "tpm", "max_concurrent"):
            value = _clean_limit(field, value)
        elif field == "allowed_models":
            value = _clean_models(field, value)
        elif field == "budget_usd":
            value = _clean_budget(field, value)
        elif field == "budget_period":
            value = _clean_period(field, value)
        elif field == "alert_thresholds":
            value = _clean_thresholds(field, value)
        clean[field] = value
    return clean


def _team_audit(*, actor: str, action: str, team: Team, changes: dict) -> None:
    AuditLogEntry.objects.create(actor=actor, action=action, key_prefix="", team_name=team.name, changes=changes)


@transaction.atomic
def team_create(
    *,
    name: str,
    actor: str,
    notes: str = "",
    rpm: int | None = None,
    tpm: int | None = None,
    max_concurrent: int | None = None,
    allowed_models: list[str] | None = None,
    budget_usd: Decimal | None = None,
    budget_period: str = BudgetPeriod.MONTH,
    alert_thresholds: list[int] | None = None,
) -> Team:
    """Create a team (audited). Raises `KeyInputError` for a bad value or a name already taken."""
    fields = team_clean_fields(
        name=name,
        notes=notes,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        allowed_models=allowed_models,
        budget_usd=budget_usd,
        budget_period=budget_period,
        alert_thresholds=alert_thresholds,
    )
    if Team.objects.filter(name=fields["name"]).exists():
        raise KeyInputError("name", f"A team named {fields['name']!r} exists already.")
    team = Team.objects.create(**fields)
    _team_audit(
        actor=actor,
        action=AuditAction.CREATE,
        team=team,
        changes={f: [None, _jsonable(v)] for f, v in fields.items() if v not in (None, "", [])},
    )
    return team


@transaction.atomic
def team_update(*, team: Team, actor: str, **changes) -> Team:
    """Change some of a team's TEAM_FIELDS; return it as saved. Records `{field: [old, new]}`; a call that changes
    nothing writes nothing. Every key of the team sees the change within `KEY_CACHE_CHECK_SECONDS`."""
    clean = team_clean_fields(**changes)
    team = Team.objects.select_for_update().get(pk=team.pk)
    if "name" in clean and clean["name"] != team.name and Team.objects.filter(name=clean["name"]).exists():
        raise KeyInputError("name", f"A team named {clean['name']!r} exists already.")
    diff = {f: [getattr(team, f), v] for f, v in clean.items() if getattr(team, f) != v}
    if not diff:
        return team
    for field, (_, new) in diff.items():
        setattr(team, field, new)
    team.save(update_fields=[*diff, "updated_at"])
    _team_audit(
        actor=actor,
        action=AuditAction.UPDATE,
        team=team,
        changes={f: [_jsonable(old), _jsonable(new)] for f, (old, new) in diff.items()},
    )
    return team


def team_find(name: str) -> Team:
    """The team named `name` (exactly, after trimming). Raises TeamLookupError."""
    team = Team.objects.filter(name=(name or "").strip()).first()
    if team is None:
        raise TeamLookupError(f"No team is named {name!r}.")
    return team
