"""Command line: ``python -m fakeupstream [--host H] [--port P] [--require-key KEY] [--no-record] [--azure]
[--fail-status N [--retry-after S]]``.

Prints exactly one line to stdout, ``fakeupstream listening on http://HOST:PORT`` (the real port when
``--port 0``), once connections are accepted; serves until SIGTERM or SIGINT, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import resource
import sys

from fakeupstream.server import serve_forever, uvloop


def _raise_fd_limit() -> None:
    """Lift the soft open-files limit to the hard one: thousands of streams need thousands of sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _collect_rarely() -> None:
    """No automatic full garbage collections: `serve_forever(collect_while_idle=True)` runs them while no stream is
    open, so that the fake's own pauses are not what `make bench` measures.

    The fake holds a thousand streams in the stream cases (and keeps every stored response); a full collection
    traverses all of them with the loop stopped: 130-180 ms at 1,000 held Responses streams (timed with
    `gc.callbacks`), and those pauses were the first-byte p99 of the gateway's runs (the gateway had admitted each
    stalled request within 2 ms and was waiting for the fake's answer). What start-up created is frozen first."""
    gc.collect()
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 1_000_000)


def _announce(url: str) -> None:
    sys.stdout.write(f"fakeupstream listening on {url}\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, serve until SIGTERM/SIGINT and return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m fakeupstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument(
        "--port",
        type=int,
        default=9100,
        help="port to bind; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--require-key",
        metavar="KEY",
        default=None,
        help="answer 401 invalid_api_key unless 'Authorization: Bearer KEY' is sent",
    )
    parser.add_argument(
        "--no-record",
        dest="record",
        action="store_false",
        help="do not keep requests for GET /_fake/requests (counters are still kept)",
    )
    parser.add_argument(
        "--azure",
        action="store_true",
        help="serve as an Azure OpenAI resource (/openai/v1/..., deployment URLs, the api-key header)",
    )
    parser.add_argument("--fail-status", type=int, default=None, help="answer every /v1 request with this status")
    parser.add_argument("--retry-after", default=None, help="with --fail-status: the retry-after header's value")
    args = parser.parse_args(argv)
    _raise_fd_limit()
    _collect_rarely()
    key, record = args.require_key, args.record
    coro = serve_forever(
        args.host,
        args.port,
        require_key=key,
        record=record,
        on_ready=_announce,
        collect_while_idle=True,
        azure=args.azure,
        fail_status=args.fail_status,
        retry_after=args.retry_after,
    )
    try:
        if uvloop is not None:
            uvloop.run(coro)
        else:  # pragma: no cover - depends on the environment
            asyncio.run(coro)
    except OSError as exc:  # typically: the address is already in use
        sys.stderr.write(f"fakeupstream: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
