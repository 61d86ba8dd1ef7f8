"""The CPU Tollgate spends per relayed stream event, in-process, so that the figure does not depend on the load.

    python bench/stream_relay.py [--streams 100] [--events 100] [--rounds 5]   # about a minute

One Python process runs Tollgate's ASGI application (`config.asgi.application`, on uvloop, as a worker does) on
a temporary SQLite database with one key and no Redis; the bundled fake upstream runs in a subprocess (its CPU
is not counted). Each round sends `--streams` concurrent streamed chat completions straight into the ASGI
application (no HTTP server, no client sockets: the cost measured is the application's own, from reading the
upstream's socket to handing each chunk to ASGI `send`), first with `--events` content events each
(`--delay-ms` apart, 20 by default, so that they arrive one by one, as from a real model: the
`ASGI sends/stream` column shows whether they did), then with one. The per-event cost is
the difference of the two rounds' CPU (`time.process_time()`: every thread, the usage writer's included)
divided by the difference of their events, so what a request costs once (authentication, admission, settlement,
the usage record) cancels out. Medians over rounds are printed with each round's figure.
"""

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_fake_upstream(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-m", "fakeupstream", "--no-record", "--port", str(port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats", timeout=1).read()
            return process
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise RuntimeError("the fake upstream did not start") from None
            time.sleep(0.2)


def scope(raw_key: str, body: bytes) -> dict:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"authorization", f"Bearer {raw_key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def one_stream(app, raw_key: str, body: bytes) -> tuple[int, int, int]:
    """(status, ASGI body messages, body bytes) of one streamed request."""
    delivered = False
    status = messages = size = 0

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # the client stays connected

    async def send(message):
        nonlocal status, messages, size
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message.get("body"):
            messages += 1
            size += len(message["body"])

    await app(scope(raw_key, body), receive, send)
    return status, messages, size


async def run_round(app, raw_key: str, streams: int, events: int, delay_ms: float) -> tuple[float, int]:
    """(CPU seconds, ASGI body messages) for `streams` concurrent streams of `events` content events each."""
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "bench"}],
            "stream": True,
            "fake": {"chunks": events, "chunk_delay_ms": delay_ms},
        }
    )
    cpu = time.process_time()
    results = await asyncio.gather(*(one_stream(app, raw_key, body) for _ in range(streams)))
    spent = time.process_time() - cpu
    bad = [result for result in results if result[0] != 200]
    if bad:
        raise RuntimeError(f"{len(bad)} streams failed: {bad[:3]}")
    return spent, sum(result[1] for result in results)


async def measure(app, raw_key: str, streams: int, events: int, delay_ms: float, rounds: int) -> list[dict]:
    await run_round(app, raw_key, 20, events, delay_ms)  # warm-up: the upstream pool, first-call caches
    rows = []
    for _ in range(rounds):
        long_cpu, long_sends = await run_round(app, raw_key, streams, events, delay_ms)
        short_cpu, _ = await run_round(app, raw_key, streams, 1, delay_ms)
        relayed = streams * (events - 1)
        rows.append(
            {
                "per_event_us": (long_cpu - short_cpu) / relayed * 1e6,
                "per_request_us": short_cpu / streams * 1e6,
                "sends_per_stream": long_sends / streams,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams per round")
    parser.add_argument("--events", type=int, default=100, help="content events per stream")
    parser.add_argument("--delay-ms", type=float, default=20, help="between two events of a stream")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="tollgate-stream-bench-")
    port = free_port()
    fake = start_fake_upstream(port)
    try:
        os.environ.update(
            DATABASE_URL=f"sqlite:///{tmp}/bench.sqlite3",
            REDIS_URL="",
            OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
            OPENAI_API_KEY="sk-bench-dummy-upstream-key",
            ALERT_CHECK_SECONDS="0",
            BACKGROUND_POLL_SECONDS="0",
            LOG_LEVEL="WARNING",
            DJANGO_SETTINGS_MODULE="config.settings.base",
        )
        import django

        django.setup(set_prefix=False)
        from django.core.management import call_command

        call_command("migrate", interactive=False, verbosity=0)
        from apikeys.services import api_key_create

        _, raw_key = api_key_create(name="bench", actor="bench")

        import uvloop

        from completions import upstream
        from config.asgi import application
        from core import lifecycle

        async def run() -> list[dict]:
            await lifecycle.startup()
            try:
                return await measure(application, raw_key, args.streams, args.events, args.delay_ms, args.rounds)
            finally:
                await lifecycle.shutdown()
                await upstream.close_upstream_clients()

        rows = uvloop.run(run())
    finally:
        fake.terminate()
        fake.wait(10)

    print(
        f"{args.streams} concurrent streams x {args.events} events {args.delay_ms:g} ms apart, {args.rounds} rounds "
        "(in-process, SQLite)"
    )
    print(f"{'round':>5} {'CPU µs/event':>13} {'CPU µs/request':>15} {'ASGI sends/stream':>18}")
    for number, row in enumerate(rows, 1):
        print(
            f"{number:>5} {row['per_event_us']:>13.1f} {row['per_request_us']:>15.0f} {row['sends_per_stream']:>18.1f}"
        )
    print(
        f"median: {statistics.median(row['per_event_us'] for row in rows):.1f} µs of CPU per relayed event, "
        f"{statistics.median(row['per_request_us'] for row in rows):.0f} µs per one-event request"
    )


if __name__ == "__main__":
    main()
