"""What the per-key limiter adds to a request: `async with throttling.admit(...)` (admit, then settle), in a loop.

    REDIS_URL=redis://127.0.0.1:6379/15 python bench/limiter.py [--requests 2000] [--database] [--team]

Runs in-process against the real store (Redis from REDIS_URL; the database path with --database or without
REDIS_URL) on a temporary migrated SQLite database (prices, usage records). The key has every limit (requests,
tokens, concurrency) and a budget, all high enough never to refuse, so each iteration is the full work: ticket,
worst-case price, one atomic admission, headers, real cost, one settlement. Prints the median, p90 and p99, and
for comparison a bare Redis PING round trip on the same loop. Touches only keys under a random prefix.

With `--team` the key belongs to a team that has every limit and a budget too: the same single store call then
admits (and settles) against both, so the difference is what a team costs per request.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--database", action="store_true", help="time the database store even if REDIS_URL is set")
    parser.add_argument("--team", action="store_true", help="the key is in a team with every limit and a budget")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="tollgate-limiter-bench-")
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/bench.sqlite3"
    if args.database:
        os.environ["REDIS_URL"] = ""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    os.environ.setdefault("LOG_LEVEL", "WARNING")

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from apikeys.keycache import KeySnapshot, TeamSnapshot
    from completions.endpoints import CHAT_COMPLETIONS
    from completions.validation import parse_chat_request
    from core.outcome import RequestOutcome
    from core.redis import redis_configured
    from metering import get_limit_store, throttling
    from usage import pricing

    pricing.get_price_book().load()
    store = get_limit_store()
    team = None
    if args.team:
        team = TeamSnapshot(
            id=uuid.uuid4().int % 10**9,
            name="bench-team",
            rpm=10**9,
            tpm=10**12,
            max_concurrent=10**6,
            budget_usd=Decimal(10**6),
            budget_period="month",
        )
    key = KeySnapshot(
        id="bench",
        prefix=uuid.uuid4().hex[:8],
        name="bench",
        rpm=10**9,
        tpm=10**12,
        max_concurrent=10**6,
        allowed_models=frozenset(),
        expiry=None,
        grace_until=None,
        revoked=False,
        budget_usd=Decimal(10**6),
        budget_period="month",
        team=team,
    )
    chat = parse_chat_request(b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello there"}]}')
    demand = CHAT_COMPLETIONS.demand(chat, CHAT_COMPLETIONS.estimate_input(chat))

    async def one() -> float:
        outcome = RequestOutcome(request_id=f"req_{uuid.uuid4().hex}", key=key, model=chat.model)
        started = time.perf_counter()
        async with throttling.admit(key=key, demand=demand, outcome=outcome):
            outcome.prompt_tokens, outcome.completion_tokens = 5, 3
        return time.perf_counter() - started

    async def run():
        for _ in range(200):  # warm-up: connections, script load, budget counter initialisation
            await one()
        timings = [await one() for _ in range(args.requests)]
        pings = []
        if redis_configured():
            client = store._loop_client().client
            for _ in range(args.requests):
                started = time.perf_counter()
                await client.ping()
                pings.append(time.perf_counter() - started)
            # Leave nothing behind (the budget counter would otherwise live until the month is over).
            tag = f"team:{team.id}" if team is not None else key.prefix
            pattern = f"{settings.RATE_LIMIT_REDIS_PREFIX}:{{{tag}}}:*"
            names = [name async for name in client.scan_iter(match=pattern)]
            if names:
                await client.delete(*names)
        return timings, pings

    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    timings, pings = runner(run())

    def line(name, values):
        values = sorted(values)
        pct = lambda p: values[min(int(len(values) * p), len(values) - 1)] * 1000  # noqa: E731
        print(
            f"{name:<34} median {statistics.median(values) * 1000:.3f} ms   "
            f"p90 {pct(0.90):.3f} ms   p99 {pct(0.99):.3f} ms   (n={len(values)})"
        )

    print(f"store: {store.__class__.__name__}")
    line("admit + settle (all limits, budget" + (", and a team's)" if args.team else ")"), timings)
    if pings:
        line("redis PING round trip", pings)


if __name__ == "__main__":
    main()
