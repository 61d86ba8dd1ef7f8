"""The upstreams Tollgate forwards to: OpenAI projects, Azure OpenAI resources, OpenAI-compatible servers.

With no row here, `OPENAI_API_KEY` and `OPENAI_BASE_URL` are the one default upstream (as before upstreams were
data). Rows are written by `upstreams.services` (audited), read by `upstreams.selectors`; the routing state that
changes per request (health, requests and tokens per minute) lives in Redis, not here (`upstreams.health`,
`upstreams.selection`).
"""

from django.db import models
from django.db.models import BooleanField, DateTimeField, JSONField, PositiveIntegerField
from django.utils import timezone


class UpstreamKind(models.TextChoices):
    OPENAI = "openai"
    AZURE = "azure"
    OPENAI_COMPATIBLE = "openai_compatible"


class Upstream(models.Model):
    """One upstream. `api_key_encrypted` is the API key sealed with `UPSTREAM_KEY_ENCRYPTION_KEYS` (Fernet): the
    raw key is never stored and never shown again. `models` are served under their own names and `aliases` map a
    public model name to the upstream's model (or Azure deployment); with neither, every model is served."""

    name = models.SlugField(max_length=64, unique=True)
    kind = models.CharField(max_length=20, choices=UpstreamKind.choices, default=UpstreamKind.OPENAI)
    base_url = models.URLField(
        max_length=500,
        help_text="Ends in /v1 for openai and openai_compatible; the resource root "
        "(https://RESOURCE.openai.azure.com) for azure.",
    )
    api_key_encrypted = models.TextField(editable=False, blank=True)
    organization = models.CharField(max_length=100, blank=True, help_text="OpenAI-Organization header (openai).")
    project = models.CharField(max_length=100, blank=True, help_text="OpenAI-Project header (openai).")
    api_version = models.CharField(
        max_length=40, blank=True, help_text="azure: use deployment URLs with ?api-version= (empty: the v1 API)."
    )
    weight = models.PositiveIntegerField(default=1)
    priority = models.IntegerField(default=0, help_text="Higher is preferred; a lower tier serves only as fallback.")
    models = JSONField(default=list, blank=True, help_text="Models served under their own names.")
    aliases = JSONField(default=dict, blank=True, help_text="Public model name → upstream model/deployment.")
    rpm = PositiveIntegerField(null=True, blank=True, help_text="Requests per minute it allows.")
    tpm = PositiveIntegerField(null=True, blank=True, help_text="Tokens per minute it allows.")
    enabled = BooleanField(default=True)
    created_at = DateTimeField(default=timezone.now)
    updated_at = DateTimeField(default=timezone.now)

    class Meta:
        ordering = ("-priority", "name")

    def __str__(self) -> str:
        return self.name

    @property
    def serves_all(self) -> bool:
        return not self.models and not self.aliases


class UpstreamAuditEntry(models.Model):
    """Append-only: who created, changed, enabled, disabled or re-keyed an upstream. Never holds a key."""

    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    actor = models.CharField(max_length=150)
    action = models.CharField(max_length=20)
    upstream_name = models.CharField(max_length=64, db_index=True)
    changes = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("-created_at",)
        verbose_name_plural = "upstream audit entries"

    def __str__(self) -> str:
        return f"{self.action} {self.upstream_name} by {self.actor}"
