"""Writes of the management API's own state: tokens, and the replay records of idempotent creates."""

import base64
import hashlib
from datetime import timedelta
from typing import cast

from cryptography.fernet import Fernet, InvalidToken
from django.db import transaction
from django.utils import timezone
from django.utils.crypto import salted_hmac

from apikeys.models import Team

from .models import IdempotentCreate, ManagementToken

IDEMPOTENCY_KEEP_HOURS = 24


class TokenError(ValueError):
    """A token name that is taken, unknown, or already revoked."""


@transaction.atomic
def management_token_create(*, name: str, team: Team | None = None) -> tuple[ManagementToken, str]:
    """Create a token (scoped to `team` if given); return it and its raw value, shown once. Raises TokenError."""
    name = (name or "").strip()
    if not name or len(name) > 50:
        raise TokenError("A token name must be 1 to 50 characters.")
    if ManagementToken.objects.filter(name=name).exists():
        raise TokenError(f"A management token named {name!r} exists already.")
    token, raw = ManagementToken.objects.create_key(name=name, team=team)
    return cast(ManagementToken, token), raw


@transaction.atomic
def management_token_revoke(*, name: str) -> ManagementToken:
    """Revoke the token named `name`; it is refused from the next request on. Raises TokenError."""
    token = ManagementToken.objects.select_for_update().filter(name=(name or "").strip()).first()
    if token is None:
        raise TokenError(f"No management token is named {name!r}.")
    if token.revoked:
        raise TokenError(f"The management token {token.name!r} is already revoked.")
    token.revoked = True
    token.revoked_at = timezone.now()
    token.save(update_fields=["revoked", "revoked_at"])
    return token


# IDEMPOTENT CREATES


def _fernet() -> Fernet:
    digest = salted_hmac("tollgate.manageapi.idempotency", "sealing key", algorithm="sha256").digest()
    return Fernet(base64.urlsafe_b64encode(digest))


def request_fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def idempotent_create_find(*, token: ManagementToken, key: str) -> IdempotentCreate | None:
    """The stored first answer for (token, key), if it is recent enough to replay."""
    cutoff = timezone.now() - timedelta(hours=IDEMPOTENCY_KEEP_HOURS)
    IdempotentCreate.objects.filter(created_at__lt=cutoff).delete()
    return IdempotentCreate.objects.filter(token=token, key=key).first()


def idempotent_create_store(
    *, token: ManagementToken, key: str, fingerprint: str, status: int, body: dict, secret: str
) -> IdempotentCreate:
    """Record the first answer (call inside the creating transaction: a concurrent twin fails on the unique index
    and its transaction, creation included, rolls back). The raw key is sealed, never stored in the clear."""
    return IdempotentCreate.objects.create(
        token=token,
        key=key,
        request_hash=fingerprint,
        status=status,
        body=body,
        sealed_secret=_fernet().encrypt(secret.encode()).decode() if secret else "",
    )


def idempotent_create_secret(record: IdempotentCreate) -> str | None:
    """The raw key of a stored answer, unsealed (None if SECRET_KEY changed since)."""
    if not record.sealed_secret:
        return None
    try:
        return _fernet().decrypt(record.sealed_secret.encode()).decode()
    except InvalidToken:
        return None
