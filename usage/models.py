"""Usage records, model prices, and the append-only audit trail of price changes."""

from decimal import Decimal

from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from .endpoint_names import CHAT_COMPLETIONS

_NOT_NEGATIVE = [MinValueValidator(Decimal(0))]


class ModelPrice(models.Model):
    """USD per million tokens for a model, in force from `effective_from` until a later row for the same model.

    `model` matches a request's model exactly or as a prefix (`gpt-4o` prices `gpt-4o-2024-08-06`); the longest
    match wins. Input tokens the upstream served from its prompt cache are charged `cached_input_per_million`
    (empty: the input rate). `max_output_tokens` bounds the worst case reserved against a budget when a request
    sets no `max_tokens`. Written through `usage.services` only, which keeps an audit trail.
    """

    model = models.CharField(max_length=100)
    input_per_million = models.DecimalField(max_digits=12, decimal_places=4, validators=_NOT_NEGATIVE)
    cached_input_per_million = models.DecimalField(
        max_digits=12,
        decimal_places=4,
        null=True,
        blank=True,
        validators=_NOT_NEGATIVE,
        verbose_name="cached input per million",
        help_text="USD per 1M input tokens served from the prompt cache; empty = the input rate.",
    )
    output_per_million = models.DecimalField(max_digits=12, decimal_places=4, validators=_NOT_NEGATIVE)
    max_output_tokens = models.PositiveIntegerField(default=16384)
    effective_from = models.DateTimeField(default=timezone.now)
    # The name of the one upstream (upstreams.Upstream) this row prices; empty: every upstream. A row for the
    # request's upstream wins over one for all (a self-hosted model can cost 0 while OpenAI's costs its price).
    upstream = models.CharField(
        max_length=64, blank=True, default="", db_default="", help_text="Only for this upstream (empty: all)."
    )

    class Meta:
        ordering = ("model", "upstream", "-effective_from")
        constraints = [
            models.UniqueConstraint(
                fields=["model", "upstream", "effective_from"], name="uniq_price_model_upstream_from"
            )
        ]

    def __str__(self) -> str:
        return f"{self.model} (${self.input_per_million}/${self.output_per_million} per 1M)"


class ToolPrice(models.Model):
    """USD per call of a hosted tool, by the output item type of its calls (`web_search_call`,
    `file_search_call`, `code_interpreter_call`, `image_generation_call`, ...), in force from `effective_from`
    until a later row for the same tool. Added to a request's cost for each such item in its output. Written
    through `usage.services` only, which keeps an audit trail (`PriceAuditEntry`, `table` = `tool`)."""

    tool = models.CharField(max_length=60, help_text="The output item type of the tool's calls: `web_search_call`.")
    per_call_usd = models.DecimalField(
        max_digits=12, decimal_places=6, validators=_NOT_NEGATIVE, verbose_name="USD per call"
    )
    effective_from = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("tool", "-effective_from")
        constraints = [models.UniqueConstraint(fields=["tool", "effective_from"], name="uniq_tool_price_from")]

    def __str__(self) -> str:
        return f"{self.tool} (${self.per_call_usd} per call)"


class PriceAuditAction(models.TextChoices):
    CREATE = "create"
    UPDATE = "update"
    DELETE = "delete"


class PriceAuditEntry(models.Model):
    """Append-only record of a change to a `ModelPrice` row (written by `usage.services`). Never updated or
    deleted. `changes` is `{field: [old, new]}` (amounts as strings, times as ISO-8601; `old` is None on create,
    `new` is None on delete). `price_id` is not a foreign key: the entry outlives a deleted price row."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=200, help_text="Admin username, or 'command:<name>'.")
    action = models.CharField(max_length=16, choices=PriceAuditAction.choices)
    # Which table the price row is in: `model` (ModelPrice; `model` names the model) or `tool` (ToolPrice; `model`
    # names the tool).
    table = models.CharField(max_length=8, default="model", db_default="model")
    price_id = models.BigIntegerField(null=True, blank=True, db_index=True)
    model = models.CharField(max_length=100, db_index=True)
    changes = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("-created_at", "-id")
        verbose_name = "price audit entry"
        verbose_name_plural = "price audit log"

    def __str__(self) -> str:
        return f"{self.action} {self.model} by {self.actor}"

    def save(self, *args, **kwargs) -> None:
        if self.pk is not None:
            raise ValueError("Price audit entries are append-only.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise ValueError("Price audit entries are append-only.")


class UsageRecord(models.Model):
    """One row per authenticated request, whatever its outcome. (`request_id`, `created_at`) is unique: a request
    is never counted twice (its `created_at` is its start, captured once, so a retried insert conflicts).

    On PostgreSQL the table is partitioned by month on `created_at` (migration 0007, `usage.partitions`): its real
    primary key is (`id`, `created_at`), as a partitioned table's keys must include the partition key; Django keeps
    `id` as the model's pk, which stays unique (one sequence). Uniqueness of `request_id` alone cannot be enforced
    across partitions, hence the pair. On SQLite it is a plain table.

    `endpoint` is the relay's name for what was called (`chat.completions`, `embeddings`, ...; see
    `usage.endpoint_names`); `cached_tokens` is the part of `prompt_tokens` the upstream served from its prompt cache.
    """

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    request_id = models.CharField(max_length=64)
    # No database-level constraint: the usage writer's inserts then lock nothing in the key table, so they can
    # never deadlock with key changes (or a test's TRUNCATE). Deletion still nulls the link (Django's collector).
    api_key = models.ForeignKey(
        "apikeys.APIKey", null=True, on_delete=models.SET_NULL, related_name="usage", db_constraint=False
    )
    # No index of its own: (key_prefix, created_at) below serves every lookup by key, and each index costs the
    # usage writer on every insert.
    key_prefix = models.CharField(max_length=8)
    key_name = models.CharField(max_length=50, blank=True)
    # A row that names no endpoint is a chat completion: every row from before Tollgate served other endpoints,
    # and what workers of the previous release still insert (without this column) during a rolling deploy.
    endpoint = models.CharField(max_length=40, default=CHAT_COMPLETIONS, db_default=CHAT_COMPLETIONS)
    model = models.CharField(max_length=100, blank=True)
    status = models.PositiveSmallIntegerField()
    error_type = models.CharField(max_length=40, blank=True)
    streamed = models.BooleanField(default=False)
    prompt_tokens = models.PositiveIntegerField(default=0)
    # db_default: inserts of the previous release (which omit the column) still succeed during a rolling deploy.
    cached_tokens = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Of the prompt tokens, those served from the upstream's prompt cache."
    )
    completion_tokens = models.PositiveIntegerField(default=0)
    reasoning_tokens = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Of the completion tokens, those spent reasoning (Responses API)."
    )
    hosted_tool_calls = models.PositiveIntegerField(
        default=0, db_default=0, help_text="Calls of hosted tools (web search, file search, ...) in the output."
    )
    hosted_tools = models.CharField(
        max_length=200, blank=True, default="", db_default="", help_text="Those calls by type: `web_search_call:2`."
    )
    total_tokens = models.PositiveIntegerField(default=0)
    usage_estimated = models.BooleanField(default=False, help_text="Tokens estimated: the upstream reported none.")
    cost_usd = models.DecimalField(max_digits=14, decimal_places=8, default=0)
    latency_ms = models.FloatField(default=0)
    ttfb_ms = models.FloatField(null=True, blank=True)
    upstream_request_id = models.CharField(max_length=128, blank=True)
    # db_default: inserts of the previous release (which omit the columns) still succeed during a rolling deploy.
    upstream = models.CharField(
        max_length=64, blank=True, default="", db_default="", help_text="The upstream that answered (or failed last)."
    )
    attempts = models.PositiveSmallIntegerField(
        default=0, db_default=0, help_text="Upstreams tried: more than 1 when the request failed over."
    )

    class Meta:
        ordering = ("-created_at",)
        # The first two are named as they were created (the table moved here from the `completions` app with its
        # indexes). The endpoint one serves the per-endpoint report filter and dashboard over a time span.
        indexes = [
            models.Index(fields=["key_prefix", "created_at"], name="completions_key_pre_833287_idx"),
            models.Index(fields=["model", "created_at"], name="completions_model_f31c79_idx"),
            models.Index(fields=["endpoint", "created_at"], name="usage_endpoint_created_idx"),
        ]
        constraints = [models.UniqueConstraint(fields=["request_id", "created_at"], name="usage_request_once")]

    def __str__(self) -> str:
        return self.request_id


class Outcome(models.TextChoices):
    """A request's outcome class in the rollups: what the dashboards split by (errors are status >= 400)."""

    OK = "ok"  # status < 400
    THROTTLED = "throttled"  # status 429
    ERROR = "error"  # any other status >= 400


class RollupFields(models.Model):
    """What an hourly and a daily rollup row hold: `hour` (the span's first hour: for a day, its midnight UTC), the
    key, key name, model, endpoint and outcome class it totals, and the sums."""

    hour = models.DateTimeField()
    key_prefix = models.CharField(max_length=8)
    key_name = models.CharField(max_length=50, blank=True)
    model = models.CharField(max_length=100, blank=True)
    endpoint = models.CharField(max_length=40)
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    requests = models.BigIntegerField(default=0)
    prompt_tokens = models.BigIntegerField(default=0)
    cached_tokens = models.BigIntegerField(default=0)
    completion_tokens = models.BigIntegerField(default=0)
    reasoning_tokens = models.BigIntegerField(default=0)
    total_tokens = models.BigIntegerField(default=0)
    cost_units = models.BigIntegerField(default=0, help_text="USD x 10^8.")

    class Meta:
        abstract = True

    def __str__(self) -> str:
        return f"{self.hour:%Y-%m-%d %H}:00 {self.key_prefix} {self.model} {self.endpoint} {self.outcome}"


class UsageRollup(RollupFields):
    """Hourly totals of the usage records: one row per UTC hour, key, key name, model, endpoint and outcome class.

    Written by the usage writer in the same transaction as the records it inserts, counting only the records
    actually inserted (usage/rollups.py); `manage.py rebuild_usage_rollups` recomputes them from the records.
    Dashboards, key pages, budget panels, `usage_report`, budget counter rebuilds and the alert scanner read
    these (or their daily sums, `UsageDailyRollup`), never the records. A key's lineage and a team are resolved
    through the key table (the prefixes of the lineage, of the keys now in the team), as budget enforcement does.
    They outlive purged records.

    `key_name` is part of the row's identity so that a key renamed within an hour gives two rows and the reports'
    "latest name" (the greatest, as over the records) is the same from rollups as from records. Money is an
    integer of 10⁻⁸ USD (`usage.pricing` units): sums are exact on every database.
    """

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["key_prefix", "hour", "model", "endpoint", "outcome", "key_name"], name="usage_rollup_once"
            )
        ]
        # The unique index serves one key's (or a few keys') hours; this one every key's hours (the dashboard).
        indexes = [models.Index(fields=["hour"], name="usage_rollup_hour_idx")]


class UsageDailyRollup(RollupFields):
    """The hourly rollups summed per UTC day (`hour` is the day's midnight), written with them by the usage
    writer and rebuilt with them. Whatever spans whole days (the 30-day pictures, report days, budget periods)
    reads these: 24 times fewer rows than the hourly ones."""

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["key_prefix", "hour", "model", "endpoint", "outcome", "key_name"],
                name="usage_daily_rollup_once",
            )
        ]
        indexes = [models.Index(fields=["hour"], name="usage_daily_rollup_hour_idx")]
