"""Reading keys: a key's status, and lists of keys by status. Nothing here writes.

A key is in exactly one status at a time:

* `revoked`: revoked by an admin or a command (final);
* `expired`: past its expiry date, or past the end of its grace period after a rotation;
* `in_grace`: rotated, still working until `grace_until`;
* `expiring_soon`: working, and its expiry date is within `KEY_EXPIRING_SOON_DAYS`;
* `active`: working, none of the above.

"Usable" means the key authenticates right now: active, expiring soon or in grace.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db.models import Q, QuerySet
from django.utils import timezone

from .models import APIKey, Team


class KeyStatus:
    ACTIVE = "active"
    EXPIRING_SOON = "expiring_soon"
    IN_GRACE = "in_grace"
    EXPIRED = "expired"
    REVOKED = "revoked"

    LABELS = {
        ACTIVE: "active",
        EXPIRING_SOON: "expiring soon",
        IN_GRACE: "in grace",
        EXPIRED: "expired",
        REVOKED: "revoked",
    }
    USABLE = frozenset({ACTIVE, EXPIRING_SOON, IN_GRACE})


def expiring_soon_window() -> timedelta:
    return timedelta(days=getattr(settings, "KEY_EXPIRING_SOON_DAYS", 7))


def api_key_status(api_key: APIKey, *, now: datetime | None = None) -> str:
    """The key's status (a KeyStatus value) at `now` (default: the current time)."""
    now = now or timezone.now()
    if api_key.revoked:
        return KeyStatus.REVOKED
    if not api_key.is_usable(now):
        return KeyStatus.EXPIRED
    if api_key.grace_until is not None:
        return KeyStatus.IN_GRACE
    if api_key.expiry_date is not None and api_key.expiry_date <= now + expiring_soon_window():
        return KeyStatus.EXPIRING_SOON
    return KeyStatus.ACTIVE


def api_key_status_q(status: str, *, now: datetime | None = None) -> Q:
    """A filter matching the keys in `status`: a KeyStatus value, or "usable" (active + expiring soon + in
    grace). Agrees with `api_key_status` for every key. Raises ValueError for anything else."""
    now = now or timezone.now()
    not_expired = (Q(expiry_date__isnull=True) | Q(expiry_date__gt=now)) & (
        Q(grace_until__isnull=True) | Q(grace_until__gt=now)
    )
    usable = Q(revoked=False) & not_expired
    if status == "usable":
        return usable
    if status == KeyStatus.REVOKED:
        return Q(revoked=True)
    if status == KeyStatus.EXPIRED:
        return Q(revoked=False) & ~not_expired
    if status == KeyStatus.IN_GRACE:
        return usable & Q(grace_until__isnull=False)
    soon = Q(expiry_date__isnull=False, expiry_date__lte=now + expiring_soon_window())
    if status == KeyStatus.EXPIRING_SOON:
        return usable & Q(grace_until__isnull=True) & soon
    if status == KeyStatus.ACTIVE:
        return usable & Q(grace_until__isnull=True) & ~soon
    raise ValueError(f"Unknown key status {status!r}.")


def api_key_list(*, status: str = "all", now: datetime | None = None) -> QuerySet:
    """Keys, newest first, with their predecessor and successor loaded.

    `status`: "all"; "active" (every usable key: active, expiring soon and in grace); "revoked"; "expired"; or
    any exact KeyStatus value. Raises ValueError for anything else.
    """
    keys = APIKey.objects.select_related("predecessor", "successor").order_by("-created", "prefix")
    if status == "all":
        return keys
    return keys.filter(api_key_status_q("usable" if status == "active" else status, now=now))


def api_keys_due_for_rotation(*, older_than: timedelta, now: datetime | None = None) -> QuerySet:
    """Usable keys created at least `older_than` ago and not yet rotated (no successor), oldest first."""
    now = now or timezone.now()
    return (
        APIKey.objects.filter(api_key_status_q("usable", now=now), created__lte=now - older_than)
        .filter(successor__isnull=True)
        .order_by("created", "prefix")
    )


@dataclass(frozen=True)
class KeyRow:
    """What the list command and the admin show about a key (never its hash)."""

    prefix: str
    name: str
    owner: str
    status: str
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    allowed_models: list
    budget_usd: str | None
    budget_period: str
    created: str
    expires: str | None
    grace_until: str | None
    valid_until: str | None
    revoked_at: str | None
    last_used_at: str | None
    predecessor: str | None
    successor: str | None
    notes: str
    team: str | None = None
    alert_thresholds: list | None = None


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


def api_key_row(api_key: APIKey, *, now: datetime | None = None) -> KeyRow:
    successor = api_key.successor if _has_successor(api_key) else None
    return KeyRow(
        prefix=api_key.prefix,
        name=api_key.name,
        owner=api_key.owner,
        status=api_key_status(api_key, now=now),
        rpm=api_key.rpm,
        tpm=api_key.tpm,
        max_concurrent=api_key.max_concurrent,
        allowed_models=list(api_key.allowed_models or []),
        budget_usd=str(api_key.budget_usd) if api_key.budget_usd is not None else None,
        budget_period=api_key.budget_period,
        created=_iso(api_key.created),
        expires=_iso(api_key.expiry_date),
        grace_until=_iso(api_key.grace_until),
        valid_until=_iso(api_key.valid_until()),
        revoked_at=_iso(api_key.revoked_at),
        last_used_at=_iso(api_key.last_used_at),
        predecessor=api_key.predecessor.prefix if api_key.predecessor_id else None,
        successor=successor.prefix if successor else None,
        notes=api_key.notes,
        team=api_key.team.name if api_key.team_id else None,
        alert_thresholds=list(api_key.alert_thresholds or []),
    )


def _has_successor(api_key: APIKey) -> bool:
    try:
        api_key.successor  # noqa: B018  (reverse one-to-one: raises when there is none)
    except APIKey.DoesNotExist:
        return False
    return True


@dataclass(frozen=True)
class TeamRow:
    """What `list_teams`, the management API and the admin show about a team."""

    name: str
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    models: list
    budget_usd: str | None
    budget_period: str
    alert_thresholds: list
    keys: int
    admins: list
    notes: str
    created: str | None


def team_list(*, teams: QuerySet | None = None) -> QuerySet:
    """Teams by name, with their key counts (`key_count`) and admins loaded."""
    from django.db.models import Count

    base = Team.objects.all() if teams is None else teams
    return base.annotate(key_count=Count("keys")).prefetch_related("admins").order_by("name")


def team_row(team: Team) -> TeamRow:
    key_count = getattr(team, "key_count", None)
    return TeamRow(
        name=team.name,
        rpm=team.rpm,
        tpm=team.tpm,
        max_concurrent=team.max_concurrent,
        models=list(team.allowed_models or []),
        budget_usd=str(team.budget_usd) if team.budget_usd is not None else None,
        budget_period=team.budget_period,
        alert_thresholds=list(team.alert_thresholds or []),
        keys=key_count if key_count is not None else team.keys.count(),
        admins=sorted(user.get_username() for user in team.admins.all()),
        notes=team.notes,
        created=_iso(team.created_at),
    )


def teams_administered(user) -> QuerySet | None:
    """The teams `user` manages in the admin, or None when the user is not limited to teams: anonymous (the login
    page), a superuser, or a staff user who administers no team (Django's model permissions apply, as before teams
    existed)."""
    if not user.is_authenticated or not user.is_active or not user.is_staff or user.is_superuser:
        return None
    teams = Team.objects.filter(admins=user)
    return teams if teams.exists() else None
