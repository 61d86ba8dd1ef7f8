"""Background responses: followed until they end, then settled exactly once across every worker and instance.

A `background: true` create is admitted like any request (its concurrency slot, token and budget reservations
taken at once), but its answer comes while the response is still `queued`. The relay then hands the admission
over (`metering.throttling.Admission.hand_over`) and records it with the response's ownership in one transaction
(`serverstate.BackgroundResponse`): the slot and the reservations stay held.

Every served worker runs a `BackgroundFollower`. Every `BACKGROUND_POLL_SECONDS` it claims the rows due for a
poll (`SELECT … FOR UPDATE SKIP LOCKED`, moving each row's `next_poll_at` a lease ahead, so that one follower
polls a row at a time) and asks the upstream for each response (`GET /responses/{id}`), whether or not the client
ever asks again. A response that reached `completed`, `incomplete`, `failed` or `cancelled` is settled by the one
follower whose conditional UPDATE sets `settled_at` (`background_response_finish`): only that follower settles
the admission at the real usage (a cancelled response too), prices it with its hosted tool calls, writes the
create's usage record (deferred until then, under the create's request id) and records the response's size for
follow-ups. A response the upstream no longer knows is settled at the create's estimate, flagged.

The slot is held until the response ends, or until `RATE_LIMIT_INFLIGHT_EXPIRY_SECONDS` (the store's expiry of
an unsettled slot) if that comes first; its spend is counted when it is settled either way.
"""

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from asgiref.sync import sync_to_async
from django.conf import settings

from core.errors import OpenAIError
from core.outcome import ErrorType, RequestOutcome
from metering.throttling import Admission
from serverstate.models import BackgroundResponse
from serverstate.services import (
    background_response_finish,
    background_response_later,
    background_responses_claim,
    owned_response_usage,
)
from upstreams.selection import target_named
from usage.writer import record_usage

from .upstream import UpstreamStatusError, open_upstream
from .usage import BadUsage, response_object_usage

logger = logging.getLogger("tollgate.background")

TERMINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})
# Rows claimed per round; the others wait for the next round (or another follower).
CLAIM_BATCH = 50
# Backoff for a response that is still running: the poll interval, growing to this many intervals.
MAX_BACKOFF_INTERVALS = 8


@dataclass(frozen=True, slots=True)
class RecordKey:
    """The key fields a usage record needs (the follower has no key snapshot: the key may be gone by now)."""

    id: str
    prefix: str
    name: str


class BackgroundFollower:
    """One per process. `start()` on the event loop (ASGI lifespan), `stop()` at shutdown."""

    def __init__(self):
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        """Start following, unless BACKGROUND_POLL_SECONDS is 0 (this instance then leaves it to the others)."""
        if settings.BACKGROUND_POLL_SECONDS <= 0:
            logger.info("background responses: not followed by this process (BACKGROUND_POLL_SECONDS=0)")
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tollgate-background-follower")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.follow_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("background responses: a round of polls failed")
            await asyncio.sleep(settings.BACKGROUND_POLL_SECONDS)

    async def follow_once(self) -> int:
        """Poll every background response due now (claimed for this follower); return how many were settled."""
        rows = await sync_to_async(background_responses_claim, thread_sensitive=False)(limit=CLAIM_BATCH)
        settled = 0
        for row in rows:
            settled += await self.follow(row)
        return settled

    async def follow(self, row: BackgroundResponse) -> bool:
        """Ask the upstream about one response; settle it if it ended. True when this call settled it."""
        try:
            # Only the upstream holding the response knows it (the default one for rows without an upstream).
            target = await target_named(row.upstream)
            if target is None:
                return await self._later(row)
            upstream = await open_upstream(f"/responses/{row.response_id}", b"", method="GET", target=target)
            try:
                content = await upstream.aread()
            finally:
                await upstream.aclose()
            body = orjson.loads(content)
        except UpstreamStatusError as exc:
            if exc.status_code == 404:
                return await self.settle(row, None, "gone")
            return await self._later(row)
        except (OpenAIError, orjson.JSONDecodeError, OSError) as exc:
            logger.warning("background response %s: polling failed: %s", row.response_id, exc)
            return await self._later(row)
        status = body.get("status") if isinstance(body, dict) else None
        if status not in TERMINAL_STATUSES:
            return await self._later(row)
        return await self.settle(row, body, status)

    async def _later(self, row: BackgroundResponse) -> bool:
        wait = settings.BACKGROUND_POLL_SECONDS * min(2 ** min(row.polls, 3), MAX_BACKOFF_INTERVALS)
        await sync_to_async(background_response_later, thread_sensitive=False)(row=row, seconds=wait)
        return False

    async def settle(self, row: BackgroundResponse, body: dict | None, status: str) -> bool:
        """Settle the response once across every follower: its admission, its usage record, its size."""
        won = await sync_to_async(background_response_finish, thread_sensitive=False)(row=row, status=status)
        if not won:
            return False
        outcome = RequestOutcome(
            request_id=row.request_id,
            key=RecordKey(row.api_key_id, row.key_prefix, row.key_name),
            endpoint=row.endpoint,
            started_at=row.created_at,
            model=row.model,
            streamed=row.streamed,
            upstream=row.upstream,
        )
        usage = None
        try:
            usage = response_object_usage(body) if body is not None else None
        except BadUsage:
            logger.warning("background response %s reported an invalid usage object", row.response_id)
        if usage is None:
            outcome.usage_estimated = True
            outcome.prompt_tokens = row.input_estimate
        else:
            outcome.prompt_tokens = usage.input_tokens
            outcome.cached_tokens = usage.cached_tokens
            outcome.completion_tokens = usage.output_tokens
            outcome.reasoning_tokens = usage.reasoning_tokens
            outcome.hosted_tool_calls = dict(usage.hosted_tool_calls)
        if status == "failed":
            outcome.error_type = ErrorType.UPSTREAM_ERROR
        outcome.latency_ms = (datetime.now(UTC) - row.created_at).total_seconds() * 1000
        await Admission.resume(row.admission, outcome=outcome).settle()
        record_usage(outcome)
        if usage is not None:
            await sync_to_async(owned_response_usage, thread_sensitive=False)(
                response_id=row.response_id, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens
            )
        logger.info(
            "background response %s of key %s settled: %s, %d input and %d output tokens, %s USD",
            row.response_id,
            row.key_prefix,
            status,
            outcome.prompt_tokens,
            outcome.completion_tokens,
            outcome.cost_usd,
        )
        return True


follower = BackgroundFollower()
