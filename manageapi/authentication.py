"""DRF authentication of management tokens: `Authorization: Bearer <prefix.secret>` against `ManagementToken`.

A gateway key is not a management token (another table), so it gets a 401 here, as a management token does on
`/v1/`. Every request verifies the token's hash (one SHA-512): the management API is not a hot path.
"""

from rest_framework import HTTP_HEADER_ENCODING
from rest_framework.authentication import BaseAuthentication

from core.errors import InvalidAPIKey

from .models import ManagementToken

MISSING_TOKEN = "You didn't provide a management token. Send it as Authorization: Bearer <token>."  # noqa: S105
INCORRECT_TOKEN = "Incorrect management token provided."  # noqa: S105
# Compared against when the prefix is unknown, so that a wrong token costs the same time either way.
_DUMMY_HASH = ManagementToken.objects.key_generator.hash("00000000.00000000000000000000000000000000")


class ManagementTokenAuthentication(BaseAuthentication):
    """Returns `(token, token)`; raises `InvalidAPIKey` (401) for a missing, unknown or revoked token."""

    keyword = "Bearer"

    def authenticate_header(self, request):
        # Without this DRF turns every 401 into a 403.
        return f'{self.keyword} realm="tollgate-manage"'

    def authenticate(self, request):
        header = request.META.get("HTTP_AUTHORIZATION", b"")
        if isinstance(header, str):
            header = header.encode(HTTP_HEADER_ENCODING)
        parts = header.split()
        if not parts or parts[0].lower() != self.keyword.lower().encode():
            raise InvalidAPIKey(MISSING_TOKEN)
        if len(parts) != 2:
            raise InvalidAPIKey(INCORRECT_TOKEN)
        try:
            raw = parts[1].decode("ascii")
        except UnicodeDecodeError:
            raise InvalidAPIKey(INCORRECT_TOKEN) from None
        prefix, dot, _ = raw.partition(".")
        token = ManagementToken.objects.select_related("team").filter(prefix=prefix).first() if dot else None
        generator = ManagementToken.objects.key_generator
        valid = generator.verify(raw, token.hashed_key if token is not None else _DUMMY_HASH)
        if token is None or not valid or token.revoked:
            raise InvalidAPIKey(INCORRECT_TOKEN)
        return token, token
