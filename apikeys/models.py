"""Tollgate's API keys: hashed (djangorestframework-api-key), with limits, an allowlist, expiry and rotation; and
the teams that own keys and share limits and a budget."""

from django.conf import settings
from django.db import models
from django.utils import timezone
from rest_framework_api_key.models import AbstractAPIKey, APIKeyManager


class BudgetPeriod(models.TextChoices):
    DAY = "day", "per day (UTC)"
    MONTH = "month", "per calendar month (UTC)"
    TOTAL = "total", "in total"


def default_alert_thresholds() -> list[int]:
    """Percentages of a budget whose crossing by settled spend sends an alert (alerts/)."""
    return [50, 80, 100]


class Team(models.Model):
    """A group of keys with shared limits, one budget and an allowlist that narrows each key's own.

    A request of a key in a team counts against the key's limits and the team's in one atomic store call
    (metering). Users in `admins` manage the team's keys (and only those) in the admin.
    """

    name = models.CharField(max_length=100, unique=True)
    notes = models.TextField(blank=True)
    rpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests / minute")
    tpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens / minute")
    max_concurrent = models.PositiveIntegerField(null=True, blank=True, verbose_name="max concurrent requests")
    allowed_models = models.JSONField(
        default=list, blank=True, help_text="Model ids the team's keys may use; empty = all (each key may narrow it)."
    )
    budget_usd = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True, verbose_name="budget (USD)"
    )
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)
    alert_thresholds = models.JSONField(
        default=default_alert_thresholds, blank=True, help_text="Percentages of the budget that send an alert."
    )
    admins = models.ManyToManyField(
        settings.AUTH_USER_MODEL, blank=True, related_name="admin_of_teams", help_text="Users who manage its keys."
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name


class TollgateAPIKeyManager(APIKeyManager):
    """The package's manager, except that a key's primary key is its prefix.

    The package makes the primary key `prefix.hash`; the primary key ends up in admin URLs, the admin's own
    log, foreign keys and key snapshots, and a hash must stay in the database (URLs travel on into access logs,
    browser history and Referer headers). The prefix is unique already, so it identifies a key just as well.
    """

    def assign_key(self, obj: "AbstractAPIKey") -> str:
        key = super().assign_key(obj)
        obj.id = obj.prefix
        obj.lineage = obj.predecessor.lineage if obj.predecessor_id else obj.prefix
        return key


class APIKey(AbstractAPIKey):
    """A client key. The raw key (`prefix.secret`) is shown once at creation; only its SHA-512 is stored.

    `expiry_date` (from the package) is the hard expiry an admin sets; `grace_until` is set on a key that was
    rotated and marks the end of its grace period. The key stops working at the earlier of the two.
    """

    objects = TollgateAPIKeyManager()

    owner = models.CharField(max_length=200, blank=True, help_text="Who this key belongs to (person, team, service).")
    notes = models.TextField(blank=True)

    # RATE LIMITS (null = the project-wide default from settings, which may itself be unlimited)
    rpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="requests / minute")
    tpm = models.PositiveIntegerField(null=True, blank=True, verbose_name="tokens / minute")
    max_concurrent = models.PositiveIntegerField(null=True, blank=True, verbose_name="max concurrent requests")

    # MODELS (empty list = every model)
    allowed_models = models.JSONField(default=list, blank=True, help_text="Model ids this key may use; empty = all.")
    # HOSTED TOOLS (empty list = every hosted tool; function tools are the client's own and always allowed)
    hosted_tools = models.JSONField(
        default=list,
        blank=True,
        help_text="Hosted tool types (`tools[].type`: web_search, file_search, ...) this key may use; empty = all.",
    )

    # BUDGET (null = no cap)
    budget_usd = models.DecimalField(
        max_digits=12, decimal_places=4, null=True, blank=True, verbose_name="budget (USD)"
    )
    budget_period = models.CharField(max_length=8, choices=BudgetPeriod.choices, default=BudgetPeriod.MONTH)

    # TEAM (its limits and budget apply too; rotation keeps it)
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.PROTECT, related_name="keys")
    alert_thresholds = models.JSONField(
        default=default_alert_thresholds, blank=True, help_text="Percentages of the budget that send an alert."
    )

    # LIFECYCLE
    predecessor = models.OneToOneField(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="successor", editable=False
    )
    # The prefix of the first key of its rotation chain. Rate-limit and budget counters belong to the lineage,
    # so rotating a key neither resets its spend nor doubles its limits during the grace period.
    lineage = models.CharField(max_length=8, db_index=True, editable=False, default="")
    grace_until = models.DateTimeField(null=True, blank=True, editable=False, help_text="End of rotation grace.")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "API key"
        verbose_name_plural = "API keys"

    def valid_until(self):
        """The moment the key stops working (expiry or end of rotation grace), or None."""
        ends = [t for t in (self.expiry_date, self.grace_until) if t is not None]
        return min(ends) if ends else None

    def is_usable(self, now=None) -> bool:
        until = self.valid_until()
        return not self.revoked and (until is None or until > (now or timezone.now()))


class KeyGeneration(models.Model):
    """A single row whose `value` grows on every key change; workers poll it to drop their key caches.

    Bumped in the same transaction as the change (apikeys.signals), so a worker that sees the new value also
    sees the change.
    """

    value = models.BigIntegerField(default=0)


class AuditAction(models.TextChoices):
    CREATE = "create"
    ROTATE = "rotate"
    REVOKE = "revoke"
    UPDATE = "update"


class AuditLogEntry(models.Model):
    """Append-only record of a key lifecycle step, or of a team's (`key_prefix` empty). Never updated or deleted."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=200, help_text="Admin username, 'command:<name>' or 'token:<name>'.")
    action = models.CharField(max_length=16, choices=AuditAction.choices)
    key_prefix = models.CharField(max_length=8, db_index=True)
    key_name = models.CharField(max_length=50, blank=True)
    team_name = models.CharField(max_length=100, blank=True, db_index=True, help_text="The team changed, if any.")
    changes = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name = "audit log entry"
        verbose_name_plural = "audit log"

    def save(self, *args, **kwargs):
        if self.pk is not None:
            raise ValueError("Audit log entries are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Audit log entries are append-only.")
