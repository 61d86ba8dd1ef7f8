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
from enum import StrEnum

logger = logging.getLogger("tollgate.requests")


class ErrorType(StrEnum):
    """Why a request did not succeed: the one closed set that usage records, metrics and the log line share.

    The first group are refusals by Tollgate itself, before any upstream call; the second are the upstream's
    answers or failures; the last is the client's own going away.
    """

    NONE = ""
    INVALID_API_KEY = "invalid_api_key"  # 401 (only in the log line: no outcome exists before authentication)
    INVALID_REQUEST = "invalid_request"  # 400: the body failed validation
    MODEL_NOT_ALLOWED = "model_not_allowed"  # 404: the key may not use the model
    NOT_OWNED = "not_owned"  # 404: the id is unknown, or another key lineage's (they answer the same)
    TOOL_NOT_ALLOWED = "tool_not_allowed"  # 403: the key may not use a hosted tool type the request names
    RATE_LIMIT_REQUESTS = "rate_limit_requests"
    RATE_LIMIT_TOKENS = "rate_limit_tokens"
    RATE_LIMIT_CONCURRENCY = "rate_limit_concurrency"
    BUDGET = "budget"  # 429 insufficient_quota
    SERVICE_UNAVAILABLE = "service_unavailable"  # 503: the limiter store is down (fail-closed)
    UPSTREAM_REJECTED = "upstream_rejected"  # an upstream 4xx passed through (400/404/409/413/415/422)
    UPSTREAM_RATE_LIMITED = "upstream_rate_limited"  # an upstream 429 passed through
    UPSTREAM_ERROR = "upstream_error"  # 502: upstream 5xx, refused connection, broken stream, bad answer
    UPSTREAM_TIMEOUT = "upstream_timeout"  # 504
    CLIENT_DISCONNECTED = "client_disconnected"  # 499, or a stream the client left
    SERVER_ERROR = "server_error"  # 500: a bug of ours

    @property
    def refused_by_gateway(self) -> bool:
        """True for refusals Tollgate makes itself, before the upstream is asked."""
        return self in GATEWAY_REFUSALS


GATEWAY_REFUSALS = frozenset(
    {
        ErrorType.INVALID_REQUEST,
        ErrorType.MODEL_NOT_ALLOWED,
        ErrorType.NOT_OWNED,
        ErrorType.TOOL_NOT_ALLOWED,
        ErrorType.RATE_LIMIT_REQUESTS,
        ErrorType.RATE_LIMIT_TOKENS,
        ErrorType.RATE_LIMIT_CONCURRENCY,
        ErrorType.BUDGET,
        ErrorType.SERVICE_UNAVAILABLE,
    }
)


@dataclass(slots=True)
class RequestOutcome:
    request_id: str
    key: object  # apikeys.keycache.KeySnapshot
    started: float = field(default_factory=time.perf_counter)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    endpoint: str = ""  # the endpoint's name (`chat.completions`, `embeddings`, ...; completions.endpoints)
    model: str = ""
    streamed: bool = False
    status: int = 200
    error_type: ErrorType = ErrorType.NONE
    prompt_tokens: int = 0  # input tokens, cached ones included
    cached_tokens: int = 0  # of prompt_tokens, those the upstream served from its prompt cache
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens, those the model spent reasoning (Responses API)
    # Hosted tool calls in the output, by call item type (`web_search_call`: 2); priced per call.
    hosted_tool_calls: dict[str, int] = field(default_factory=dict)
    usage_estimated: bool = False
    # True when the request's usage record is written later, by whoever settles it (a background response:
    # `completions.background`); metrics and the log line still report the request when it is answered.
    usage_deferred: bool = False
    cost_usd: Decimal = Decimal(0)
    ttfb_ms: float | None = None
    latency_ms: float = 0.0
    upstream_request_id: str = ""
    upstream: str = ""  # the name of the upstream that answered (or failed last); "" if none was asked
    attempts: int = 0  # upstreams tried for this request (more than 1: it failed over)
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
