"""DRF authentication by `Authorization: Bearer <key>`, the header the openai SDK sends.

djangorestframework-api-key ships only a permission (`HasAPIKey`), which leaves `request.auth` empty; this class
authenticates instead, so `request.auth` is the key's `KeySnapshot`.
"""

import asyncio
import time
import weakref

from asgiref.sync import sync_to_async
from django.db.utils import DatabaseError
from rest_framework import HTTP_HEADER_ENCODING
from rest_framework.authentication import BaseAuthentication

from core.errors import InvalidAPIKey, ServiceUnavailable

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
        # DRF's get_authorization_header reads `request.headers`, which copies every header into a new dict;
        # the one header, read from META and encoded the same way, is all that is needed.
        header = request.META.get("HTTP_AUTHORIZATION", b"")
        if isinstance(header, str):
            header = header.encode(HTTP_HEADER_ENCODING)
        header = header.split()
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
                await _shared(("refresh",), cache.refresh)
            try:
                snapshot = cache.get(digest)
            except KeyError:
                snapshot = await _shared(("load", digest), cache.load, raw, digest)
        except DatabaseError:
            raise ServiceUnavailable("The key store is unreachable; try again shortly.") from None
        return self.check(snapshot)


# Database reads in flight on each event loop, by purpose: concurrent requests that need the same read (the
# periodic generation check, or loading a key every worker just dropped from its cache) wait for one thread
# hop and one query instead of queueing one each on the executor.
_in_flight: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict]" = weakref.WeakKeyDictionary()


async def _shared(purpose: tuple, fn, *args):
    """`await sync_to_async(fn)(*args)`, shared with every caller on this loop that asks for the same purpose."""
    loop = asyncio.get_running_loop()
    pending = _in_flight.setdefault(loop, {})
    future = pending.get(purpose)
    if future is None:
        future = pending[purpose] = asyncio.ensure_future(sync_to_async(fn, thread_sensitive=False)(*args))

        def forget(done):
            pending.pop(purpose, None)
            if not done.cancelled():
                done.exception()  # retrieved here, so that a read nobody waits for any more logs no warning

        future.add_done_callback(forget)
    # A request that goes away must not cancel the read the others are waiting for.
    return await asyncio.shield(future)
