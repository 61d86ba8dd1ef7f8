"""What happened to one authenticated request, and the single place it is reported from.

The view fills a `RequestOutcome` as the request goes and calls `outcome_finish` exactly once, after the
response (for streams: when the stream ends, fails or the client goes away). Reporting (usage records, metrics,
the structured log line) hangs off that one call, so every authenticated request is counted once.
"""

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

logger = logging.getLogger("tollgate.requests")


@dataclass(slots=True)
class RequestOutcome:
    request_id: str
    key: object  # apikeys.keycache.KeySnapshot
    started: float = field(default_factory=time.perf_counter)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    model: str = ""
    streamed: bool = False
    status: int = 200
    error_type: str = ""  # "" on success; else e.g. invalid_request, rate_limit_requests, budget, upstream_error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False
    cost_usd: Decimal = Decimal(0)
    ttfb_ms: float | None = None
    latency_ms: float = 0.0
    upstream_request_id: str = ""
    client_disconnected: bool = False
    finished: bool = False
    # The request's `messages`, kept only with LOG_PROMPTS=true for the request log line (core/logging.py).
    prompt_messages: list | None = None

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def mark_first_byte(self) -> None:
        if self.ttfb_ms is None:
            self.ttfb_ms = (time.perf_counter() - self.started) * 1000


def outcome_finish(outcome: RequestOutcome) -> None:
    """Report a finished request once: usage record, metrics, log line. Never raises."""
    if outcome.finished:
        return
    outcome.finished = True
    outcome.latency_ms = (time.perf_counter() - outcome.started) * 1000
    for reporter in REPORTERS:
        try:
            reporter(outcome)
        except Exception:
            logger.exception("reporter %s failed for request_id=%s", reporter.__qualname__, outcome.request_id)


REPORTERS: list = []
