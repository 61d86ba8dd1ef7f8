"""What Tollgate's API handler (`config.asgi.APIHandler`) saves per request over Django's stock `ASGIHandler`.

    python bench/asgi_handler.py [--requests 1000] [--rounds 5]   # about a minute

In-process, no server and no network: each handler is called as an ASGI application on one uvloop event loop
(as in a worker) with a plain `GET /healthz` (the same async view for all, `core.health.healthz`, which does
nothing), so the difference is the handler's own work. Three handlers, interleaved round by round:

* `stock`: Django's ASGIHandler with the full `MIDDLEWARE` (what serving the API through Django unchanged costs);
* `stock+api-mw`: Django's ASGIHandler with Tollgate's `API_MIDDLEWARE` only, so that the difference to the next
  is what the adapted copy of `ASGIHandler.handle` saves (no request_started/finished signals and their thread
  hops, the view in the request's task);
* `tollgate`: `APIHandler`.

CPU per request is `time.process_time()` (every thread of the process, so thread hops count) over a round,
divided by its requests; the median over rounds is printed, with wall time per request beside it.
"""

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.3"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/healthz",
    "raw_path": b"/healthz",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"bench"), (b"accept", b"*/*")],
    "client": ("127.0.0.1", 50000),
    "server": ("127.0.0.1", 8000),
}


async def one_request(app) -> int:
    delivered = False
    status = 0

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": b"", "more_body": False}
        # The client stays connected: the handler's disconnect watcher waits here until it is cancelled.
        await asyncio.get_running_loop().create_future()

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(dict(SCOPE), receive, send)
    return status


async def run_round(app, requests: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per request over `requests` sequential requests."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(requests):
        status = await one_request(app)
        if status != 200:
            raise RuntimeError(f"{app.__class__.__name__} answered {status}")
    return (time.process_time() - cpu) / requests, (time.perf_counter() - wall) / requests


async def measure(handlers: dict, requests: int, rounds: int) -> dict[str, list[tuple[float, float]]]:
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in handlers}
    for app in handlers.values():  # warm-up: imports, first-call caches, the thread pool
        await run_round(app, 200)
    for _ in range(rounds):
        for name, app in handlers.items():
            results[name].append(await run_round(app, requests))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=1000, help="requests per handler per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="tollgate-asgi-bench-")
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp}/unused.sqlite3"  # /healthz never opens it
    os.environ["REDIS_URL"] = ""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    os.environ.setdefault("LOG_LEVEL", "WARNING")

    import uvloop
    from django.core.handlers.asgi import ASGIHandler

    from config.asgi import APIHandler  # sets Django up and warms the worker, as in production

    class StockWithAPIMiddleware(ASGIHandler):
        load_middleware = APIHandler.load_middleware

    handlers = {"stock": ASGIHandler(), "stock+api-mw": StockWithAPIMiddleware(), "tollgate": APIHandler()}
    results = uvloop.run(measure(handlers, args.requests, args.rounds))

    medians = {}
    print(f"GET /healthz in-process, {args.requests} requests x {args.rounds} rounds, medians per request")
    print(f"{'handler':<14} {'CPU µs':>8} {'wall µs':>8}")
    for name, rows in results.items():
        cpu = statistics.median(row[0] for row in rows) * 1e6
        wall = statistics.median(row[1] for row in rows) * 1e6
        medians[name] = cpu
        print(f"{name:<14} {cpu:8.1f} {wall:8.1f}")
    print(
        f"APIHandler saves {medians['stock+api-mw'] - medians['tollgate']:.1f} µs CPU per request over the stock "
        f"handle() with the same middleware, {medians['stock'] - medians['tollgate']:.1f} µs over the stock handler "
        "with the full middleware."
    )


if __name__ == "__main__":
    main()
