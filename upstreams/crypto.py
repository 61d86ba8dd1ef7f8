"""Upstream API keys sealed at rest: `cryptography`'s MultiFernet over `UPSTREAM_KEY_ENCRYPTION_KEYS`.

The setting holds Fernet keys (URL-safe base64 of 32 bytes), comma-separated: the first encrypts, every one
decrypts, so a new key goes first and the old one stays until `reencrypt_upstream_keys` has re-sealed every row.
"""

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class KeyEncryptionError(Exception):
    """No usable encryption key, or a stored key that none of them opens."""


def _multi() -> MultiFernet:
    keys = [part.strip() for part in settings.UPSTREAM_KEY_ENCRYPTION_KEYS.split(",") if part.strip()]
    if not keys:
        raise KeyEncryptionError(
            "UPSTREAM_KEY_ENCRYPTION_KEYS is not set: generate one with "
            "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
        )
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError:
        raise KeyEncryptionError(
            "UPSTREAM_KEY_ENCRYPTION_KEYS must be Fernet keys (URL-safe base64 of 32 bytes), comma-separated."
        ) from None


def seal(raw: str) -> str:
    return _multi().encrypt(raw.encode()).decode()


def unseal(token: str) -> str:
    if not token:
        return ""
    try:
        return _multi().decrypt(token.encode()).decode()
    except InvalidToken:
        raise KeyEncryptionError("A stored upstream key opens with none of UPSTREAM_KEY_ENCRYPTION_KEYS.") from None


def reseal(token: str) -> str:
    """The same key sealed with the first encryption key (MultiFernet.rotate)."""
    if not token:
        return token
    try:
        return _multi().rotate(token.encode()).decode()
    except InvalidToken:
        raise KeyEncryptionError("A stored upstream key opens with none of UPSTREAM_KEY_ENCRYPTION_KEYS.") from None
