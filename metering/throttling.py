"""Per-key rate limits (requests/min, tokens/min, concurrent requests) and budgets, admitted in one atomic step,
together with those of the key's team.

The limits are DRF throttle classes (`RequestRateThrottle`, `TokenRateThrottle`, `ConcurrencyThrottle`), each
reading its limit from the key or the project default. DRF would check them one by one, and a request refused by
the third would already have been counted by the first; so the relay does not call DRF's `check_throttles`.
Instead `admit()` gathers every throttle's part and the budget reservation into one `LimitTicket` and hands it to
the store (`metering`) in ONE atomic call: either the request is counted against everything, or nothing changes.

What a request asks for is a `Demand`, the same for every endpoint: its model, its estimated input tokens, how
many output tokens it may generate, and whether it is priced. The endpoint builds it; nothing here knows about
chat messages or embeddings.

Contract of `admit(*, key, demand, outcome, throttles=DEFAULT_THROTTLES)`, an async context manager:

* entering it admits the request, or raises before anything is counted: over a limit → `RateLimited` (429, type
  `requests` or `tokens`, code `rate_limit_exceeded`, a message naming the limit, `Retry-After` = whole seconds
  until the request would fit, 1 to 60); budget spent → `QuotaExceeded` (429 `insufficient_quota`,
  `x-should-retry: false`, when it renews); store unreachable → `ServiceUnavailable` (503), or with
  `RATE_LIMIT_FAIL_OPEN` the request passes unmetered (a warning at most once a minute per process).
  `outcome.error_type` says which.
* inside it, `admission.headers` are the `x-ratelimit-*` trios of every limited dimension (for the response).
* leaving it, on every path (an answer, an exception, a cancellation, a generator closed), settles exactly once:
  it prices the request from the outcome's usage (`outcome.cost_usd`), replaces the token reservation by the
  real usage, frees the concurrency slot and turns the budget reservation into spend. A settlement the store
  cannot take is retried in the background; at worst the slot expires by itself.

Token reservations: the input estimate plus, for an endpoint with output, the request's maximum output tokens x
choices, or `RATE_LIMIT_DEFAULT_MAX_TOKENS` x choices capped to what the key's limit leaves after the input.
Budget reservations: the worst-case cost, input estimate x input price + (max tokens, else the price row's
`max_output_tokens`) x choices x output price; 0 for an unpriced endpoint.
"""

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError
from rest_framework.throttling import BaseThrottle

from core.errors import QuotaExceeded, RateLimited, ServiceUnavailable
from core.outcome import ErrorType
from usage import pricing

from . import (
    NEED_BUDGET_INIT,
    REFUSED_BUDGET,
    REFUSED_CONCURRENCY,
    REFUSED_REQUESTS,
    REFUSED_TOKENS,
    REFUSED_TOKENS_NEVER,
    AdmitResult,
    BudgetHold,
    LimitStore,
    LimitTicket,
    StoreUnavailable,
    get_limit_store,
)
from .base import TEAM_SCOPE_PREFIX, BudgetWindow, budget_spent_in_database

logger = logging.getLogger("tollgate.limits")

MAX_RETRY_AFTER = 60
SETTLE_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


@dataclass(slots=True, frozen=True)
class Demand:
    """What one request asks of its key's limits and budget, whatever its endpoint.

    `input_tokens` is the estimate of what the upstream will count as input; `max_output_tokens` the request's
    own bound per choice (None: it sets none); `choices` how many outputs are generated (`n`, `best_of`).
    `output` is False for endpoints that generate no tokens (embeddings, moderations); `priced` is False for
    endpoints that cost nothing (moderations): they reserve and settle no money.
    """

    model: str
    input_tokens: int
    max_output_tokens: int | None = None
    choices: int = 1
    output: bool = True
    priced: bool = True
    # The hosted tool types the request names (`web_search`, ...; priced per call) and its bound on their calls.
    hosted_tools: tuple[str, ...] = ()
    max_tool_calls: int | None = None


# THROTTLES


class KeyThrottle(BaseThrottle):
    """One per-key limit. Subclasses set `scope`, `key_field` (the APIKey and Team field) and `default_setting`.

    `get_limit(key)` → the key's own value, else the project default, else None (unlimited).
    `get_team_limit(team)` → the team's value, else None (a team has no project default).
    `contribute(ticket, key=, demand=)` puts this limit into the ticket that `admit` evaluates atomically: the
    key's into the ticket, its team's into `ticket.team` (present when the key is in a team).

    DRF's one-by-one `allow_request` is deliberately not supported: it would count a request against one limit
    while another refuses it. Views admit through `admit()`.
    """

    scope = ""
    key_field = ""
    default_setting = ""

    def get_limit(self, key) -> int | None:
        value = getattr(key, self.key_field, None)
        return value if value is not None else getattr(settings, self.default_setting, None)

    def get_team_limit(self, team) -> int | None:
        return getattr(team, self.key_field, None)

    def contribute(self, ticket: LimitTicket, *, key, demand: Demand) -> None:
        self.contribute_limit(ticket, self.get_limit(key), demand)
        if ticket.team is not None:
            self.contribute_limit(ticket.team, self.get_team_limit(key.team), demand)

    def contribute_limit(self, ticket: LimitTicket, limit: int | None, demand: Demand) -> None:
        """Put `limit` (None: unlimited) into one part of a ticket."""
        raise NotImplementedError

    def allow_request(self, request, view) -> bool:
        raise NotImplementedError("Tollgate's limits are admitted atomically by metering.throttling.admit().")


class RequestRateThrottle(KeyThrottle):
    """Requests per minute (`APIKey.rpm`, default `RATE_LIMIT_DEFAULT_RPM`)."""

    scope = "requests"
    key_field = "rpm"
    default_setting = "RATE_LIMIT_DEFAULT_RPM"

    def contribute_limit(self, ticket, limit, demand):
        ticket.rpm = limit


class TokenRateThrottle(KeyThrottle):
    """Tokens per minute (`APIKey.tpm`, default `RATE_LIMIT_DEFAULT_TPM`): input + reserved output tokens."""

    scope = "tokens"
    key_field = "tpm"
    default_setting = "RATE_LIMIT_DEFAULT_TPM"

    def contribute_limit(self, ticket, limit, demand):
        if limit is None:
            return
        ticket.tpm = limit
        ticket.tokens = demand.input_tokens + output_reservation(demand, limit)


class ConcurrencyThrottle(KeyThrottle):
    """Requests in flight at once (`APIKey.max_concurrent`, default `RATE_LIMIT_DEFAULT_MAX_CONCURRENT`)."""

    scope = "concurrency"
    key_field = "max_concurrent"
    default_setting = "RATE_LIMIT_DEFAULT_MAX_CONCURRENT"

    def contribute_limit(self, ticket, limit, demand):
        ticket.max_concurrent = limit


DEFAULT_THROTTLES: tuple = (RequestRateThrottle, TokenRateThrottle, ConcurrencyThrottle)


def output_reservation(demand: Demand, limit: int | None) -> int:
    """Output tokens to reserve: the request's maximum x choices, else the default x choices capped to what `limit`
    leaves after the input (a request without max_tokens is not refused as too large by the default alone)."""
    if not demand.output:
        return 0
    if demand.max_output_tokens is not None:
        return demand.max_output_tokens * demand.choices
    reserve = settings.RATE_LIMIT_DEFAULT_MAX_TOKENS * demand.choices
    if limit is not None:
        reserve = min(reserve, max(limit - demand.input_tokens, 0))
    return reserve


def budget_hold(owner, demand: Demand, now: datetime) -> BudgetHold | None:
    """The worst-case cost of this request as a reservation against the budget of `owner`, a key or a team (None:
    no budget)."""
    if owner.budget_usd is None:
        return None
    window = BudgetWindow.at(owner.budget_period, now)
    if not demand.priced:
        worst = 0
    else:
        max_output = demand.max_output_tokens if demand.output else 0
        worst_usd = pricing.worst_case_cost_usd(demand.model, demand.input_tokens, max_output, demand.choices, at=now)
        if demand.hosted_tools:
            # One call of each hosted tool named, or `max_tool_calls` of the dearest: a request that names hosted
            # tools without `max_tool_calls` may call them more often than reserved (settled to the real count).
            calls = demand.max_tool_calls if demand.max_tool_calls is not None else len(demand.hosted_tools)
            worst_usd += pricing.worst_case_tool_cost_usd(demand.hosted_tools, calls, at=now)
        worst = pricing.usd_to_units(worst_usd, round_up=True)
    return BudgetHold(
        cap=pricing.usd_to_units(owner.budget_usd),
        reserve=worst,
        window=window,
        ttl=window.ttl_seconds(now),
    )


# ADMISSION


class Admission:
    """One request's admission (see the module docstring): `async with admit(...) as admission:`.

    `headers` go on its response. Leaving the block settles exactly once, from the outcome's usage.
    """

    __slots__ = (
        "demand",
        "handed_over",
        "headers",
        "key",
        "outcome",
        "result",
        "settled",
        "store",
        "throttles",
        "ticket",
    )

    def __init__(self, *, key, demand: Demand, outcome, throttles=DEFAULT_THROTTLES):
        self.key = key
        self.demand = demand
        self.outcome = outcome
        self.throttles = throttles
        self.ticket: LimitTicket | None = None
        self.store: LimitStore | None = None
        self.result: AdmitResult | None = None
        self.headers: dict = {}
        self.settled = False
        self.handed_over = False

    async def __aenter__(self) -> "Admission":
        book = pricing.get_price_book()
        if not book.loaded or book.refresh_due():
            await book.aensure_fresh()
        key = self.key
        outcome = self.outcome
        ticket = LimitTicket(key_prefix=key.prefix, scope=key.lineage, request_id=outcome.request_id)
        team = getattr(key, "team", None)
        if team is not None:
            ticket.team = LimitTicket(
                key_prefix=key.prefix,
                request_id=outcome.request_id,
                scope=f"{TEAM_SCOPE_PREFIX}{team.id}",
                subject=f"team {team.name}",
            )
            ticket.tag = ticket.team.scope
        for throttle_class in self.throttles:
            throttle_class().contribute(ticket, key=key, demand=self.demand)
        now = datetime.now(UTC)
        ticket.budget = budget_hold(key, self.demand, now)
        if ticket.team is not None:
            ticket.team.budget = budget_hold(team, self.demand, now)
        if not ticket.limited:
            return self
        store = get_limit_store()
        try:
            result = await store.admit(ticket)
            # A missing budget counter (the key's, then perhaps the team's): read its spend, ask again.
            for _ in range(2):
                if result.status != NEED_BUDGET_INIT:
                    break
                part = ticket.team if result.refused_by_team and ticket.team is not None else ticket
                assert part.budget is not None  # only a budget's counter needs initialising
                part.budget.initial = await _spent_in_database(part)
                result = await store.admit(ticket)
            if result.status == NEED_BUDGET_INIT:
                raise StoreUnavailable("a budget counter could not be initialised")
        except StoreUnavailable as exc:
            _warn_store_down(exc)
            if settings.RATE_LIMIT_FAIL_OPEN:
                return self  # unmetered: nothing to settle
            outcome.error_type = ErrorType.SERVICE_UNAVAILABLE
            raise ServiceUnavailable(STORE_DOWN_MESSAGE, headers={"Retry-After": "1"}) from None
        headers = rate_limit_headers(ticket, result)
        if not result.admitted:
            raise refusal(ticket, result, headers, outcome)
        self.ticket, self.store, self.result = ticket, store, result
        self.headers = headers
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        if not self.handed_over:
            await self.settle()

    def hand_over(self) -> dict:
        """Leave the settlement to someone else (the follower of a background response): leaving the block then
        settles nothing. Returns the admission as JSON-ready data for `Admission.resume`."""
        self.handed_over = True
        return {
            "demand": asdict(self.demand),
            "ticket": None if self.ticket is None else _ticket_data(self.ticket),
            "result": None if self.result is None else asdict(self.result),
        }

    def take_back(self) -> None:
        """Undo `hand_over` (the hand-over could not be recorded): leaving the block settles again."""
        self.handed_over = False

    @classmethod
    def resume(cls, state: dict, *, outcome) -> "Admission":
        """An admission handed over (`hand_over`), in any process, ready to `settle()` once from `outcome`."""
        admission = cls(key=None, demand=_demand_from(state["demand"]), outcome=outcome)
        if state.get("ticket") is not None and state.get("result") is not None:
            admission.ticket = _ticket_from(state["ticket"])
            admission.result = AdmitResult(**state["result"])
            admission.store = get_limit_store()
        return admission

    async def settle(self) -> None:
        """Price the request (`outcome.cost_usd`) and settle its reservations to its real usage, once."""
        if self.settled:
            return
        self.settled = True
        outcome = self.outcome
        demand = self.demand
        if demand.priced:
            outcome.cost_usd = pricing.cost_usd(
                demand.model,
                outcome.prompt_tokens,
                outcome.completion_tokens,
                outcome.started_at,
                cached_tokens=outcome.cached_tokens,
                upstream=outcome.upstream,
            ) + pricing.tool_calls_cost_usd(outcome.hosted_tool_calls, outcome.started_at)
        if self.ticket is None or self.result is None or self.store is None:
            return
        tokens = outcome.prompt_tokens + outcome.completion_tokens
        cost = pricing.usd_to_units(outcome.cost_usd)
        # Shielded: a client that disconnects cancels the relay's task, but its slot must still be freed.
        task = asyncio.ensure_future(self.store.settle(self.ticket, self.result, tokens=tokens, cost=cost))
        try:
            settled = await asyncio.shield(task)
        except StoreUnavailable as exc:
            _warn_store_down(exc, action="settle")
            _settle_later(self.store, self.ticket, self.result, tokens, cost)
            return
        except asyncio.CancelledError:
            raise  # the shielded settlement goes on by itself
        except Exception:
            logger.exception("limits: settling request %s failed", self.ticket.request_id)
            return
        tightest = None
        for part, counted in ((self.ticket, settled), (self.ticket.team, settled.team)):
            if part is None or counted is None or counted.tpm_used is None or part.tpm is None:
                continue
            remaining = max(part.tpm - counted.tpm_used, 0)
            if tightest is None or remaining < tightest[0]:
                tightest = (remaining, counted.tpm_reset_ms)
        if tightest is not None:
            self.headers["x-ratelimit-remaining-tokens"] = str(tightest[0])
            self.headers["x-ratelimit-reset-tokens"] = format_duration(tightest[1])


def _ticket_data(ticket: LimitTicket) -> dict:
    data = asdict(ticket)
    if ticket.budget is not None:
        data["budget"]["window"] = {
            "period": ticket.budget.window.period,
            "label": ticket.budget.window.label,
            "start": None if ticket.budget.window.start is None else ticket.budget.window.start.isoformat(),
            "renews_at": None if ticket.budget.window.renews_at is None else ticket.budget.window.renews_at.isoformat(),
        }
    return data


def _ticket_from(data: dict) -> LimitTicket:
    data = dict(data)
    budget = data.pop("budget", None)
    ticket = LimitTicket(**data)
    if budget is not None:
        window = budget.pop("window")
        ticket.budget = BudgetHold(
            **budget,
            window=BudgetWindow(
                period=window["period"],
                label=window["label"],
                start=None if window["start"] is None else datetime.fromisoformat(window["start"]),
                renews_at=None if window["renews_at"] is None else datetime.fromisoformat(window["renews_at"]),
            ),
        )
    return ticket


def _demand_from(data: dict) -> Demand:
    return Demand(**{**data, "hosted_tools": tuple(data.get("hosted_tools") or ())})


def admit(*, key, demand: Demand, outcome, throttles=DEFAULT_THROTTLES) -> Admission:
    """The admission of one request against every limit of `key` and its budget (see the module docstring).

    Use it as `async with admit(...) as admission:`; entering admits (or raises), leaving settles once.
    """
    return Admission(key=key, demand=demand, outcome=outcome, throttles=throttles)


STORE_DOWN_MESSAGE = "The rate limiter is unavailable, so the request was not sent upstream. Please retry shortly."


async def _spent_in_database(ticket: LimitTicket) -> int:
    assert ticket.budget is not None
    try:
        return await sync_to_async(budget_spent_in_database, thread_sensitive=False)(ticket.scope, ticket.budget.window)
    except DatabaseError as exc:
        raise StoreUnavailable(f"database: {exc}") from exc


# ANSWERS


def format_duration(ms: int) -> str:
    """A duration as OpenAI writes it in `x-ratelimit-reset-*` (Go's time.Duration): 250ms, 1s, 1.5s, 6m0s."""
    ms = max(int(ms), 0)
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds = f"{rest / 1000:.3f}".rstrip("0").rstrip(".")
    text = f"{hours}h" if hours else ""
    if hours or minutes:
        text += f"{minutes}m"
    return f"{text}{seconds}s"


def retry_after_seconds(ms: int) -> int:
    """Whole seconds until the request fits, as `Retry-After` carries it: rounded up, 1 to 60."""
    return min(max(math.ceil(ms / 1000), 1), MAX_RETRY_AFTER)


def rate_limit_headers(ticket: LimitTicket, result: AdmitResult) -> dict:
    """The `x-ratelimit-*` trio of each limited dimension (an unlimited one has none). For a key in a team, each
    dimension shows whichever of the key's and the team's limits has less left."""
    pairs = [(ticket, result)]
    if ticket.team is not None and result.team is not None:
        pairs.append((ticket.team, result.team))
    headers = {}
    requests = [(p.rpm - r.rpm_count, p.rpm, r.rpm_reset_ms) for p, r in pairs if p.rpm is not None]
    if requests:
        remaining, limit, reset = min(requests, key=lambda item: item[0])
        headers["x-ratelimit-limit-requests"] = str(limit)
        headers["x-ratelimit-remaining-requests"] = str(max(remaining, 0))
        headers["x-ratelimit-reset-requests"] = format_duration(reset)
    tokens = [(p.tpm - r.tpm_used, p.tpm, r.tpm_reset_ms) for p, r in pairs if p.tpm is not None]
    if tokens:
        remaining, limit, reset = min(tokens, key=lambda item: item[0])
        headers["x-ratelimit-limit-tokens"] = str(limit)
        headers["x-ratelimit-remaining-tokens"] = str(max(remaining, 0))
        headers["x-ratelimit-reset-tokens"] = format_duration(reset)
    return headers


def refusal(ticket: LimitTicket, result: AdmitResult, headers: dict, outcome) -> Exception:
    """The error for a refused request (and `outcome.error_type` set to say why). The message names whoever is at
    its limit: the key (`key abcd1234`) or its team (`team research`)."""
    if result.refused_by_team and ticket.team is not None and result.team is not None:
        ticket, result = ticket.team, result.team
    subject = ticket.subject
    status = result.status
    wait = format_duration(result.retry_ms)
    retry_headers = {**headers, "Retry-After": str(retry_after_seconds(result.retry_ms))}
    if status == REFUSED_BUDGET:
        outcome.error_type = ErrorType.BUDGET
        return QuotaExceeded(_budget_message(ticket, result), headers=headers)
    if status == REFUSED_REQUESTS:
        outcome.error_type = ErrorType.RATE_LIMIT_REQUESTS
        return RateLimited(
            f"Rate limit reached for {subject} on requests per min (RPM): Limit {ticket.rpm}, "
            f"Used {result.rpm_count}, Requested 1. Please try again in {wait}.",
            limit_type="requests",
            headers=retry_headers,
        )
    if status == REFUSED_TOKENS:
        outcome.error_type = ErrorType.RATE_LIMIT_TOKENS
        return RateLimited(
            f"Rate limit reached for {subject} on tokens per min (TPM): Limit {ticket.tpm}, "
            f"Used {result.tpm_used}, Requested {ticket.tokens}. Please try again in {wait}.",
            limit_type="tokens",
            headers=retry_headers,
        )
    if status == REFUSED_TOKENS_NEVER:
        outcome.error_type = ErrorType.RATE_LIMIT_TOKENS
        return RateLimited(
            f"Request too large for {subject} on tokens per min (TPM): Limit {ticket.tpm}, "
            f"Requested {ticket.tokens}. The input or output tokens must be reduced (set a lower max_tokens) "
            "for the request to pass.",
            limit_type="tokens",
            headers={**headers, "x-should-retry": "false"},
        )
    if status == REFUSED_CONCURRENCY:
        outcome.error_type = ErrorType.RATE_LIMIT_CONCURRENCY
        return RateLimited(
            f"Too many concurrent requests for {subject}: Limit {ticket.max_concurrent}, "
            f"In flight {result.concurrent}. Please try again when one of them has finished.",
            limit_type="requests",
            headers=retry_headers,
        )
    raise AssertionError(f"unknown limiter status {status}")


def _budget_message(ticket: LimitTicket, result: AdmitResult) -> str:
    budget = ticket.budget
    assert budget is not None  # a budget refusal has a budget
    window = budget.window
    usd = pricing.units_to_usd
    per = {"day": "per day (UTC)", "month": "per month (UTC)"}.get(window.period, "in total")
    if window.renews_at is None:
        renews = "It does not renew: ask an administrator to raise it."
    else:
        renews = f"It renews at {window.renews_at:%Y-%m-%d %H:%M} UTC."
    in_flight = f" and ${usd(result.reserved):.4f} reserved by requests in flight" if result.reserved else ""
    return (
        f"The budget of {ticket.subject} is spent: ${usd(result.spent):.4f} used{in_flight} of "
        f"${usd(budget.cap):.4f} {per}, and this request could cost up to ${usd(budget.reserve):.4f}. {renews}"
    )


# STORE FAILURES

_last_warning = {"admit": float("-inf"), "settle": float("-inf")}
_settlements: set = set()


def _warn_store_down(exc: Exception, action: str = "admit") -> None:
    """Log that the store is down, at most once a minute per process and action."""
    now = time.monotonic()
    if now - _last_warning[action] < 60:
        return
    _last_warning[action] = now
    if action == "settle":
        logger.warning("limiter store unavailable while settling (retrying in the background): %s", exc)
    elif settings.RATE_LIMIT_FAIL_OPEN:
        logger.warning("limiter store unavailable: admitting requests unmetered (RATE_LIMIT_FAIL_OPEN): %s", exc)
    else:
        logger.warning("limiter store unavailable: refusing limited requests with 503: %s", exc)


def _settle_later(store, ticket, result, tokens: int, cost: int) -> None:
    """Retry a failed settlement a few times in the background (settling twice changes nothing)."""

    async def retry():
        for delay in SETTLE_RETRY_DELAYS:
            await asyncio.sleep(delay)
            try:
                await store.settle(ticket, result, tokens=tokens, cost=cost)
                return
            except StoreUnavailable:
                continue
        logger.warning(
            "limits: could not settle request %s of key %s; its slot expires by itself",
            ticket.request_id,
            ticket.key_prefix,
        )

    task = asyncio.get_running_loop().create_task(retry())
    _settlements.add(task)
    task.add_done_callback(_settlements.discard)
