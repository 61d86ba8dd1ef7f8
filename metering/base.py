"""What a limit store is asked (`LimitTicket`), what it answers (`AdmitResult`, `SettleResult`), and the budget
periods.

All limits are per minute (`WINDOW_MS`). Money is in integer units of 10⁻⁸ USD (`usage.pricing`).
"""

import calendar
import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

WINDOW_MS = 60_000

# AdmitResult.status
ADMITTED = 0
REFUSED_REQUESTS = 1
REFUSED_TOKENS = 2
REFUSED_CONCURRENCY = 3
REFUSED_BUDGET = 4
NEED_BUDGET_INIT = 5  # Redis has no counter for this budget period: call again with `BudgetHold.initial`
REFUSED_TOKENS_NEVER = 6  # the request alone is more than the tokens/min limit: it can never pass


class StoreUnavailable(Exception):
    """The store could not be asked (Redis unreachable or timing out, database error)."""


@dataclass(frozen=True, slots=True)
class BudgetWindow:
    """The budget period a moment falls in: its `label` (part of the counter's name), its UTC start, and when it
    renews (None for `total`)."""

    period: str
    label: str
    start: datetime | None
    renews_at: datetime | None

    @classmethod
    def at(cls, period: str, now: datetime) -> "BudgetWindow":
        now = now.astimezone(UTC)
        # Every admission of a key with a budget asks: the window of a UTC day is computed once (it is immutable).
        return _budget_window(period, now.year, now.month, now.day)

    def ttl_seconds(self, now: datetime) -> int:
        """How long a store keeps this period's counter: a day past its end (late settlements), 0 = forever."""
        if self.renews_at is None:
            return 0
        return int((self.renews_at - now).total_seconds()) + 86_400


@functools.lru_cache(maxsize=64)
def _budget_window(period: str, year: int, month: int, day: int) -> BudgetWindow:
    if period == "day":
        start = datetime(year, month, day, tzinfo=UTC)
        return BudgetWindow(period, start.strftime("%Y-%m-%d"), start, start + timedelta(days=1))
    if period == "month":
        start = datetime(year, month, 1, tzinfo=UTC)
        days = calendar.monthrange(year, month)[1]
        return BudgetWindow(period, start.strftime("%Y-%m"), start, start + timedelta(days=days))
    return BudgetWindow("total", "total", None, None)


@dataclass(slots=True)
class BudgetHold:
    """A budget reservation: `reserve` units against `cap` units for the key's current `window`.

    `initial` is the spend already recorded in the database for this window; the Redis store asks for it (status
    NEED_BUDGET_INIT) only when its counter is missing, so the hot path does not query the database.
    """

    cap: int
    reserve: int
    window: BudgetWindow
    ttl: int
    initial: int | None = None


TEAM_SCOPE_PREFIX = "team:"


@dataclass(slots=True)
class LimitTicket:
    """Every limit one request is admitted against, all or nothing. A None limit is not checked.

    A key in a team carries its team's limits as a second ticket in `team` (scope `team:<id>`): the store admits
    the request against both in the same atomic call, or against neither.
    """

    key_prefix: str
    request_id: str
    # Whose counters: the key's lineage (the prefix of the first key of a rotation chain), so that rotating a
    # key neither resets its spend nor doubles its limits while old and new key both work in the grace period;
    # `team:<id>` for a team's.
    scope: str = ""
    rpm: int | None = None
    tpm: int | None = None
    tokens: int = 0
    max_concurrent: int | None = None
    hold_concurrency: bool = True  # False: only check that a slot is free (DRF's allow_request)
    budget: BudgetHold | None = None
    # What a refusal names: "key <prefix>" or "team <name>".
    subject: str = ""
    # The Redis hash tag of its counters: its scope, or for a key in a team the team's scope, so that a key's
    # counters and its team's can live in one Redis Cluster slot (a Lua script's keys must).
    tag: str = ""
    team: "LimitTicket | None" = None

    def __post_init__(self):
        self.scope = self.scope or self.key_prefix
        self.subject = self.subject or f"key {self.key_prefix}"
        self.tag = self.tag or self.scope

    @property
    def own_limits(self) -> bool:
        return (
            self.rpm is not None or self.tpm is not None or self.max_concurrent is not None or self.budget is not None
        )

    @property
    def limited(self) -> bool:
        return self.own_limits or (self.team is not None and self.team.own_limits)

    def parts(self) -> list["LimitTicket"]:
        """The tickets one admission evaluates together: the key's, then its team's (if it has one)."""
        return [self] if self.team is None else [self, self.team]


@dataclass(slots=True)
class AdmitResult:
    """The store's answer. Counts include this request when admitted; `*_reset_ms` is the time until the oldest
    counted entry leaves the window (for a refusal on that dimension: until this request would fit)."""

    status: int
    rpm_count: int = 0
    rpm_reset_ms: int = 0
    tpm_used: int = 0
    tpm_reset_ms: int = 0
    concurrent: int = 0
    retry_ms: int = 0
    spent: int = 0
    reserved: int = 0
    extra: dict = field(default_factory=dict)  # store-specific state that settle needs
    team: "AdmitResult | None" = None  # the team's counts, for a key in a team
    refused_by_team: bool = False

    @property
    def admitted(self) -> bool:
        return self.status == ADMITTED


@dataclass(slots=True)
class SettleResult:
    tpm_used: int | None = None
    tpm_reset_ms: int = 0
    team: "SettleResult | None" = None


class LimitStore:
    """Interface of a store. Both calls raise `StoreUnavailable` when the store cannot be reached."""

    async def admit(self, ticket: LimitTicket) -> AdmitResult:
        raise NotImplementedError

    async def settle(self, ticket: LimitTicket, admitted: AdmitResult, *, tokens: int, cost: int) -> SettleResult:
        """Replace the token reservation by `tokens`, free the concurrency slot, move the budget reservation to
        spend at `cost` units. Safe to repeat: a second call changes nothing more."""
        raise NotImplementedError


def budget_spent_in_database(scope: str, window: BudgetWindow) -> int:
    """The spend the database records for a key lineage (or, for a scope `team:<id>`, for the keys now in that team)
    in a budget period, in units (sync; call off the loop). Summed from the daily usage rollups (budget periods
    are whole UTC days): a few rows per key, model and day, however many requests there were."""
    from django.db.models import Sum

    from apikeys.models import APIKey
    from usage.models import UsageDailyRollup

    if scope.startswith(TEAM_SCOPE_PREFIX):
        prefixes = APIKey.objects.filter(team_id=int(scope[len(TEAM_SCOPE_PREFIX) :])).values("prefix")
    else:
        prefixes = APIKey.objects.filter(lineage=scope).values("prefix")
    rollups = UsageDailyRollup.objects.filter(key_prefix__in=prefixes)
    if window.start is not None:
        rollups = rollups.filter(hour__gte=window.start, hour__lt=window.renews_at)
    return int(rollups.aggregate(total=Sum("cost_units"))["total"] or 0)
