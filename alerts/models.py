"""Alerts: one claim per crossing (unique, so that it is raised once across every worker and instance) and its
deliveries (a webhook, an email), with their attempts, visible in the admin."""

from django.db import models
from django.utils import timezone


class AlertClaim(models.Model):
    """A threshold crossed (or an expiry coming) for one subject in one period, raised once.

    The unique constraint is the "exactly once": every worker of every instance that sees the crossing tries to
    insert the same row; one succeeds and creates the deliveries, the others get an IntegrityError and move on.
    """

    event = models.CharField(max_length=32)
    scope = models.CharField(max_length=8)  # "key" (a key lineage) or "team"
    subject = models.CharField(max_length=100, help_text="Key lineage prefix, or team id.")
    period = models.CharField(max_length=40, help_text="Budget period label (2025-01, 2025-01-31, total) or expiry.")
    threshold = models.PositiveIntegerField(default=0)
    payload = models.JSONField()
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")
        constraints = [
            models.UniqueConstraint(
                fields=["event", "scope", "subject", "period", "threshold"], name="alert_claim_once"
            )
        ]

    def __str__(self) -> str:
        return f"{self.event} {self.scope} {self.payload.get('name', self.subject)} {self.threshold}%"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"  # gave up after ALERT_MAX_ATTEMPTS


class AlertDelivery(models.Model):
    """One channel's delivery of a claim: retried with backoff until it succeeds or runs out of attempts."""

    claim = models.ForeignKey(AlertClaim, on_delete=models.CASCADE, related_name="deliveries")
    channel = models.CharField(max_length=8)  # "webhook" or "email"
    target = models.TextField(help_text="The webhook URL, or the email recipients (comma-separated).")
    status = models.CharField(max_length=8, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now, db_index=True)
    # A worker sending it holds it until then; another may take it over after (a worker that died mid-send).
    lease_until = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name_plural = "alert deliveries"
