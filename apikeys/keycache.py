"""A per-process cache of API keys, so that a known key costs no database query on the hot path.

Entries are immutable `KeySnapshot`s keyed by the SHA-512 of the raw key. Each worker polls
`KeyGeneration` (one indexed single-row read) at most every `KEY_CACHE_CHECK_SECONDS` and drops the whole cache
when the value moved: a revocation, rotation or edit made on any instance reaches every worker of every instance
within that interval. Expiry and the end of a rotation grace period need no invalidation at all: each snapshot
carries its `valid_until` and is checked against the clock on every request.
"""

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

from django.db import close_old_connections, connection
from django.db.utils import DatabaseError

from .models import APIKey, KeyGeneration

logger = logging.getLogger("tollgate.keys")


@dataclass(frozen=True, slots=True)
class TeamSnapshot:
    """What a request needs to know about its key's team: its shared limits, budget and allowlist."""

    id: int
    name: str
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    allowed_models: frozenset = frozenset()
    budget_usd: Decimal | None = None
    budget_period: str = "month"

    @classmethod
    def from_model(cls, team) -> "TeamSnapshot":
        return cls(
            id=team.pk,
            name=team.name,
            rpm=team.rpm,
            tpm=team.tpm,
            max_concurrent=team.max_concurrent,
            allowed_models=frozenset(team.allowed_models or ()),
            budget_usd=team.budget_usd,
            budget_period=team.budget_period,
        )


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    """What a request needs to know about its key, frozen at load time."""

    id: str
    prefix: str
    name: str
    rpm: int | None
    tpm: int | None
    max_concurrent: int | None
    allowed_models: frozenset
    expiry: float | None  # epoch seconds
    grace_until: float | None  # epoch seconds
    revoked: bool
    budget_usd: Decimal | None
    budget_period: str
    lineage: str = ""  # whose rate-limit and budget counters (see APIKey.lineage)
    team: TeamSnapshot | None = None
    hosted_tools: frozenset = frozenset()  # hosted tool types it may use; empty = all

    # DRF's IsAuthenticated and request.user checks look for this.
    is_authenticated = True

    @property
    def valid_until(self) -> float | None:
        ends = [t for t in (self.expiry, self.grace_until) if t is not None]
        return min(ends) if ends else None

    @property
    def model_allowlist(self) -> frozenset | None:
        """The models this key may use: its allowlist intersected with its team's; None = every model."""
        lists = [m for m in (self.allowed_models, self.team.allowed_models if self.team else None) if m]
        if not lists:
            return None
        return lists[0] & lists[1] if len(lists) == 2 else lists[0]

    def allows_model(self, model: str) -> bool:
        """The key's allowlist intersected with its team's (an empty list allows every model)."""
        if self.allowed_models and model not in self.allowed_models:
            return False
        team = self.team
        return team is None or not team.allowed_models or model in team.allowed_models

    def refused_tools(self, tool_types) -> list[str]:
        """The hosted tool types of `tool_types` this key may not use, sorted (none when it may use all)."""
        if not self.hosted_tools:
            return []
        return sorted(set(tool_types) - self.hosted_tools)

    @classmethod
    def from_model(cls, key: APIKey) -> "KeySnapshot":
        return cls(
            id=key.pk,
            prefix=key.prefix,
            name=key.name,
            rpm=key.rpm,
            tpm=key.tpm,
            max_concurrent=key.max_concurrent,
            allowed_models=frozenset(key.allowed_models or ()),
            expiry=key.expiry_date.timestamp() if key.expiry_date else None,
            grace_until=key.grace_until.timestamp() if key.grace_until else None,
            revoked=key.revoked,
            budget_usd=key.budget_usd,
            budget_period=key.budget_period,
            lineage=key.lineage or key.prefix,
            team=TeamSnapshot.from_model(key.team) if key.team_id else None,
            hosted_tools=frozenset(key.hosted_tools or ()),
        )


def key_digest(raw_key: str) -> str:
    """The cache key for a raw key; never logged, never stored."""
    return hashlib.sha512(raw_key.encode("utf-8", "surrogatepass")).hexdigest()


# The hash every lookup compares against when the prefix is unknown, so that a wrong key costs the same time
# whether or not its prefix exists.
_DUMMY_HASH = APIKey.objects.key_generator.hash("00000000.00000000000000000000000000000000")


class KeyCache:
    """Process-wide key cache. `get` is safe to call from the event loop; `load` and `refresh` touch the DB."""

    timer = time.monotonic
    max_entries = 100_000

    def __init__(self, check_seconds: float):
        self.check_seconds = check_seconds
        self._entries: dict[str, KeySnapshot | None] = {}
        self._generation: int | None = None
        self._checked_at = float("-inf")
        self._refresh_lock = threading.Lock()

    def get(self, digest: str):
        """The cached snapshot, None for a known-bad key, or KeyError when the key was never looked up."""
        return self._entries[digest]

    def refresh_due(self) -> bool:
        return self.timer() - self._checked_at >= self.check_seconds

    def refresh(self) -> None:
        """Drop every entry if any key changed since the last check (DB read; call off the event loop)."""
        if not self._refresh_lock.acquire(blocking=False):
            return  # Another thread is already checking.
        try:
            if not self.refresh_due():
                return
            generation = _db_call(lambda: KeyGeneration.objects.filter(pk=1).values_list("value", flat=True).first())
            self._checked_at = self.timer()
            if generation != self._generation:
                self._entries.clear()
                self._generation = generation
        except DatabaseError:
            # Keep serving from the cache while the database is away: known keys keep working, and expiry is
            # still checked locally. Retried on the next request after check_seconds.
            self._checked_at = self.timer()
            logger.warning("key cache: database unreachable, serving cached keys")
        finally:
            self._refresh_lock.release()

    def load(self, raw_key: str, digest: str) -> KeySnapshot | None:
        """Look a raw key up in the database and cache the answer (None for no such key)."""
        prefix, _, _ = raw_key.partition(".")
        generator = APIKey.objects.key_generator
        found = _db_call(lambda: APIKey.objects.select_related("team").filter(prefix=prefix).first())
        valid = generator.verify(raw_key, found.hashed_key if found else _DUMMY_HASH)
        snapshot = KeySnapshot.from_model(found) if (found is not None and valid) else None
        if len(self._entries) >= self.max_entries:
            # Bound memory against floods of random keys (each wrong key is cached as None): start over.
            self._entries.clear()
        self._entries[digest] = snapshot
        return snapshot

    def clear(self) -> None:
        self._entries.clear()
        self._generation = None
        self._checked_at = float("-inf")


def _db_call(fn):
    """Run a read, recovering once from a connection the database dropped (restart, failover)."""
    close_old_connections()
    try:
        return fn()
    except DatabaseError:
        connection.close()
        return fn()


key_cache: KeyCache | None = None


def get_key_cache() -> KeyCache:
    global key_cache
    if key_cache is None:
        from django.conf import settings

        key_cache = KeyCache(settings.KEY_CACHE_CHECK_SECONDS)
    return key_cache
