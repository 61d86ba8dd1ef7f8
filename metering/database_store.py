"""The database limit store, for installations without Redis (SQLite by default, or Postgres).

Algorithm (named honestly): a **fixed window** per key for requests/min and tokens/min, anchored at the first
request after the previous window ended (not at clock minutes, so a burst is never split across two windows by
the clock). A fixed window is exact within each window but, unlike the Redis store's sliding log, lets up to
twice the limit through across the boundary of two consecutive windows. Concurrency counts one row per request
in flight (dropped after `RATE_LIMIT_INFLIGHT_EXPIRY_SECONDS`); budgets are spend (a counter row) plus the
reservations of the requests in flight (their rows' values).

Exact across processes and instances: each admission is one transaction that first locks the counter rows of the
key and, for a key in a team, of its team
(`SELECT … FOR UPDATE` in name order on Postgres; on SQLite `BEGIN IMMEDIATE`, set in the settings, serialises
writers), then checks every limit and only then writes, all or nothing. Runs in a worker thread
(`sync_to_async(thread_sensitive=False)`): several admissions of one process proceed in parallel, each on its
thread's own connection. The time is `timer` (time.time) of the process.
"""

import logging
import time

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Count, F, Sum
from django.db.models.functions import Greatest

from metering.models import LimitCounter

from .base import (
    ADMITTED,
    REFUSED_BUDGET,
    REFUSED_CONCURRENCY,
    REFUSED_REQUESTS,
    REFUSED_TOKENS,
    REFUSED_TOKENS_NEVER,
    WINDOW_MS,
    AdmitResult,
    LimitStore,
    LimitTicket,
    SettleResult,
    StoreUnavailable,
    budget_spent_in_database,
)

logger = logging.getLogger("tollgate.limits")

WINDOW = WINDOW_MS / 1000
# Rows of in-flight requests whose worker never settled them are kept this long after they expired (a late
# settlement still charges its spend), then deleted.
STALE_ROW_KEEP_SECONDS = 7 * 86_400
UNINITIALISED = -1.0  # window_end of a budget row whose spend was not yet read from the usage records


class DatabaseLimitStore(LimitStore):
    # A staticmethod, so that `self.timer()` calls it unbound (and type checkers agree); tests set their own on
    # the instance.
    timer = staticmethod(time.time)

    def __init__(self):
        self.stale = settings.RATE_LIMIT_INFLIGHT_EXPIRY_SECONDS

    async def admit(self, ticket: LimitTicket) -> AdmitResult:
        return await sync_to_async(self._guarded, thread_sensitive=False)(self._admit, ticket, self.timer())

    async def settle(self, ticket: LimitTicket, admitted: AdmitResult, *, tokens: int, cost: int) -> SettleResult:
        return await sync_to_async(self._guarded, thread_sensitive=False)(
            self._settle, ticket, self.timer(), admitted, tokens, cost
        )

    def _guarded(self, fn, *args):
        try:
            return fn(*args)
        except DatabaseError as exc:
            # A broken connection is replaced on this thread's next call.
            try:
                connection.close()
            except DatabaseError:
                pass
            raise StoreUnavailable(f"database: {exc.__class__.__name__}: {exc}") from exc

    @staticmethod
    def names(ticket: LimitTicket) -> dict[str, str]:
        """The counter rows a ticket touches, by role."""
        prefix = ticket.scope
        names = {}
        if ticket.budget is not None:
            names["budget"] = f"budget:{prefix}:{ticket.budget.window.label}"
        if ticket.max_concurrent is not None or ticket.budget is not None:
            names["inflight"] = f"inflight:{prefix}"
        if ticket.rpm is not None:
            names["rpm"] = f"rpm:{prefix}"
        if ticket.tpm is not None:
            names["tpm"] = f"tpm:{prefix}"
        return names

    @staticmethod
    def _lock(names: dict[str, str]) -> dict[str, LimitCounter]:
        """Create missing rows, then lock all of them in name order (the same order everywhere: no deadlock)."""
        wanted = sorted(names.values())
        rows = {row.name: row for row in LimitCounter.objects.select_for_update().filter(name__in=wanted)}
        if len(rows) < len(wanted):
            LimitCounter.objects.bulk_create(
                [
                    LimitCounter(name=name, value=0, window_end=UNINITIALISED if role.endswith("budget") else 0.0)
                    for role, name in names.items()
                    if name not in rows
                ],
                ignore_conflicts=True,
            )
            rows = {row.name: row for row in LimitCounter.objects.select_for_update().filter(name__in=wanted)}
        return {role: rows[name] for role, name in names.items()}

    def _admit(self, ticket: LimitTicket, now: float) -> AdmitResult:
        parts = ticket.parts()
        with transaction.atomic():
            # Every row of the key and of its team, locked in one name order (the same everywhere: no deadlock).
            wanted = {
                f"{index}:{role}": name for index, part in enumerate(parts) for role, name in self.names(part).items()
            }
            locked = self._lock(dict(sorted(wanted.items(), key=lambda item: item[1])))
            states = [self._read(part, _rows_of(locked, index), now) for index, part in enumerate(parts)]

            status, refusing = ADMITTED, 0
            for index, (part, state) in enumerate(zip(parts, states, strict=True)):
                status = self._decide(part, state)
                if status != ADMITTED:
                    refusing = index
                    break
            if status == ADMITTED:
                for part, state in zip(parts, states, strict=True):
                    self._count(part, state, ticket.hold_concurrency, now)

        results = [self._result(status if i == refusing else ADMITTED, state, now) for i, state in enumerate(states)]
        for result in results:
            result.status = status
        result = results[0]
        result.refused_by_team = refusing == 1
        result.team = results[1] if len(results) > 1 else None
        if refusing == 1:
            result.retry_ms = results[1].retry_ms
        return result

    def _read(self, part: LimitTicket, rows: dict[str, LimitCounter], now: float) -> dict:
        """One part's counts, with the rows they came from (expired in-flight rows moved aside first)."""
        state: dict = {"rows": rows, "spent": 0, "reserved": 0, "concurrent": 0}
        scope = f"inflight:{part.scope}"
        state["inflight_scope"] = scope
        if "inflight" in rows:
            expired = LimitCounter.objects.filter(scope=scope, window_end__lt=now).update(scope=f"stale:{part.scope}")
            if expired:
                logger.warning("limits: %d in-flight requests of %s were never settled", expired, part.subject)
                LimitCounter.objects.filter(
                    scope=f"stale:{part.scope}", window_end__lt=now - STALE_ROW_KEEP_SECONDS
                ).delete()
            totals = LimitCounter.objects.filter(scope=scope).aggregate(n=Count("id"), s=Sum("value"))
            state["concurrent"], state["reserved"] = totals["n"], totals["s"] or 0
        if part.budget is not None:
            row = rows["budget"]
            if row.window_end == UNINITIALISED:
                row.value = budget_spent_in_database(part.scope, part.budget.window)
                row.window_end = 0.0
                LimitCounter.objects.filter(pk=row.pk).update(value=row.value, window_end=0.0)
            state["spent"] = row.value
        state["rpm_count"], state["rpm_end"] = self._window(rows.get("rpm"), now)
        state["tpm_used"], state["tpm_end"] = self._window(rows.get("tpm"), now)
        return state

    @staticmethod
    def _decide(part: LimitTicket, state: dict) -> int:
        budget = part.budget
        if budget is not None and state["spent"] + state["reserved"] + budget.reserve > budget.cap:
            return REFUSED_BUDGET
        if part.rpm is not None and state["rpm_count"] + 1 > part.rpm:
            return REFUSED_REQUESTS
        if part.tpm is not None and part.tokens > part.tpm:
            return REFUSED_TOKENS_NEVER
        if part.tpm is not None and state["tpm_used"] + part.tokens > part.tpm:
            return REFUSED_TOKENS
        if part.max_concurrent is not None and state["concurrent"] + 1 > part.max_concurrent:
            return REFUSED_CONCURRENCY
        return ADMITTED

    def _count(self, part: LimitTicket, state: dict, hold_concurrency: bool, now: float) -> None:
        rows = state["rows"]
        budget = part.budget
        if "rpm" in rows:
            state["rpm_count"] += 1
            LimitCounter.objects.filter(pk=rows["rpm"].pk).update(value=state["rpm_count"], window_end=state["rpm_end"])
        if "tpm" in rows:
            state["tpm_used"] += part.tokens
            LimitCounter.objects.filter(pk=rows["tpm"].pk).update(value=state["tpm_used"], window_end=state["tpm_end"])
        if "inflight" in rows and (hold_concurrency or budget is not None):
            scope = state["inflight_scope"]
            LimitCounter.objects.create(
                name=f"{scope}:{part.request_id}",
                scope=scope,
                value=budget.reserve if budget is not None else 0,
                window_end=now + self.stale,
            )
            state["concurrent"] += 1
            state["reserved"] += budget.reserve if budget is not None else 0

    @staticmethod
    def _result(status: int, state: dict, now: float) -> AdmitResult:
        rpm_reset = _ms(state["rpm_end"] - now)
        tpm_reset = _ms(state["tpm_end"] - now)
        retry = {REFUSED_REQUESTS: rpm_reset, REFUSED_TOKENS: tpm_reset, REFUSED_CONCURRENCY: 1000}.get(status, 0)
        return AdmitResult(
            status=status,
            rpm_count=state["rpm_count"],
            rpm_reset_ms=rpm_reset,
            tpm_used=state["tpm_used"],
            tpm_reset_ms=tpm_reset,
            concurrent=state["concurrent"],
            retry_ms=retry,
            spent=state["spent"],
            reserved=state["reserved"],
            extra={"tpm_window_end": state["tpm_end"]},
        )

    @staticmethod
    def _window(row: LimitCounter | None, now: float) -> tuple[int, float]:
        """(count in the current window, its end); a window that ended starts anew at `now`."""
        if row is None:
            return 0, now
        if row.window_end <= now:
            return 0, now + WINDOW
        return row.value, row.window_end

    def _settle(self, ticket: LimitTicket, now: float, admitted: AdmitResult, tokens: int, cost: int) -> SettleResult:
        parts = ticket.parts()
        admitted_parts = [admitted] if admitted.team is None else [admitted, admitted.team]
        wanted = {
            f"{index}:{role}": name
            for index, part in enumerate(parts)
            for role, name in self.names(part).items()
            if role != "rpm"
        }
        results = []
        with transaction.atomic():
            locked = self._lock(dict(sorted(wanted.items(), key=lambda item: item[1])))
            for index, (part, was) in enumerate(zip(parts, admitted_parts, strict=True)):
                results.append(self._settle_part(part, _rows_of(locked, index), now, was, tokens, cost))
        result = results[0]
        result.team = results[1] if len(results) > 1 else None
        return result

    def _settle_part(self, part: LimitTicket, rows: dict, now: float, admitted: AdmitResult, tokens: int, cost: int):
        result = SettleResult()
        if "tpm" in rows:
            row = rows["tpm"]
            if row.window_end == admitted.extra.get("tpm_window_end"):
                # Still the window the reservation was counted in: replace it by the real usage.
                delta = tokens - part.tokens
                row.value = max(row.value + delta, 0)
                LimitCounter.objects.filter(pk=row.pk).update(value=Greatest(F("value") + delta, 0))
            used, end = self._window(row, now)
            result = SettleResult(tpm_used=used, tpm_reset_ms=_ms(end - now) if used else 0)
        if "inflight" in rows:
            child = f"inflight:{part.scope}:{part.request_id}"
            deleted, _ = LimitCounter.objects.filter(name=child).delete()
            if deleted and part.budget is not None and cost:
                LimitCounter.objects.filter(pk=rows["budget"].pk).update(value=F("value") + cost)
        return result


def _rows_of(locked: dict[str, LimitCounter], index: int) -> dict[str, LimitCounter]:
    """The rows of part `index` of a ticket, by role (the locked dict's roles are `<index>:<role>`)."""
    head = f"{index}:"
    return {role[len(head) :]: row for role, row in locked.items() if role.startswith(head)}


def _ms(seconds: float) -> int:
    return max(int(seconds * 1000), 0)
