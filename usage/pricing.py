"""Model prices, and what a request costs (or could cost at worst) under them.

Prices are `ModelPrice` rows (USD per million input, cached input and output tokens, edited in the admin through
`usage.services`; a migration seeds OpenAI's list prices as defaults). As OpenAI bills: of a request's prompt
tokens, those the upstream served from its prompt cache are charged the cached-input rate (the input rate when
a row has none), the rest the input rate, and completion tokens the output rate.

Each worker keeps the whole table in memory (`PriceBook`) and reloads it every `PRICE_CACHE_SECONDS` in the
background, so the request path never queries the database for a price.

Matching: the row whose `model` equals the request's model, else the longest one that is a prefix of it ending
at a `-` (`gpt-4o` prices `gpt-4o-2024-08-06`, but `gpt-4` does not price `gpt-4o`); of that model's rows, the
one in force at the request's time (latest `effective_from` not after it; the earliest row if none was yet).
A model no row matches is priced at `PRICE_FALLBACK_*_PER_MILLION` (default 0, with a warning logged once per
model and process): price every model you allow, or a budget cannot hold such requests back.

Money that limits count with is an integer of `MONEY_UNITS_PER_USD` (10⁻⁸ USD, the precision of
`UsageRecord.cost_usd`): exact in Redis' integers and in Lua's doubles up to about 90 million USD.
"""

import asyncio
import bisect
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal

from asgiref.sync import sync_to_async
from django.conf import settings

logger = logging.getLogger("tollgate.pricing")

MILLION = Decimal(1_000_000)
MONEY_UNITS_PER_USD = 10**8
COST_QUANTUM = Decimal("0.00000001")


@dataclass(frozen=True, slots=True)
class Price:
    model: str
    input_per_million: Decimal
    output_per_million: Decimal
    max_output_tokens: int
    effective_from: float  # epoch seconds; -inf for the fallback
    cached_input_per_million: Decimal | None = None  # None: cached input tokens cost the input rate

    @property
    def cached_rate(self) -> Decimal:
        """USD per million cached input tokens (the input rate when the row sets none)."""
        return self.input_per_million if self.cached_input_per_million is None else self.cached_input_per_million

    def cost(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Decimal:
        """USD for these token counts, rounded (half up) to 10⁻⁸ USD once, on the total.

        `cached_tokens` is the part of `prompt_tokens` served from the prompt cache; it is clamped to
        `0..prompt_tokens`, so an upstream that reports more cached tokens than prompt tokens is never charged
        less than nothing for its uncached part.
        """
        cached = min(max(cached_tokens, 0), max(prompt_tokens, 0))
        raw = (
            (prompt_tokens - cached) * self.input_per_million
            + cached * self.cached_rate
            + completion_tokens * self.output_per_million
        ) / MILLION
        return raw.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


def usd_to_units(amount: Decimal, *, round_up: bool = False) -> int:
    """USD as an integer count of 10⁻⁸ USD (rounded half up, or up for a reservation)."""
    scaled = Decimal(amount) * MONEY_UNITS_PER_USD
    return int(scaled.to_integral_value(rounding=ROUND_CEILING if round_up else ROUND_HALF_UP))


def units_to_usd(units: int) -> Decimal:
    return (Decimal(units) / MONEY_UNITS_PER_USD).quantize(COST_QUANTUM)


# A hosted tool type (`tools[].type`) and the output item type of its calls, where they differ by more than
# `_call` (dated variants of web search price as web search).
TOOL_CALL_ITEMS = {"web_search_preview": "web_search_call", "mcp": "mcp_call"}


def tool_call_item(tool_type: str) -> str:
    """The output item type of a hosted tool's calls: `web_search` → `web_search_call`."""
    if tool_type.startswith("web_search"):
        return "web_search_call"
    return TOOL_CALL_ITEMS.get(tool_type, f"{tool_type}_call")


class PriceBook:
    """The price table of one process. `price_for` is pure memory; `load` reads the table (call off the loop)."""

    # Annotated as a plain callable so that it is not bound as a method (tests swap it).
    timer: Callable[[], float] = time.monotonic

    def __init__(self, check_seconds: float):
        self.check_seconds = check_seconds
        # (upstream, model) -> (effective_from epochs ascending, prices in the same order); upstream "" = all
        self._rows: dict[tuple[str, str], tuple[list[float], list[Price]]] = {}
        # hosted tool call item type -> (effective_from epochs ascending, USD per call in the same order)
        self._tools: dict[str, tuple[list[float], list[Decimal]]] = {}
        self._loaded_at = float("-inf")
        self._loaded = False
        self._refreshing = False
        self._first_load: asyncio.Future[None] | None = None  # the load shared by concurrent first requests
        self._lock = threading.Lock()
        self._warned: set[str] = set()

    @property
    def loaded(self) -> bool:
        return self._loaded

    def refresh_due(self) -> bool:
        return self.timer() - self._loaded_at >= self.check_seconds

    def load(self) -> None:
        """Replace the table with the database's (raises DatabaseError; the old table stays then)."""
        from django.db import DatabaseError, connection

        from .models import ModelPrice, ToolPrice

        with self._lock:
            rows: dict[tuple[str, str], tuple[list[float], list[Price]]] = {}
            tools: dict[str, tuple[list[float], list[Decimal]]] = {}
            try:
                found = list(ModelPrice.objects.order_by("model", "effective_from"))
                for tool in ToolPrice.objects.order_by("tool", "effective_from"):
                    tool_starts, per_call = tools.setdefault(tool.tool, ([], []))
                    tool_starts.append(tool.effective_from.timestamp())
                    per_call.append(tool.per_call_usd)
            except DatabaseError:
                connection.close()  # a broken connection is replaced on this thread's next load
                raise
            for row in found:
                price = Price(
                    model=row.model,
                    input_per_million=row.input_per_million,
                    output_per_million=row.output_per_million,
                    max_output_tokens=row.max_output_tokens,
                    effective_from=row.effective_from.timestamp(),
                    cached_input_per_million=row.cached_input_per_million,
                )
                starts, prices = rows.setdefault((row.upstream, row.model), ([], []))
                starts.append(price.effective_from)
                prices.append(price)
            self._rows = rows
            self._tools = tools
            self._loaded = True
            self._loaded_at = self.timer()

    async def aensure_fresh(self) -> None:
        """Load the table if this process never did; start a background reload when it is due."""
        if not self._loaded:
            # Concurrent first requests share one load (a cold worker under load would otherwise run dozens).
            if self._first_load is None:
                self._first_load = asyncio.ensure_future(sync_to_async(self.load, thread_sensitive=False)())
            first_load = self._first_load
            try:
                await asyncio.shield(first_load)
            except Exception:
                # Price with the fallback until the database answers; retried on the next request.
                logger.exception("prices: could not load the price table")
            finally:
                if self._first_load is first_load and first_load.done():
                    self._first_load = None
            return
        if self._refreshing or not self.refresh_due():
            return
        self._refreshing = True
        task = asyncio.get_running_loop().create_task(self._refresh())
        _background.add(task)
        task.add_done_callback(_background.discard)

    async def _refresh(self) -> None:
        try:
            await sync_to_async(self.load, thread_sensitive=False)()
        except Exception:
            self._loaded_at = self.timer()  # keep the old table; try again after check_seconds
            logger.warning("prices: could not reload the price table, keeping the cached one")
        finally:
            self._refreshing = False

    def price_for(self, model: str, at: datetime | float | None = None, upstream: str = "") -> Price:
        """The price of `model` in force at `at` (default now) on `upstream` (a row for that upstream wins over one
        for every upstream at the same model prefix); the fallback price if no row matches."""
        when = at.timestamp() if isinstance(at, datetime) else (time.time() if at is None else at)
        rows = self._rows
        candidate = model
        while True:
            found = (rows.get((upstream, candidate)) if upstream else None) or rows.get(("", candidate))
            if found is not None:
                starts, prices = found
                index = bisect.bisect_right(starts, when) - 1
                return prices[max(index, 0)]
            cut = candidate.rfind("-")
            if cut <= 0:
                break
            candidate = candidate[:cut]
        return self._fallback(model)

    def tool_price_for(self, call_item: str, at: datetime | float | None = None) -> Decimal:
        """USD per call of a hosted tool (by its call item type) in force at `at`; 0 for a tool without a row."""
        found = self._tools.get(call_item)
        if found is None:
            return Decimal(0)
        when = at.timestamp() if isinstance(at, datetime) else (time.time() if at is None else at)
        starts, prices = found
        return prices[max(bisect.bisect_right(starts, when) - 1, 0)]

    def _fallback(self, model: str) -> Price:
        if model not in self._warned and len(self._warned) < 1000:
            self._warned.add(model)
            logger.warning(
                "prices: no ModelPrice row matches model %r; pricing it at the fallback (%s/%s USD per 1M tokens)",
                model,
                settings.PRICE_FALLBACK_INPUT_PER_MILLION,
                settings.PRICE_FALLBACK_OUTPUT_PER_MILLION,
            )
        return Price(
            model="",
            input_per_million=Decimal(str(settings.PRICE_FALLBACK_INPUT_PER_MILLION)),
            output_per_million=Decimal(str(settings.PRICE_FALLBACK_OUTPUT_PER_MILLION)),
            max_output_tokens=settings.PRICE_FALLBACK_MAX_OUTPUT_TOKENS,
            effective_from=float("-inf"),
        )


_background: set[asyncio.Task[None]] = set()
_price_book: PriceBook | None = None


def get_price_book() -> PriceBook:
    global _price_book
    if _price_book is None:
        _price_book = PriceBook(settings.PRICE_CACHE_SECONDS)
    return _price_book


def cost_usd(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    at: datetime | None = None,
    *,
    cached_tokens: int = 0,
    upstream: str = "",
) -> Decimal:
    """What a request cost: its tokens at the price of `model` in force at `at`, in USD (10⁻⁸ precision).

    `prompt_tokens` counts every input token, cached ones included; `cached_tokens` (the upstream's
    `prompt_tokens_details.cached_tokens`) of them are charged the cached-input rate. Pure memory: no query.
    """
    return get_price_book().price_for(model, at, upstream).cost(prompt_tokens, completion_tokens, cached_tokens)


def worst_case_cost_usd(
    model: str, prompt_tokens: int, max_output_tokens: int | None, choices: int = 1, at: datetime | None = None
) -> Decimal:
    """The most a request can cost: its prompt, plus `max_output_tokens` (else the price row's maximum) for each
    of `choices` completions."""
    price = get_price_book().price_for(model, at)
    output = max_output_tokens if max_output_tokens is not None else price.max_output_tokens
    # Cache hits are unknown before the answer: assume none, unless a (mistyped) row makes cached input dearer.
    cached = prompt_tokens if price.cached_rate > price.input_per_million else 0
    return price.cost(prompt_tokens, output * max(choices, 1), cached)


def tool_calls_cost_usd(calls: dict[str, int], at: datetime | None = None) -> Decimal:
    """What a request's hosted tool calls cost ({call item type: count}) at the tool prices in force at `at`."""
    if not calls:
        return Decimal(0)
    book = get_price_book()
    total = sum((book.tool_price_for(item, at) * count for item, count in calls.items()), Decimal(0))
    return total.quantize(COST_QUANTUM, rounding=ROUND_HALF_UP)


def worst_case_tool_cost_usd(tool_types, calls: int, at: datetime | None = None) -> Decimal:
    """`calls` calls of the dearest of the hosted `tool_types` (`tools[].type` values)."""
    book = get_price_book()
    dearest = max((book.tool_price_for(tool_call_item(kind), at) for kind in tool_types), default=Decimal(0))
    return (dearest * max(calls, 0)).quantize(COST_QUANTUM, rounding=ROUND_CEILING)
