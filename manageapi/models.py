"""Management tokens (hashed like gateway keys, in their own table) and the replay records of idempotent creates."""

from django.db import models
from rest_framework_api_key.models import AbstractAPIKey, APIKeyManager

from apikeys.models import Team


class ManagementTokenManager(APIKeyManager):
    """The package's manager, except that a token's primary key is its prefix (no hash in any URL or log)."""

    def assign_key(self, obj: "AbstractAPIKey") -> str:
        key = super().assign_key(obj)
        obj.id = obj.prefix
        return key


class ManagementToken(AbstractAPIKey):
    """A token for `/api/manage/v1/` (never for `/v1/`). `prefix.secret`; only a SHA-512 of it is stored.

    A token with a `team` sees and changes only that team's keys; one without sees everything. Revoked tokens
    stay (the audit trail names them as `token:<name>`).
    """

    objects = ManagementTokenManager()  # type: ignore[misc]  # the package declares it as a class variable

    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.PROTECT, related_name="management_tokens")
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    # DRF's IsAuthenticated looks for this on request.user.
    is_authenticated = True

    class Meta(AbstractAPIKey.Meta):
        verbose_name = "management token"
        verbose_name_plural = "management tokens"
        constraints = [models.UniqueConstraint(fields=["name"], name="management_token_name_unique")]


class IdempotentCreate(models.Model):
    """The first answer to a create sent with an `Idempotency-Key`, replayed to retries of the same request.

    Unique per (token, key): of two concurrent retries one creates, the other waits on the index and replays. The
    raw key of the answer is kept encrypted (Fernet, with a key derived from SECRET_KEY) for
    `IDEMPOTENCY_KEEP_HOURS` only, then the record is deleted.
    """

    token = models.ForeignKey(ManagementToken, on_delete=models.CASCADE, related_name="idempotent_creates")
    key = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    status = models.PositiveSmallIntegerField()
    body = models.JSONField()
    sealed_secret = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["token", "key"], name="idempotent_create_unique")]
