"""The stores behind Tollgate's per-key limits and budgets: what one atomic admission and settlement do.

`get_limit_store()` picks Redis (`redis_store`, when Redis is configured: `core.redis`) or the database
(`database_store`).
Both take a `LimitTicket` (every limit of one request plus its budget reservation) and answer with an
`AdmitResult`; `metering.throttling` turns that into headers and errors.
"""

from core.redis import redis_configured

from .base import (
    ADMITTED,
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
    SettleResult,
    StoreUnavailable,
)

__all__ = [
    "ADMITTED",
    "NEED_BUDGET_INIT",
    "REFUSED_BUDGET",
    "REFUSED_CONCURRENCY",
    "REFUSED_REQUESTS",
    "REFUSED_TOKENS",
    "REFUSED_TOKENS_NEVER",
    "AdmitResult",
    "BudgetHold",
    "LimitStore",
    "LimitTicket",
    "SettleResult",
    "StoreUnavailable",
    "get_limit_store",
]

_store: LimitStore | None = None


def get_limit_store() -> LimitStore:
    """The process's store: Redis when it is configured (REDIS_URL, or Sentinel), else the database."""
    global _store
    if _store is None:
        if redis_configured():
            from .redis_store import RedisLimitStore

            _store = RedisLimitStore()
        else:
            from .database_store import DatabaseLimitStore

            _store = DatabaseLimitStore()
    return _store
