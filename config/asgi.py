"""ASGI entry point: `config.asgi:application`, served by gunicorn with uvicorn workers (config/gunicorn.conf.py).

Two Django handlers share one URLconf:

* the **API handler** serves `settings.API_PATH_PREFIXES` (`/v1/…`, `/api/route`, health checks). It runs only
  async-native middleware and skips the per-request `request_started`/`request_finished` signals: under ASGI,
  Django runs the sync receivers of the first in a `sync_to_async` thread hop and closes the response (which
  sends the second) in another, two hops per request. No API request touches the database on its hot path (keys
  are cached, limits live in Redis, usage is written in batches by a background thread), so nothing needs them;
* the **web handler** (Django's stock `ASGIHandler`) serves everything else: the admin, the schema, static files.

In front of both, `TollgateApp` answers ASGI lifespan events (flushing buffered usage records on a clean
shutdown) and refuses request bodies over `MAX_REQUEST_BODY_MB` with a 413 before reading them.

Each worker warms up when it imports this module (`warm_up`): the URLconf and every view module, the token
counter's vocabulary and, at lifespan startup, the upstream connection pool, so that no client request pays for
them (they cost half a second, which wrk's coordinated-omission correction turned into a p99 of 300 ms). Then
the objects of that start-up are frozen out of the garbage collector's reach (`gc.freeze`): a full collection
traversed all of them, a 50-80 ms pause every few thousand requests. Full collections, which traverse every
held stream, are made ten times rarer than CPython's default (`FULL_COLLECTION_EVERY`).
"""

import asyncio
import gc
import logging
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

import django

django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402
from django.core.exceptions import RequestAborted  # noqa: E402
from django.core.handlers.asgi import ASGIHandler, get_script_prefix  # noqa: E402
from django.core.handlers.exception import convert_exception_to_response  # noqa: E402
from django.urls import get_resolver, set_script_prefix  # noqa: E402
from django.utils.module_loading import import_string  # noqa: E402

from completions import upstream  # noqa: E402
from config.middleware import new_request_id  # noqa: E402
from core import lifecycle  # noqa: E402
from core.errors import error_body_bytes  # noqa: E402
from core.streaming import BytesStreamingResponse  # noqa: E402

logger = logging.getLogger("tollgate.asgi")


class APIHandler(ASGIHandler):
    """Django's ASGIHandler, trimmed for the API paths: async-only middleware, no thread hops."""

    def load_middleware(self, is_async=False):
        self._view_middleware = []
        self._template_response_middleware = []
        self._exception_middleware = []
        handler = convert_exception_to_response(self._get_response_async)
        for middleware_path in reversed(settings.API_MIDDLEWARE):
            handler = convert_exception_to_response(import_string(middleware_path)(handler))
        self._middleware_chain = handler

    async def handle(self, scope, receive, send):
        # Mirrors ASGIHandler.handle (Django 5.2; tests/unit/test_framework_copies.py fails when the pinned
        # original changes) minus the request_started/finished signals: Django runs the sync receivers of
        # request_started (close_old_connections, reset_queries) in one sync_to_async hop and response.close(),
        # which sends request_finished, in another, both on a thread started for the request (asgiref's
        # ThreadSensitiveContext gives each request its own single-thread executor).
        # Measured by bench/asgi_handler.py (GET /healthz in-process, one run, 2-core VM shared at load 6):
        # 141 µs of CPU per request here, 1,371 µs through Django's handle() with the same middleware, 4,471 µs
        # through the stock handler with the full MIDDLEWARE.
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        set_script_prefix(get_script_prefix(scope))
        request, error_response = self.create_request(scope, body_file)
        if request is None:
            body_file.close()
            await self.send_response(error_response, send)
            return

        # The view runs in this task; one watcher task cancels it if the client goes away first, which closes
        # the upstream request (completions/apis.py). Django's handler runs the view in a second task and waits
        # on both: one task and an asyncio.wait less per request.
        this_task = asyncio.current_task()
        state = {"complete": False}
        watcher = asyncio.create_task(self.cancel_on_disconnect(receive, this_task, state))
        response = None
        try:
            response = await self.run_get_response(request)
            await self.send_response(response, send)
            state["complete"] = True
        except asyncio.CancelledError:
            if not (watcher.done() and not watcher.cancelled() and watcher.result() is True):
                raise  # Not the watcher's cancellation (the server is shutting down): let it through.
            this_task.uncancel()
        finally:
            state["complete"] = True
            if not watcher.done():
                watcher.cancel()
            body_file.close()
        if response is not None:
            # HttpResponse.close() minus its request_finished signal (see above).
            for closer in response._resource_closers:
                try:
                    closer()
                except Exception:
                    logger.exception("closing a response failed")
            response._resource_closers.clear()

    async def send_response(self, response, send):
        """Django's `send_response`, except that a `BytesStreamingResponse` sends each chunk as its own message,
        without Django's per-chunk wrapping (core/streaming.py): the relay's per-event cost."""
        if not isinstance(response, BytesStreamingResponse):
            return await super().send_response(response, send)
        # The start message as Django builds it (ASGIHandler.send_response; a relayed stream sets no cookies).
        headers = [(header.encode("ascii"), value.encode("latin1")) for header, value in response.items()]
        for cookie in response.cookies.values():
            headers.append((b"Set-Cookie", cookie.output(header="").encode("ascii").strip()))
        await send({"type": "http.response.start", "status": response.status_code, "headers": headers})
        # A chunk is every event that was complete when it was read: when the client reads slower than the
        # upstream writes, `send` waits for the socket to drain, the upstream's events gather meanwhile, and the
        # next chunk carries all of them in one message. Nothing is held back while the client keeps up.
        async for chunk in response.chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body"})

    async def cancel_on_disconnect(self, receive, task, state) -> bool:
        """Cancel `task` if the client disconnects before the response is complete; True if it did."""
        try:
            await self.listen_for_disconnect(receive)
        except RequestAborted:
            if not state["complete"]:
                task.cancel()
                return True
        except AssertionError:
            pass  # A message other than http.disconnect after the body: nothing to cancel for.
        return False


def _too_large(limit_mb: float) -> bytes:
    return error_body_bytes(
        f"Request body too large: the limit is {limit_mb:g} MB (MAX_REQUEST_BODY_MB).",
        "invalid_request_error",
        None,
        "request_too_large",
    )


class TollgateApp:
    """The ASGI application: lifespan, the body-size guard, and routing between the two handlers."""

    def __init__(self):
        self.api = APIHandler()
        self.web = ASGIHandler()
        self.api_prefixes = tuple(settings.API_PATH_PREFIXES)
        self.max_body = settings.MAX_REQUEST_BODY_BYTES

    async def __call__(self, scope, receive, send):
        kind = scope["type"]
        if kind == "lifespan":
            return await self.lifespan(receive, send)
        if kind != "http":
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_large = int(value) > self.max_body
                except ValueError:
                    too_large = False
                if too_large:
                    return await self.refuse_too_large(send)
                break
        else:
            receive = self.limited_receive(receive)
        handler = self.api if scope["path"].startswith(self.api_prefixes) else self.web
        try:
            await handler(scope, receive, send)
        except BodyTooLarge:
            await self.refuse_too_large(send)

    def limited_receive(self, receive):
        """For chunked bodies (no Content-Length): count bytes as they arrive and stop past the limit."""
        seen = 0

        async def wrapped():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:
                raise BodyTooLarge()
            return message

        return wrapped

    async def refuse_too_large(self, send):
        body = _too_large(settings.MAX_REQUEST_BODY_MB)
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", new_request_id().encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def lifespan(self, receive, send):
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # The upstream pool and its TLS context (tens of ms), before the first request needs them.
                upstream.get_poster().prepare()
                await upstream.prepare_routes()
                await lifecycle.startup()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await lifecycle.shutdown()
                except Exception:
                    logger.exception("error during shutdown")
                try:
                    await upstream.close_upstream_clients()
                except Exception:
                    logger.exception("error closing the upstream connections")
                await send({"type": "lifespan.shutdown.complete"})
                return


# Collections of the middle generation between two full collections (CPython's default is 10); see warm_up().
FULL_COLLECTION_EVERY = 100


class BodyTooLarge(Exception):
    """A chunked request body grew past MAX_REQUEST_BODY_MB."""


def warm_up() -> None:
    """Load now what the first requests of each worker would otherwise wait for; freeze the start-up objects.

    Loading the URL patterns imports the URLconf and with it every view module; estimating one prompt loads the
    tokenizer's vocabulary. `gc.freeze()` moves every object alive now into a generation the collector never
    traverses (they live as long as the process anyway), so full collections stay short.
    """
    get_resolver().url_patterns  # noqa: B018 (the import is the point)
    from completions.tokens import estimate_prompt_tokens

    estimate_prompt_tokens([{"role": "user", "content": "warm up"}])
    gc.collect()
    gc.freeze()
    # A full collection traverses every object alive: with 500 held streams in a worker, over 100 ms with the
    # event loop stopped. CPython starts one after every 10 collections of the middle generation
    # (once the objects promoted since the last one are a quarter of the old ones), which thousands of streams,
    # each holding a few hundred objects for as long as it lasts, reach every few seconds. Only reference cycles
    # need a full collection, and a request leaves none behind (core/asyncview.py, AsyncAPIView.release), so
    # one in FULL_COLLECTION_EVERY is enough: ten times rarer. The young generations keep CPython's thresholds,
    # and still free the cycles that die young (an error's traceback, a short request).
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)


application = TollgateApp()
warm_up()
