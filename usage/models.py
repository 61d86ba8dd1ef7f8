"""Usage records and model prices."""

from django.db import models
from django.utils import timezone


class ModelPrice(models.Model):
    """USD per million tokens for a model, in force from `effective_from` until a later row for the same model.

    `model` matches a request's model exactly or as a prefix (`gpt-4o` prices `gpt-4o-2024-08-06`); the longest
    match wins. `max_output_tokens` bounds the worst case reserved against a budget when a request sets no
    `max_tokens`.
    """

    model = models.CharField(max_length=100)
    input_per_million = models.DecimalField(max_digits=12, decimal_places=4)
    output_per_million = models.DecimalField(max_digits=12, decimal_places=4)
    max_output_tokens = models.PositiveIntegerField(default=16384)
    effective_from = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("model", "-effective_from")
        constraints = [models.UniqueConstraint(fields=["model", "effective_from"], name="uniq_price_model_from")]

    def __str__(self):
        return f"{self.model} (${self.input_per_million}/${self.output_per_million} per 1M)"


class UsageRecord(models.Model):
    """One row per authenticated request, whatever its outcome. `request_id` is unique: never counted twice."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    request_id = models.CharField(max_length=64, unique=True)
    # No database-level constraint: the usage writer's inserts then lock nothing in the key table, so they can
    # never deadlock with key changes (or a test's TRUNCATE). Deletion still nulls the link (Django's collector).
    api_key = models.ForeignKey(
        "apikeys.APIKey", null=True, on_delete=models.SET_NULL, related_name="usage", db_constraint=False
    )
    key_prefix = models.CharField(max_length=8, db_index=True)
    key_name = models.CharField(max_length=50, blank=True)
    model = models.CharField(max_length=100, blank=True)
    status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=40, blank=True)
    streamed = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    completion_tokens = models.PositiveIntegerField(default=0)
    total_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False, help_text="Tokens estimated: the upstream reported none.")
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    latency_ms = models.FloatField(default=0)
    ttfb_ms = models.FloatField(null=True, blank=True)
    upstream_request_id = models.CharField(max_length=128, blank=True)

    class Meta:
        ordering = ("-created_at",)
        # Named as they were created (the table moved here from the `completions` app with its indexes).
        indexes = [
            models.Index(fields=["key_prefix", "created_at"], name="completions_key_pre_833287_idx"),
            models.Index(fields=["model", "created_at"], name="completions_model_f31c79_idx"),
        ]
