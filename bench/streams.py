"""A light load generator on raw asyncio sockets, for what `wrk` cannot do: thousands of held SSE streams, and an
open-loop request rate. Run by bench/run.py as a subprocess; prints one JSON object on stdout.

    python bench/streams.py streams --url http://127.0.0.1:8000/v1/chat/completions --key K --count 1000 \
        --ramp 10 --chunks 100 --chunk-delay-ms 100
    python bench/streams.py paced --url ... --key K --rate 500 --duration 5

HTTP/1.1 is written and parsed by hand (status line, headers, chunked transfer encoding or Content-Length) on
`asyncio.Protocol`s under uvloop: an `httpx` client spends more CPU per stream than the gateway does and
saturates long before 1,000 streams, so it would measure itself.

* `streams`: `count` streaming requests, their starts spread evenly over `ramp` seconds, each on its own
  connection. Per stream: the time from writing the request to the first complete SSE event (`first byte`), the
  number of events, whether `data: [DONE]` and the end of the body arrived, the total duration. Any non-200
  status, connection error, timeout or missing `[DONE]` counts as an error.
* `paced`: an open-loop client. Request `i` is due at `start + i / rate` whether or not earlier ones have
  answered (no coordinated omission), on a pool of keep-alive connections (a new one is opened when all are
  busy). Latency is measured from the due time.
"""

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from urllib.parse import urlsplit

PLAIN_BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Say hello to the benchmark"}]}

now = time.perf_counter


class HTTPResponseProtocol(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection that sends requests one at a time and parses the answers.

    `on_body(bytes)` sees the decoded body as it arrives; `on_complete(status, error)` is called once per
    request (error is "" on a complete response).
    """

    def __init__(self):
        self.transport = None
        self.connected = asyncio.get_running_loop().create_future()
        self.busy = False
        self._reset()

    def _reset(self):
        self.buffer = b""
        self.state = "head"
        self.status = 0
        self.chunked = False
        self.remaining = 0  # body bytes left (Content-Length) or in the current chunk
        self.on_body = None
        self.on_complete = None
        self.keep_alive = True

    def connection_made(self, transport):
        self.transport = transport
        if not self.connected.done():
            self.connected.set_result(None)

    def send(self, request: bytes, on_body, on_complete):
        self._reset()
        self.busy = True
        self.on_body = on_body
        self.on_complete = on_complete
        self.transport.write(request)

    def _finish(self, error: str = ""):
        callback, self.on_complete = self.on_complete, None
        self.busy = False
        self.state = "idle"
        if callback is not None:
            callback(self.status, error)
        if not self.keep_alive and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc):
        self.transport = None
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("closed"))
        if self.on_complete is not None:
            if self.state == "body-close":  # a body delimited by the end of the connection
                self._finish()
            else:
                self._finish(f"connection closed in {self.state}")

    def data_received(self, data):
        self.buffer += data
        while self.buffer:
            if self.state == "head":
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, self.buffer = self.buffer[:end], self.buffer[end + 4 :]
                lines = head.split(b"\r\n")
                self.status = int(lines[0].split(b" ", 2)[1])
                length = None
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    value = value.strip()
                    if name == b"transfer-encoding" and b"chunked" in value.lower():
                        self.chunked = True
                    elif name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.lower() == b"close":
                        self.keep_alive = False
                if self.chunked:
                    self.state = "chunk-size"
                elif length is not None:
                    self.remaining = length
                    self.state = "body-length"
                    if length == 0:
                        self._finish()
                        return
                else:
                    self.keep_alive = False
                    self.state = "body-close"
            elif self.state == "chunk-size":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    return
                size = int(self.buffer[:end].split(b";", 1)[0], 16)
                self.buffer = self.buffer[end + 2 :]
                if size == 0:
                    self.state = "trailers"
                else:
                    self.remaining = size
                    self.state = "chunk-data"
            elif self.state == "chunk-data":
                piece = self.buffer[: self.remaining]
                self.buffer = self.buffer[len(piece) :]
                self.remaining -= len(piece)
                self.on_body(piece)
                if self.remaining == 0:
                    self.state = "chunk-end"
            elif self.state == "chunk-end":
                if len(self.buffer) < 2:
                    return
                self.buffer = self.buffer[2:]
                self.state = "chunk-size"
            elif self.state == "trailers":
                end = self.buffer.find(b"\r\n")
                if end < 0:
                    return
                line, self.buffer = self.buffer[:end], self.buffer[end + 2 :]
                if not line:
                    self._finish()
                    return
            elif self.state == "body-length":
                piece = self.buffer[: self.remaining]
                self.buffer = self.buffer[len(piece) :]
                self.remaining -= len(piece)
                self.on_body(piece)
                if self.remaining == 0:
                    self._finish()
                    return
            elif self.state == "body-close":
                self.on_body(self.buffer)
                self.buffer = b""
            else:  # idle: bytes nobody asked for
                self.buffer = b""
                return


def build_request(url: str, key: str, body: bytes) -> bytes:
    parts = urlsplit(url)
    head = [
        f"POST {parts.path or '/'} HTTP/1.1",
        f"Host: {parts.netloc}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if key:
        head.append(f"Authorization: Bearer {key}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def connect(url: str) -> HTTPResponseProtocol:
    parts = urlsplit(url)
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(HTTPResponseProtocol, parts.hostname, parts.port or 80)
    return protocol


def percentiles(values: list[float]) -> dict:
    """p50/p90/p99/max of `values` (nearest rank), rounded to 0.01; empty dict for no values."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(p):
        return round(ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))], 2)

    return {
        "p50": rank(50),
        "p90": rank(90),
        "p99": rank(99),
        "max": round(ordered[-1], 2),
        "mean": round(sum(ordered) / len(ordered), 2),
    }


# STREAMS


class StreamResult:
    __slots__ = ("done", "end", "error", "events", "first_event", "pending", "sent", "status")

    def __init__(self):
        self.sent = 0.0
        self.first_event = None
        self.end = None
        self.events = 0
        self.done = False
        self.pending = b""
        self.status = 0
        self.error = ""

    # The event that ends a complete stream: chat's `[DONE]`, or the Responses API's terminal event (`--api`).
    end_marker = b"data: [DONE]"

    def on_body(self, piece: bytes):
        self.pending += piece
        if b"\n\n" not in self.pending:
            return
        if self.first_event is None:
            self.first_event = now()
        *events, self.pending = self.pending.split(b"\n\n")
        self.events += len(events)
        if not self.done:
            self.done = any(event.startswith(self.end_marker) for event in events)


async def one_stream(url: str, request: bytes, timeout: float) -> StreamResult:
    result = StreamResult()
    finished = asyncio.get_running_loop().create_future()

    def on_complete(status, error):
        result.end = now()
        result.status = status
        # A stream past its timeout is closed here, which ends it as "connection closed": it stays a timeout.
        result.error = result.error or error
        if not finished.done():
            finished.set_result(None)

    protocol = None
    try:
        protocol = await asyncio.wait_for(connect(url), timeout=30)
        result.sent = now()
        protocol.send(request, result.on_body, on_complete)
        await asyncio.wait_for(finished, timeout=timeout)
    except TimeoutError:
        result.error = "timeout"
    except OSError as exc:
        result.error = f"connect: {exc.__class__.__name__}"
    finally:
        if protocol is not None and protocol.transport is not None:
            protocol.transport.close()
    if not result.error:
        if result.status != 200:
            result.error = f"status {result.status}"
        elif not result.done:
            result.error = "no [DONE]"
    return result


async def run_streams(args) -> dict:
    body = dict(PLAIN_BODY, stream=True, fake={"chunks": args.chunks, "chunk_delay_ms": args.chunk_delay_ms})
    if args.api == "responses":
        # The fake's Responses stream sends one text delta per word of its reply (`echo: ` + the input), each
        # `chunk_delay_ms` apart; `store: false` as Codex sends it.
        words = " ".join(["w"] * max(args.chunks - 1, 1))
        body = {"model": PLAIN_BODY["model"], "input": words, "stream": True, "store": False}
        body["fake"] = {"chunk_delay_ms": args.chunk_delay_ms}
        StreamResult.end_marker = b"event: response.completed"
    request = build_request(args.url, args.key, json.dumps(body).encode())
    timeout = args.chunks * args.chunk_delay_ms / 1000 + args.timeout
    started = now()
    tasks = []
    for i in range(args.count):
        due = started + i * args.ramp / args.count
        delay = due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one_stream(args.url, request, timeout)))
    results = await asyncio.gather(*tasks)
    total = now() - started
    errors: dict[str, int] = {}
    for result in results:
        if result.error:
            errors[result.error] = errors.get(result.error, 0) + 1
    ok = [r for r in results if not r.error]
    first = [(r.first_event - r.sent) * 1000 for r in results if r.first_event is not None]
    durations = [(r.end - r.sent) for r in ok]
    events = [r.events for r in ok]
    return {
        "streams": args.count,
        "ok": len(ok),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "first_byte_ms": percentiles(first),
        "stream_duration_s": percentiles(durations),
        "events_min": min(events) if events else 0,
        "events_max": max(events) if events else 0,
        "total_s": round(total, 2),
    }


# PACED (open loop)


async def run_paced(args) -> dict:
    body = json.dumps(PLAIN_BODY).encode()
    request = build_request(args.url, args.key, body)
    idle: list[HTTPResponseProtocol] = []
    for _ in range(args.connections):
        idle.append(await connect(args.url))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors: dict[str, int] = {}
    outstanding = set()
    loop = asyncio.get_running_loop()
    total = int(args.rate * args.duration)
    all_done = loop.create_future()
    late = [0.0]  # the client's own lateness in sending (a check that the client kept up)

    def finish(protocol, due):
        def on_complete(status, error):
            latencies.append((now() - due) * 1000)
            if error:
                errors[error] = errors.get(error, 0) + 1
            else:
                statuses[status] = statuses.get(status, 0) + 1
            outstanding.discard(protocol)
            if protocol.transport is not None and protocol.keep_alive:
                idle.append(protocol)
            if len(latencies) == total and not all_done.done():
                all_done.set_result(None)

        return on_complete

    async def send_new_connection(due):
        try:
            protocol = await connect(args.url)
        except OSError as exc:
            kind = f"connect: {exc.__class__.__name__}"
            errors[kind] = errors.get(kind, 0) + 1
            latencies.append((now() - due) * 1000)
            if len(latencies) == total and not all_done.done():
                all_done.set_result(None)
            return
        outstanding.add(protocol)
        protocol.send(request, lambda piece: None, finish(protocol, due))

    started = now()
    background = []
    for i in range(total):
        due = started + i / args.rate
        delay = due - now()
        if delay > 0:
            await asyncio.sleep(delay)
        late[0] = max(late[0], now() - due)
        while idle and idle[-1].transport is None:
            idle.pop()
        if idle:
            protocol = idle.pop()
            outstanding.add(protocol)
            protocol.send(request, lambda piece: None, finish(protocol, due))
        else:
            background.append(asyncio.create_task(send_new_connection(due)))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_done, timeout=args.timeout)
    elapsed = now() - started
    for protocol in idle + list(outstanding):
        if protocol.transport is not None:
            protocol.transport.close()
    ok = sum(count for status, count in statuses.items() if 200 <= status < 300)
    return {
        "rate": args.rate,
        "requests": total,
        "completed": len(latencies),
        "achieved_rps": round(len(latencies) / elapsed, 1),
        "non_2xx": sum(statuses.values()) - ok,
        "errors": sum(errors.values()) + (total - len(latencies)),
        "error_kinds": errors,
        "latency_ms": percentiles(latencies),
        "client_max_lateness_ms": round(late[0] * 1000, 2),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    streams = sub.add_parser("streams")
    streams.add_argument("--count", type=int, default=1000)
    streams.add_argument("--ramp", type=float, default=10.0, help="seconds over which the streams start")
    streams.add_argument("--chunks", type=int, default=100)
    streams.add_argument("--chunk-delay-ms", type=int, default=100)
    streams.add_argument("--timeout", type=float, default=60.0, help="seconds allowed beyond the stream's length")
    streams.add_argument(
        "--api", choices=("chat", "responses"), default="chat", help="chat completions or Responses typed events"
    )
    paced = sub.add_parser("paced")
    paced.add_argument("--rate", type=float, default=500.0)
    paced.add_argument("--duration", type=float, default=5.0)
    paced.add_argument("--connections", type=int, default=16, help="keep-alive connections opened up front")
    paced.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the last answers")
    for p in (streams, paced):
        p.add_argument("--url", required=True)
        p.add_argument("--key", default="")
    args = parser.parse_args(argv)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a runtime dependency
        runner = asyncio.run
    result = runner(run_streams(args) if args.mode == "streams" else run_paced(args))
    sys.stdout.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
