"""Which upstream serves a request (the relay asks `choose`, once per attempt).

Among the enabled upstreams that serve the model and have not failed this request yet, the highest priority tier
with a healthy one is used; within the tier an upstream is drawn at random in proportion to its weight, and one at
its own requests or tokens per minute (`upstreams.store`, exact and shared like the key limits) is passed over
for the next draw. A request about a stored object goes to the upstream holding it (`pinned`), or nowhere.

Each worker keeps the table of upstreams in memory (their keys unsealed), reloaded every
`UPSTREAM_CACHE_SECONDS`. With no row at all, the one upstream is the default of `OPENAI_API_KEY` and
`OPENAI_BASE_URL`, as before upstreams were data: no health, no caps, no failover.
"""

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Sequence

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError

from core.errors import ModelNotFound, ServiceUnavailable

from .crypto import KeyEncryptionError, unseal
from .health import get_health
from .models import Upstream, UpstreamKind
from .store import get_route_store
from .targets import DEFAULT_NAME, Target

logger = logging.getLogger("tollgate.upstreams")


def default_target() -> Target:
    return Target(
        name=DEFAULT_NAME,
        kind=UpstreamKind.OPENAI_COMPATIBLE,
        base_url=settings.OPENAI_BASE_URL,
        # An OpenAI-compatible server without auth (the bundled fake, a local vLLM) needs no key; the SDK does.
        api_key=settings.OPENAI_API_KEY or "tollgate-no-upstream-key",
        is_default=True,
    )


def target_of(row: Upstream) -> Target:
    return Target(
        name=row.name,
        kind=row.kind,
        base_url=row.base_url,
        api_key=unseal(row.api_key_encrypted),
        organization=row.organization,
        project=row.project,
        api_version=row.api_version,
        weight=row.weight,
        priority=row.priority,
        models=frozenset(row.models),
        aliases=dict(row.aliases),
        rpm=row.rpm,
        tpm=row.tpm,
        version=f"{row.pk}:{row.updated_at.timestamp()}",
    )


def load_targets() -> tuple[list[Target], bool]:
    """(enabled targets, whether any row exists). Rows whose key opens with no configured key are left out
    (logged): the others still serve."""
    rows = list(Upstream.objects.all())
    targets = []
    for row in rows:
        if not row.enabled:
            continue
        try:
            targets.append(target_of(row))
        except KeyEncryptionError as exc:
            logger.error("upstream %s is left out: %s", row.name, exc)
    return targets, bool(rows)


class UpstreamTable:
    """This worker's upstreams. The first load is awaited (concurrent first requests share it; a database that
    cannot be asked then is a 503); after that, a table older than `UPSTREAM_CACHE_SECONDS` is reloaded in the
    background while requests go on with the current one, which a database outage leaves in place."""

    def __init__(self):
        self.targets: list[Target] | None = None
        self.defined = False
        self.loaded_at = 0.0
        self._loading: asyncio.Task | None = None
        self._refresher: asyncio.Task | None = None

    async def current(self) -> list[Target]:
        if self.targets is None:
            if self._loading is None:
                self._loading = asyncio.ensure_future(self._reload())
            await asyncio.shield(self._loading)
            if self.targets is None:
                raise ServiceUnavailable("Tollgate cannot read its upstreams right now; try again shortly.")
        elif self._loading is None and time.monotonic() - self.loaded_at >= settings.UPSTREAM_CACHE_SECONDS:
            self._loading = asyncio.ensure_future(self._reload())
        return self.targets

    def start_refresher(self) -> None:
        """Reload every `UPSTREAM_CACHE_SECONDS` whether or not requests come (each worker's lifespan starts it),
        so that a change reaches every worker within about that long, idle ones included."""
        if self._refresher is None:
            self._refresher = asyncio.ensure_future(self._refresh_forever())

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(settings.UPSTREAM_CACHE_SECONDS)
            if self._loading is None:
                self._loading = asyncio.ensure_future(self._reload())
            try:
                await asyncio.shield(self._loading)
            except Exception:
                logger.exception("upstreams: reloading the table failed")

    async def _reload(self) -> None:
        try:
            targets, defined = await sync_to_async(load_targets, thread_sensitive=False)()
        except DatabaseError:
            if self.targets is not None:
                logger.warning("upstreams not reloaded (database unavailable); keeping the last table")
            self.loaded_at = time.monotonic()
            return
        finally:
            self._loading = None
        self.targets = targets if defined else [default_target()]
        self.defined = defined
        self.loaded_at = time.monotonic()


_table = UpstreamTable()


def get_table() -> UpstreamTable:
    return _table


def weighted_order(targets: Sequence[Target], rng: random.Random | None = None) -> list[Target]:
    """`targets` in a random order where each next one is drawn in proportion to its weight."""
    draw = (rng or random).random
    pool = list(targets)
    order = []
    while pool:
        total = sum(target.weight for target in pool)
        point = draw() * total
        for index, target in enumerate(pool):
            point -= target.weight
            if point < 0 or index == len(pool) - 1:
                order.append(pool.pop(index))
                break
    return order


async def choose(model: str, *, tried: Sequence[str] = (), pinned: str | None = None, tokens: int = 0) -> Target:
    """The upstream for the next attempt of a request for `model` (see the module docstring).

    `tried`: upstreams that failed this request already. `pinned`: the upstream holding the stored object the
    request is about ("" or None: any). `tokens`: what the request reserves (counted against tokens per minute).
    Raises `NoUpstreamLeft` when every upstream that could serve it was tried, `ModelNotFound` (404) when no
    enabled upstream serves the model, `ServiceUnavailable` (503) when all that do rest or are at their limits.
    """
    targets = await _table.current()
    if not _table.defined:
        if tried:
            raise NoUpstreamLeft()
        return targets[0]
    if pinned:
        candidates = [t for t in targets if t.name == pinned]
        if not candidates:
            raise ServiceUnavailable(f"The upstream holding this object ({pinned}) is not available.")
    else:
        candidates = [t for t in targets if not model or t.serves(model)]
        if not candidates:
            raise ModelNotFound(f"The model `{model}` does not exist or you do not have access to it.", param="model")
    candidates = [t for t in candidates if t.name not in tried]
    if not candidates:
        raise NoUpstreamLeft()
    resting = set() if pinned else await get_health().resting([t.name for t in candidates])
    store = get_route_store()
    for priority in sorted({t.priority for t in candidates}, reverse=True):
        tier = [t for t in candidates if t.priority == priority and t.name not in resting]
        for target in weighted_order(tier):
            if target.rpm is None and target.tpm is None:
                return target
            if await store.take(target.name, target.rpm, target.tpm, tokens, secrets.token_hex(8)):
                return target
    if tried:
        raise NoUpstreamLeft()
    raise ServiceUnavailable(
        f"Every upstream serving `{model}` is resting or at its limits; try again shortly."
        if model
        else "Every upstream is resting or at its limits; try again shortly.",
        headers={"retry-after": "1"},
    )


async def target_named(name: str) -> Target | None:
    """The enabled upstream called `name` (the default upstream for "" or while no upstream is defined)."""
    targets = await _table.current()
    if not _table.defined or not name:
        return targets[0] if not _table.defined else None
    return next((t for t in targets if t.name == name), None)


async def served_models() -> tuple[set[str], list[Target]]:
    """The public model names the enabled upstreams serve by name or alias, and those upstreams that serve
    every model (whose own list counts too)."""
    targets = await _table.current()
    named: set[str] = set()
    serve_all = []
    for target in targets:
        if target.serves_all:
            serve_all.append(target)
        else:
            named |= target.public_models()
    return named, serve_all


class NoUpstreamLeft(Exception):
    """Every upstream that could serve this request has failed it already (the caller re-raises the last
    failure)."""
