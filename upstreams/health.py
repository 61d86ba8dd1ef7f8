"""Upstream health: an upstream that fails `UPSTREAM_FAILURE_THRESHOLD` times within
`UPSTREAM_FAILURE_WINDOW_SECONDS` (refused or reset connections, timeouts, 5xx, 429s) rests for
`UPSTREAM_COOLDOWN_SECONDS`; one answering 429 with a `retry-after` rests that long (at most
`UPSTREAM_MAX_REST_SECONDS`). Then it is tried again. The state is shared through the route store
(`upstreams.store`: Redis, or per worker); each worker reads who rests at most every
`UPSTREAM_HEALTH_CHECK_SECONDS`, and knows at once what it marked itself.
"""

import time

from django.conf import settings

from .metrics import UPSTREAM_RESTING
from .store import get_route_store


class HealthView:
    """This worker's view of who rests: {name: epoch seconds the rest ends}, refreshed from the store."""

    def __init__(self):
        self._until: dict[str, float] = {}
        self._checked = 0.0

    async def resting(self, names: list[str]) -> set[str]:
        now = time.time()
        if now - self._checked >= settings.UPSTREAM_HEALTH_CHECK_SECONDS:
            self._checked = now
            shared = await get_route_store().resting(names)
            mine = {name: until for name, until in self._until.items() if until > now and name not in shared}
            for name in set(self._until) - set(shared) - set(mine):
                UPSTREAM_RESTING.labels(name).set(0)
            self._until = {**mine, **shared}
            for name in shared:
                UPSTREAM_RESTING.labels(name).set(1)
        return {name for name in names if self._until.get(name, 0) > now}

    async def failed(self, name: str, *, retry_after: float | None, reason: str, message: str) -> None:
        rest = None if retry_after is None else min(retry_after, settings.UPSTREAM_MAX_REST_SECONDS)
        error = {"at": round(time.time(), 3), "reason": reason, "message": message[:300]}
        until = await get_route_store().fail(name, rest, error)
        if until:
            self._until[name] = until
            UPSTREAM_RESTING.labels(name).set(1)


_view = HealthView()


def get_health() -> HealthView:
    return _view


def retry_after_seconds(headers) -> float | None:
    """An upstream's `retry-after-ms` or `retry-after` (seconds) as seconds, when it is a number."""
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                seconds = float(value) * scale
            except ValueError:
                continue
            if seconds > 0:
                return seconds
    return None
