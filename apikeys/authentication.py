"""DRF authentication by `Authorization: Bearer <key>`, the header the openai SDK sends.

djangorestframework-api-key ships only a permission (`HasAPIKey`), which leaves `request.auth` empty; this class
authenticates instead, so `request.auth` is the key's `KeySnapshot`.
"""

import time

from asgiref.sync import sync_to_async
from django.db.utils import DatabaseError
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from completions.errors import InvalidAPIKey, ServiceUnavailable

from .keycache import KeySnapshot, get_key_cache, key_digest

MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer "
    "auth (i.e. Authorization: Bearer YOUR_KEY)."
)
# Never echo the key back: a mistyped key pasted into an error report would leak.
INCORRECT_KEY = "Incorrect API key provided."
REVOKED_KEY = "This API key has been revoked."
EXPIRED_KEY = "This API key has expired."
ROTATED_KEY = "This API key was rotated and its grace period has ended; use its successor."


class BearerAPIKeyAuthentication(BaseAuthentication):
    """Authenticate `Authorization: Bearer <prefix.secret>` against hashed `apikeys.APIKey` rows.

    Returns `(snapshot, snapshot)`: DRF puts the key snapshot in both `request.user` and `request.auth`.
    Raises `InvalidAPIKey` (401) for a missing, malformed, unknown, revoked or expired key, and
    `ServiceUnavailable` (503) when an uncached key cannot be checked because the database is down.
    Keys are read only from the header, never from the query string or the body.
    """

    keyword = "Bearer"
    timer = time.time

    def authenticate_header(self, request):
        # Without this DRF turns every 401 into a 403, and the SDK raises PermissionDeniedError.
        return f'{self.keyword} realm="tollgate"'

    def get_raw_key(self, request) -> str:
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword.lower().encode():
            raise InvalidAPIKey(MISSING_KEY)
        if len(header) != 2:
            raise InvalidAPIKey(INCORRECT_KEY)
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise InvalidAPIKey(INCORRECT_KEY) from None
        if "." not in raw or len(raw) > 200:
            raise InvalidAPIKey(INCORRECT_KEY)
        return raw

    def check(self, snapshot: KeySnapshot | None) -> tuple[KeySnapshot, KeySnapshot]:
        if snapshot is None:
            raise InvalidAPIKey(INCORRECT_KEY)
        if snapshot.revoked:
            raise InvalidAPIKey(REVOKED_KEY)
        now = self.timer()
        if snapshot.expiry is not None and snapshot.expiry <= now:
            raise InvalidAPIKey(EXPIRED_KEY)
        if snapshot.grace_until is not None and snapshot.grace_until <= now:
            raise InvalidAPIKey(ROTATED_KEY)
        return snapshot, snapshot

    def authenticate(self, request):
        raw = self.get_raw_key(request)
        cache = get_key_cache()
        digest = key_digest(raw)
        try:
            if cache.refresh_due():
                cache.refresh()
            try:
                snapshot = cache.get(digest)
            except KeyError:
                snapshot = cache.load(raw, digest)
        except DatabaseError:
            raise ServiceUnavailable("The key store is unreachable; try again shortly.") from None
        return self.check(snapshot)

    async def aauthenticate(self, request):
        """The same as `authenticate`, without leaving the event loop for a cached key."""
        raw = self.get_raw_key(request)
        cache = get_key_cache()
        digest = key_digest(raw)
        try:
            if cache.refresh_due():
                await sync_to_async(cache.refresh, thread_sensitive=False)()
            try:
                snapshot = cache.get(digest)
            except KeyError:
                snapshot = await sync_to_async(cache.load, thread_sensitive=False)(raw, digest)
        except DatabaseError:
            raise ServiceUnavailable("The key store is unreachable; try again shortly.") from None
        return self.check(snapshot)
