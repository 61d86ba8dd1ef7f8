"""Per-key rate limits (requests/min, tokens/min, concurrent requests) and budgets, admitted in one atomic step.

The limits are DRF throttle classes (`RequestRateThrottle`, `TokenRateThrottle`, `ConcurrencyThrottle`; the view
lists them as `throttle_classes = COMPLETION_THROTTLES`), each reading its limit from the key or the project
default. DRF would check them one by one, and a request refused by the third would already have been counted by
the first; so the view calls `admit()` instead, which gathers every throttle's part and the budget reservation
into one `LimitTicket` and hands it to the store (`metering`) in ONE atomic call: either the request
is counted against everything, or nothing changes. The throttles' own `allow_request`/`wait` (DRF's interface)
go through the same store, for use on other views.

Contract of `admit(*, request, view, key, chat, outcome) -> Admission`:

* over a limit → raises `RateLimited` (429, type `requests` or `tokens`, code `rate_limit_exceeded`, a message
  naming the limit, `Retry-After` = whole seconds until the request would fit, 1 to 60); budget spent →
  `QuotaExceeded` (429 `insufficient_quota`, `x-should-retry: false`, when it renews). Both before any upstream
  call. `outcome.error_type` says which (`rate_limit_requests|tokens|concurrency`, `budget`).
* store unreachable → `ServiceUnavailable` (503), or with `RATE_LIMIT_FAIL_OPEN` the request passes unmetered
  (a warning at most once a minute per process).
* admitted → an `Admission`: `headers` (the `x-ratelimit-*` trios of every limited dimension; the view adds them
  to the response), `prompt_estimate`, and `settle(outcome)`, which the view awaits exactly once when the
  upstream has answered or failed: it prices the request (`outcome.cost_usd`), replaces the token reservation by
  the real usage, frees the concurrency slot and turns the budget reservation into spend.

Token reservations: the prompt (tiktoken estimate) plus `max_completion_tokens`/`max_tokens` x `n`, or, when the
request sets neither, `RATE_LIMIT_DEFAULT_MAX_TOKENS` x `n` capped to what the key's limit leaves after the
prompt. Budget reservations: the worst-case cost, prompt estimate x input price + (max tokens, else the price
row's `max_output_tokens`) x `n` x output price.
"""

import asyncio
import logging
import math
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import DatabaseError
from rest_framework.throttling import BaseThrottle

from completions.tokens import estimate_prompt_tokens
from core.errors import InvalidRequest, QuotaExceeded, RateLimited, ServiceUnavailable
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
from .base import BudgetWindow, budget_spent_in_database

logger = logging.getLogger("tollgate.limits")

MAX_RETRY_AFTER = 60
SETTLE_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


# THROTTLES


class KeyThrottle(BaseThrottle):
    """One per-key limit. Subclasses set `scope`, `key_field` (the APIKey field) and `default_setting`.

    `get_limit(key)` → the key's own value, else the project default, else None (unlimited).
    `contribute(ticket, …)` puts this limit into the ticket that `admit` evaluates atomically.
    """

    scope = ""
    key_field = ""
    default_setting = ""
    timer = time.time

    def __init__(self):
        self._retry_at: float | None = None

    def get_limit(self, key) -> int | None:
        value = getattr(key, self.key_field, None)
        return value if value is not None else getattr(settings, self.default_setting, None)

    def get_store(self) -> LimitStore:
        return get_limit_store()

    def contribute(self, ticket: LimitTicket, *, key, chat, prompt_estimate: int) -> None:
        raise NotImplementedError

    # DRF's interface, for views that check throttles one by one (the completion view uses `admit`).

    def allow_request(self, request, view) -> bool:
        """Count this request against this one limit (through the same atomic store); True if it fits."""
        key = request.auth
        if key is None or self.get_limit(key) is None:
            return True
        chat, prompt_estimate = _chat_of(request)
        ticket = LimitTicket(key_prefix=key.prefix, scope=key.lineage, request_id=f"drf_{uuid.uuid4().hex}")
        self.contribute(ticket, key=key, chat=chat, prompt_estimate=prompt_estimate)
        ticket.hold_concurrency = False  # nothing would free the slot: only check that one is free
        try:
            result = async_to_sync(self.get_store().admit)(ticket)
        except StoreUnavailable as exc:
            if settings.RATE_LIMIT_FAIL_OPEN:
                _warn_store_down(exc)
                return True
            raise ServiceUnavailable(STORE_DOWN_MESSAGE, headers={"Retry-After": "1"}) from None
        self._retry_at = None if result.admitted else self.timer() + result.retry_ms / 1000
        return result.admitted

    def wait(self) -> float | None:
        if self._retry_at is None:
            return None
        return max(self._retry_at - self.timer(), 0.0)


class RequestRateThrottle(KeyThrottle):
    """Requests per minute (`APIKey.rpm`, default `RATE_LIMIT_DEFAULT_RPM`)."""

    scope = "requests"
    key_field = "rpm"
    default_setting = "RATE_LIMIT_DEFAULT_RPM"

    def contribute(self, ticket, *, key, chat, prompt_estimate):
        ticket.rpm = self.get_limit(key)


class TokenRateThrottle(KeyThrottle):
    """Tokens per minute (`APIKey.tpm`, default `RATE_LIMIT_DEFAULT_TPM`): prompt + reserved completion tokens."""

    scope = "tokens"
    key_field = "tpm"
    default_setting = "RATE_LIMIT_DEFAULT_TPM"

    def contribute(self, ticket, *, key, chat, prompt_estimate):
        limit = self.get_limit(key)
        if limit is None:
            return
        ticket.tpm = limit
        ticket.tokens = prompt_estimate + (completion_reservation(chat, prompt_estimate, limit) if chat else 0)


class ConcurrencyThrottle(KeyThrottle):
    """Requests in flight at once (`APIKey.max_concurrent`, default `RATE_LIMIT_DEFAULT_MAX_CONCURRENT`)."""

    scope = "concurrency"
    key_field = "max_concurrent"
    default_setting = "RATE_LIMIT_DEFAULT_MAX_CONCURRENT"

    def contribute(self, ticket, *, key, chat, prompt_estimate):
        ticket.max_concurrent = self.get_limit(key)


COMPLETION_THROTTLES: list = [RequestRateThrottle, TokenRateThrottle, ConcurrencyThrottle]


def _chat_of(request):
    from completions.validation import parse_chat_request

    try:
        chat = parse_chat_request(request._request.body)
    except (InvalidRequest, AttributeError):
        return None, 0
    return chat, estimate_prompt_tokens(chat.data["messages"])


def completion_reservation(chat, prompt_estimate: int, limit: int | None) -> int:
    """Completion tokens to reserve: the request's maximum x n, else the default x n capped to what `limit`
    leaves after the prompt (a request without max_tokens is not refused as too large by the default alone)."""
    choices = chat.data.get("n") or 1
    if chat.max_output_tokens is not None:
        return chat.max_output_tokens * choices
    reserve = settings.RATE_LIMIT_DEFAULT_MAX_TOKENS * choices
    if limit is not None:
        reserve = min(reserve, max(limit - prompt_estimate, 0))
    return reserve


def budget_hold(key, chat, prompt_estimate: int, now: datetime) -> BudgetHold | None:
    """The worst-case cost of this request as a reservation against the key's budget (None: no budget)."""
    if key.budget_usd is None:
        return None
    window = BudgetWindow.at(key.budget_period, now)
    worst = pricing.worst_case_cost_usd(
        chat.model, prompt_estimate, chat.max_output_tokens, chat.data.get("n") or 1, at=now
    )
    return BudgetHold(
        cap=pricing.usd_to_units(key.budget_usd),
        reserve=pricing.usd_to_units(worst, round_up=True),
        window=window,
        ttl=window.ttl_seconds(now),
    )


# ADMISSION


@dataclass(slots=True, eq=False)
class Admission:
    """An admitted request. `headers` go on its response; `settle(outcome)` is awaited exactly once after it."""

    prompt_estimate: int
    headers: dict = field(default_factory=dict)
    model: str = ""
    ticket: LimitTicket | None = None
    result: AdmitResult | None = None
    store: LimitStore | None = None
    settled: bool = False

    async def settle(self, outcome) -> None:
        """Price the request (`outcome.cost_usd`) and settle its reservations to its real usage. Never raises
        for a store failure: the settlement is retried in the background, and at worst the slot expires."""
        if self.settled:
            return
        self.settled = True
        outcome.cost_usd = pricing.cost_usd(
            self.model or outcome.model, outcome.prompt_tokens, outcome.completion_tokens, outcome.started_at
        )
        if self.ticket is None:
            return
        tokens = outcome.prompt_tokens + outcome.completion_tokens
        cost = pricing.usd_to_units(outcome.cost_usd)
        # Shielded: a client that disconnects cancels the view's task, but its slot must still be freed.
        task = asyncio.ensure_future(self.store.settle(self.ticket, self.result, tokens=tokens, cost=cost))
        try:
            settled = await asyncio.shield(task)
        except StoreUnavailable as exc:
            _warn_store_down(exc, action="settle")
            _settle_later(self.store, self.ticket, self.result, tokens, cost)
            return
        except Exception:
            logger.exception("limits: settling request %s failed", self.ticket.request_id)
            return
        if settled.tpm_used is not None and self.ticket.tpm is not None:
            self.headers["x-ratelimit-remaining-tokens"] = str(max(self.ticket.tpm - settled.tpm_used, 0))
            self.headers["x-ratelimit-reset-tokens"] = format_duration(settled.tpm_reset_ms)


async def admit(*, request, view, key, chat, outcome) -> Admission:
    """Admit the request against every limit of `key` and its budget, atomically (see the module docstring)."""
    prompt_estimate = estimate_prompt_tokens(chat.data["messages"])
    book = pricing.get_price_book()
    if not book.loaded or book.refresh_due():
        await book.aensure_fresh()
    admission = Admission(prompt_estimate=prompt_estimate, model=chat.model)
    ticket = LimitTicket(key_prefix=key.prefix, scope=key.lineage, request_id=outcome.request_id)
    for throttle in view.get_throttles():
        throttle.contribute(ticket, key=key, chat=chat, prompt_estimate=prompt_estimate)
    ticket.budget = budget_hold(key, chat, prompt_estimate, datetime.now(UTC))
    if not ticket.limited:
        return admission

    store = get_limit_store()
    try:
        result = await store.admit(ticket)
        if result.status == NEED_BUDGET_INIT:
            ticket.budget.initial = await _spent_in_database(ticket)
            result = await store.admit(ticket)
    except StoreUnavailable as exc:
        if settings.RATE_LIMIT_FAIL_OPEN:
            _warn_store_down(exc)
            return admission
        _warn_store_down(exc)
        outcome.error_type = "service_unavailable"
        raise ServiceUnavailable(STORE_DOWN_MESSAGE, headers={"Retry-After": "1"}) from None

    headers = rate_limit_headers(ticket, result)
    if not result.admitted:
        raise refusal(ticket, result, headers, outcome)
    admission.headers = headers
    admission.ticket = ticket
    admission.result = result
    admission.store = store
    return admission


STORE_DOWN_MESSAGE = "The rate limiter is unavailable, so the request was not sent upstream. Please retry shortly."


async def _spent_in_database(ticket: LimitTicket) -> int:
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
    """The `x-ratelimit-*` trio of each limited dimension (an unlimited one has none)."""
    headers = {}
    if ticket.rpm is not None:
        headers["x-ratelimit-limit-requests"] = str(ticket.rpm)
        headers["x-ratelimit-remaining-requests"] = str(max(ticket.rpm - result.rpm_count, 0))
        headers["x-ratelimit-reset-requests"] = format_duration(result.rpm_reset_ms)
    if ticket.tpm is not None:
        headers["x-ratelimit-limit-tokens"] = str(ticket.tpm)
        headers["x-ratelimit-remaining-tokens"] = str(max(ticket.tpm - result.tpm_used, 0))
        headers["x-ratelimit-reset-tokens"] = format_duration(result.tpm_reset_ms)
    return headers


def refusal(ticket: LimitTicket, result: AdmitResult, headers: dict, outcome) -> Exception:
    """The error for a refused request (and `outcome.error_type` set to say why)."""
    prefix = ticket.key_prefix
    status = result.status
    wait = format_duration(result.retry_ms)
    retry_headers = {**headers, "Retry-After": str(retry_after_seconds(result.retry_ms))}
    if status == REFUSED_BUDGET:
        outcome.error_type = "budget"
        return QuotaExceeded(_budget_message(ticket, result), headers=headers)
    if status == REFUSED_REQUESTS:
        outcome.error_type = "rate_limit_requests"
        return RateLimited(
            f"Rate limit reached for key {prefix} on requests per min (RPM): Limit {ticket.rpm}, "
            f"Used {result.rpm_count}, Requested 1. Please try again in {wait}.",
            limit_type="requests",
            headers=retry_headers,
        )
    if status == REFUSED_TOKENS:
        outcome.error_type = "rate_limit_tokens"
        return RateLimited(
            f"Rate limit reached for key {prefix} on tokens per min (TPM): Limit {ticket.tpm}, "
            f"Used {result.tpm_used}, Requested {ticket.tokens}. Please try again in {wait}.",
            limit_type="tokens",
            headers=retry_headers,
        )
    if status == REFUSED_TOKENS_NEVER:
        outcome.error_type = "rate_limit_tokens"
        return RateLimited(
            f"Request too large for key {prefix} on tokens per min (TPM): Limit {ticket.tpm}, "
            f"Requested {ticket.tokens}. The input or output tokens must be reduced (set a lower max_tokens) "
            "for the request to pass.",
            limit_type="tokens",
            headers={**headers, "x-should-retry": "false"},
        )
    if status == REFUSED_CONCURRENCY:
        outcome.error_type = "rate_limit_concurrency"
        return RateLimited(
            f"Too many concurrent requests for key {prefix}: Limit {ticket.max_concurrent}, "
            f"In flight {result.concurrent}. Please try again when one of them has finished.",
            limit_type="requests",
            headers=retry_headers,
        )
    raise AssertionError(f"unknown limiter status {status}")


def _budget_message(ticket: LimitTicket, result: AdmitResult) -> str:
    budget = ticket.budget
    window = budget.window
    usd = pricing.units_to_usd
    per = {"day": "per day (UTC)", "month": "per month (UTC)"}.get(window.period, "in total")
    if window.renews_at is None:
        renews = "It does not renew: ask an administrator to raise it."
    else:
        renews = f"It renews at {window.renews_at:%Y-%m-%d %H:%M} UTC."
    in_flight = f" and ${usd(result.reserved):.4f} reserved by requests in flight" if result.reserved else ""
    return (
        f"The budget of key {ticket.key_prefix} is spent: ${usd(result.spent):.4f} used{in_flight} of "
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
