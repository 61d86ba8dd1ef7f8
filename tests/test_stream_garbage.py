"""A relayed stream leaves no reference cycle behind: reference counting frees all of it when it ends.

Whatever a finished request leaves in a cycle waits for a full garbage collection, and a full collection traverses
every stream the worker holds with its event loop stopped (over 100 ms at 500 streams per worker);
`config.asgi` makes them rare on the strength of this. The streams run in this process through the ASGI
application itself (as a worker runs them), against the fake upstream, and the collector is asked what it found.
"""

import asyncio
import gc

import orjson
import pytest
from django.test import override_settings

from tests.conftest import UPSTREAM_KEY
from usage.writer import usage_writer


async def one_stream(app, raw_key: str) -> tuple[int, bytes]:
    body = orjson.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "cycles"}],
            "stream": True,
            "fake": {"chunks": 5},
        }
    )
    scope = {
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
            (b"host", b"testserver"),
            (b"authorization", f"Bearer {raw_key}".encode()),
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    delivered = False
    status = 0
    received = []

    async def receive():
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.get_running_loop().create_future()  # the client stays connected

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        else:
            received.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(received)


@pytest.mark.django_db(transaction=True)
def test_a_finished_stream_leaves_no_garbage_cycle(fake_upstream, make_key):
    _, raw_key = make_key(name="garbage")
    with override_settings(OPENAI_BASE_URL=f"{fake_upstream.url}/v1", OPENAI_API_KEY=UPSTREAM_KEY):
        from completions import upstream
        from config.asgi import application

        async def run(count: int) -> list[tuple[int, bytes]]:
            try:
                return await asyncio.gather(*(one_stream(application, raw_key) for _ in range(count)))
            finally:
                await upstream.close_upstream_clients()

        # Warm up first: imports, caches and the first connection of a loop are not what is measured.
        asyncio.run(run(2))
        gc.collect()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept in gc.garbage, to be read
        try:
            results = asyncio.run(run(10))
            gc.collect()
            found = [type(obj).__qualname__ for obj in gc.garbage]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            # The streams' usage records went to this process's writer: written now, its connection closed.
            usage_writer.stop()
    assert [status for status, _ in results] == [200] * 10
    assert all(body.endswith(b"data: [DONE]\n\n") for _, body in results)
    request_objects = [
        name for name in found if name in ("ChatCompletionsApi", "Request", "ASGIRequest", "RelayStream")
    ]
    assert request_objects == [], sorted(set(found))
