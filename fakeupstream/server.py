"""The fake upstream HTTP server: an OpenAI-compatible, deterministic, fast ``aiohttp`` server.

Endpoints (see the package docstring for the full contract):

* ``POST /v1/chat/completions`` -- deterministic echo completions, plain or SSE-streamed, steered by the
  ``"fake"`` body field (see :class:`fakeupstream.completions.FakeSwitches`).
* ``POST /v1/completions`` (legacy text completions, plain or streamed), ``POST /v1/embeddings`` and
  ``POST /v1/moderations``, steered by the same ``"fake"`` field (see their modules).
* ``/v1/responses`` and ``/v1/conversations`` (create, retrieve and resume streams, delete, cancel, input items,
  input tokens; conversations and their items), stored in memory (see :mod:`fakeupstream.responses`).
* ``GET /v1/models`` and ``GET /v1/models/{id}``.
* ``GET``/``DELETE /_fake/requests`` -- the ring buffer of the last requests to ``/v1/*``.
* ``GET``/``DELETE /_fake/stats`` -- ``{"open_streams", "completed", "client_disconnects"}``.
* ``GET``/``POST /_fake/mode[?fail_status=N&retry_after=S|?hang=1]`` -- every ``/v1/*`` request answers
  ``fail_status`` (with ``retry-after: S``), or with ``hang=1`` never answers (an upstream that accepted the
  connection and went silent), until set back (a ``POST`` without either clears both).

``azure=True`` makes it an Azure OpenAI resource instead: ``/openai/v1/*`` (the v1 API),
``/openai/deployments/{deployment}/{chat/completions,completions,embeddings}?api-version=V`` and
``/openai/{responses,...}?api-version=V`` serve what ``/v1/*`` serves (which itself is then a 404), the key is the
``api-key`` header (``Authorization`` is ignored), and errors have Azure's shape (``{"error": {"code",
"message"}}``, no ``type`` or ``param``).

The server runs on one asyncio loop (uvloop when importable).  It uses aiohttp's low-level
:class:`aiohttp.web.Server` with a hand-written dispatcher (no router, no middlewares) and
``handler_cancellation=True``, so a client that goes away cancels its handler at once: that is how
``open_streams`` drops and ``disconnected_at`` is recorded promptly, even in the middle of a long sleep.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import itertools
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web

from fakeupstream.completions import (
    GARBAGE_BODY,
    MODELS,
    InvalidRequestError,
    Reply,
    error_body,
    model_object,
    models_list,
    parse_chat_request,
)
from fakeupstream.embeddings import parse_embeddings_request
from fakeupstream.moderations import parse_moderation_request
from fakeupstream.responses import ResponsesFake
from fakeupstream.text_completions import parse_text_completion_request

try:  # uvloop is optional: it roughly doubles throughput, but the server is correct without it.
    import uvloop
except ImportError:  # pragma: no cover - depends on the environment
    uvloop = None

__all__ = ["FakeUpstream", "RequestRecord", "new_event_loop", "serve_in_thread"]

#: Default size of the request ring buffer.
RECORD_LIMIT = 2000
#: Bodies are recorded up to this many bytes (bounds the ring buffer's memory); see ``body_truncated``.
RECORD_BODY_LIMIT = 1 << 20
#: Listen backlog: large enough for thousands of clients connecting at once (capped by somaxconn).
BACKLOG = 4096
#: Seconds that in-flight requests get to finish when the server stops; then they are cancelled.
SHUTDOWN_TIMEOUT = 1.0

_JSON = "application/json"
_SSE = "text/event-stream; charset=utf-8"
_DONE = b"data: [DONE]\n\n"

#: ``POST`` paths that generate an answer, and the parser of each one's body.
GENERATORS: dict[str, Callable[[bytes], Reply]] = {
    "/v1/chat/completions": parse_chat_request,
    "/v1/completions": parse_text_completion_request,
    "/v1/embeddings": parse_embeddings_request,
    "/v1/moderations": parse_moderation_request,
}


class RequestRecord:
    """One recorded request to ``/v1/*``; kept raw and cheap, rendered by :meth:`as_dict` on demand.

    The stream fields are updated in place while the response is being sent: ``stream`` (a streamed
    response was started), ``chunks_sent`` (content chunks written, not counting the role chunk),
    ``completed`` (the whole response was handed to the socket), ``disconnected`` / ``disconnected_at``
    (the client went away first; epoch seconds) and ``cut`` (the server aborted on ``cut_after_chunks``).
    """

    __slots__ = (
        "body",
        "body_size",
        "chunks_sent",
        "completed",
        "cut",
        "disconnected",
        "disconnected_at",
        "finished_at",
        "method",
        "path",
        "query",
        "raw_headers",
        "seq",
        "status",
        "stream",
        "time",
    )

    def __init__(self, seq: int, request: web.BaseRequest, body: bytes) -> None:
        self.seq = seq
        self.time = time.time()
        self.method = request.method
        self.path = request.path
        self.query = request.query_string
        self.raw_headers = request.raw_headers
        self.body = body[:RECORD_BODY_LIMIT]
        self.body_size = len(body)
        self.status: int | None = None
        self.stream = False
        self.chunks_sent = 0
        self.completed = False
        self.finished_at: float | None = None
        self.disconnected = False
        self.disconnected_at: float | None = None
        self.cut = False

    def as_dict(self) -> dict[str, Any]:
        """Render the record as JSON-ready data.

        ``headers`` maps lower-case names to values (repeated headers joined with ``", "``).  ``body`` is
        the raw body decoded as UTF-8 with ``body_encoding`` ``"utf-8"``, or base64 with ``"base64"`` when
        it is not valid UTF-8; ``json`` is the parsed body, or ``None`` when it is not JSON.  Bodies over
        :data:`RECORD_BODY_LIMIT` bytes are kept truncated (``body_truncated``; ``body_size`` = full size).
        """
        headers: dict[str, str] = {}
        for raw_name, raw_value in self.raw_headers:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        try:
            body, encoding = self.body.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            body, encoding = base64.b64encode(self.body).decode("ascii"), "base64"
        try:
            parsed = orjson.loads(self.body) if self.body else None
        except orjson.JSONDecodeError:
            parsed = None
        return {
            "seq": self.seq,
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": headers,
            "body": body,
            "body_encoding": encoding,
            "body_size": self.body_size,
            "body_truncated": self.body_size > len(self.body),
            "json": parsed,
            "status": self.status,
            "stream": self.stream,
            "chunks_sent": self.chunks_sent,
            "completed": self.completed,
            "finished_at": self.finished_at,
            "disconnected": self.disconnected,
            "disconnected_at": self.disconnected_at,
            "cut": self.cut,
        }


_Record = RequestRecord | None


def _not_found(method: str, path: str) -> web.Response:
    """Return OpenAI's 404 for an unknown URL."""
    return _json_response(404, error_body(f"Invalid URL ({method} {path})", "invalid_request_error"))


def _headers(number: int, started: float) -> dict[str, str]:
    """Return the OpenAI-style headers of completion ``number`` whose handling began at ``started``."""
    return {
        "x-request-id": f"req_fake_{number}",
        "openai-processing-ms": str(int((time.perf_counter() - started) * 1000)),
    }


def _json_response(status: int, body: bytes, headers: dict[str, str] | None = None) -> web.Response:
    """Return a response with a ready-made JSON ``body``."""
    all_headers = {"Content-Type": _JSON}
    if headers:
        all_headers.update(headers)
    return web.Response(status=status, body=body, headers=all_headers)


class FakeUpstream:
    """The fake upstream's state (request ring buffer, counters) and its HTTP handlers.

    ``require_key``: when set, ``/v1/*`` answers 401 ``invalid_api_key`` unless the request carries
    ``Authorization: Bearer <require_key>``.  ``record``: when false nothing is kept in the ring buffer
    (``GET /_fake/requests`` then always returns ``[]``); the counters of ``/_fake/stats`` are always kept.

    One instance serves on one event loop at a time: :meth:`start` it there, :meth:`stop` it there.
    """

    def __init__(
        self,
        *,
        require_key: str | None = None,
        record: bool = True,
        record_limit: int = RECORD_LIMIT,
        azure: bool = False,
        fail_status: int | None = None,
        retry_after: str | None = None,
    ) -> None:
        self.require_key = require_key
        self.record = record
        self.azure = azure
        self.fail_status = fail_status
        self.retry_after = retry_after
        self.hang = False
        self.requests: deque[RequestRecord] = deque(maxlen=record_limit)
        self.open_streams = 0
        self.completed = 0
        self.client_disconnects = 0
        self._expected_auth = f"Bearer {require_key}" if require_key is not None else None
        self._seq = itertools.count(1)
        self._ids = itertools.count(1)
        self._runner: web.ServerRunner | None = None
        self._lingering: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.url: str | None = None
        self.responses_api = ResponsesFake()

    # ------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Bind ``host:port`` (port 0 picks a free one), start serving and return ``http://HOST:PORT``."""
        if self._runner is not None:
            raise RuntimeError("FakeUpstream is already started")
        sock = _bind(host, port)
        server = web.Server(self._dispatch, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.SockSite(runner, sock, backlog=BACKLOG).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        real_port = sock.getsockname()[1]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{real_port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving and close every connection; idempotent.

        Streams, hangs and delays are cancelled at once (and not counted as client disconnects); other
        in-flight requests get up to :data:`SHUTDOWN_TIMEOUT` seconds to finish.
        """
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        try:
            for task in list(self._lingering):
                task.cancel()
            await runner.cleanup()
        finally:
            self._stopping = False

    # ------------------------------------------------------------------ dispatch

    async def _dispatch(self, request: web.BaseRequest) -> web.StreamResponse:
        """Route a request by path and method (a few string compares; no router overhead)."""
        path = request.path
        if self.azure:
            if path.startswith("/openai/"):
                mapped = self._azure_path(request, path)
                if mapped is not None:
                    return await self._v1(request, mapped)
            if not path.startswith("/_fake/"):
                return _json_response(404, _azure_error("404", "Resource not found"))
        elif path.startswith("/v1/"):
            return await self._v1(request, path)
        if path.startswith("/_fake/"):
            return self._introspect(request, path)
        return _not_found(request.method, path)

    @staticmethod
    def _azure_path(request: web.BaseRequest, path: str) -> str | None:
        """The ``/v1/*`` path an Azure path stands for, or None (Azure answers 404)."""
        if path.startswith("/openai/v1/"):
            return path[len("/openai") :]
        if "api-version" not in request.query:
            return None
        if path.startswith("/openai/deployments/"):
            _, _, rest = path[len("/openai/deployments/") :].partition("/")
            return f"/v1/{rest}" if rest in ("chat/completions", "completions", "embeddings") else None
        return "/v1" + path[len("/openai") :]

    async def _v1(self, request: web.BaseRequest, path: str) -> web.StreamResponse:
        """Record the request, enforce the API key, and serve one ``/v1/*`` endpoint."""
        if request.body_exists:
            expect = request.headers.get("Expect")
            if expect is not None and expect.lower() == "100-continue" and request.version >= (1, 1):
                # No router here, so answer ``Expect`` ourselves (curl sends it for bodies over 1 KiB).
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                request.writer.output_size = 0
            body = await request.content.read()
        else:
            body = b""
        record = None
        if self.record:
            record = RequestRecord(next(self._seq), request, body)
            self.requests.append(record)
        method = request.method
        if self.azure and self.require_key is not None and request.headers.get("api-key") != self.require_key:
            response = _json_response(401, _azure_error("401", "Access denied due to invalid subscription key."))
        elif (
            not self.azure
            and self._expected_auth is not None
            and (request.headers.get("Authorization") != self._expected_auth)
        ):
            response = self._unauthorized(request)
        elif self.hang:
            task = asyncio.current_task()
            self._lingering.add(task)
            try:
                await asyncio.get_running_loop().create_future()  # resolved by nobody: await cancellation
            except asyncio.CancelledError:
                self._client_gone(record)
                raise
            finally:
                self._lingering.discard(task)
            raise AssertionError("unreachable")  # pragma: no cover
        elif self.fail_status is not None:
            headers = {"retry-after": self.retry_after} if self.retry_after else None
            message = f"The fake upstream answers {self.fail_status} to everything (its fail mode)."
            if self.azure:
                body = _azure_error(str(self.fail_status), message)
            else:
                code = "rate_limit_exceeded" if self.fail_status == 429 else None
                body = error_body(message, "requests" if self.fail_status == 429 else "server_error", code)
            response = _json_response(self.fail_status, body, headers)
        elif method == "POST" and (parse := GENERATORS.get(path)) is not None:
            return await self._generate(request, body, record, parse)
        elif path.startswith(("/v1/responses", "/v1/conversations")):
            task = asyncio.current_task()
            self._lingering.add(task)
            try:
                answer = await self.responses_api.handle(request, path, body)
            except (asyncio.CancelledError, ConnectionError):
                self._client_gone(record)
                raise
            finally:
                self._lingering.discard(task)
            if record is not None:
                record.stream = answer.content_type == "text/event-stream"
            self._finished(record, answer.status)
            return answer
        elif path == "/v1/models" and method == "GET":
            response = _json_response(200, models_list())
        elif path.startswith("/v1/models/") and method == "GET":
            response = self._model(path[len("/v1/models/") :])
        else:
            response = _not_found(method, path)
        self._finished(record, response.status)
        return response

    def _unauthorized(self, request: web.BaseRequest) -> web.Response:
        """Return OpenAI's 401 ``invalid_api_key`` error."""
        auth = request.headers.get("Authorization")
        if not auth:
            message = (
                "You didn't provide an API key. You need to provide your API key in an Authorization "
                "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
            )
        else:
            key = auth.removeprefix("Bearer ").strip()
            message = f"Incorrect API key provided: {key[:3]}***{key[-4:] if len(key) > 8 else ''}."
        return _json_response(401, error_body(message, "invalid_request_error", "invalid_api_key"))

    @staticmethod
    def _model(name: str) -> web.Response:
        """Return one model, or OpenAI's 404 ``model_not_found``."""
        for model, created in MODELS:
            if model == name:
                return _json_response(200, orjson.dumps(model_object(model, created)))
        message = f"The model '{name}' does not exist or you do not have access to it."
        return _json_response(404, error_body(message, "invalid_request_error", "model_not_found", "model"))

    # ------------------------------------------------------------------ generated answers

    async def _generate(
        self,
        request: web.BaseRequest,
        body: bytes,
        record: _Record,
        parse: Callable[[bytes], Reply],
    ) -> web.StreamResponse:
        """Serve one generating endpoint (chat, legacy completions, embeddings, moderations), every switch."""
        started = time.perf_counter()
        try:
            reply = parse(body)
        except InvalidRequestError as exc:
            self._finished(record, 400)
            return _json_response(400, error_body(str(exc), "invalid_request_error", None, exc.param))
        number = next(self._ids)
        fake = reply.fake
        if not (fake.delay or fake.hang or reply.stream):
            return self._respond(reply, number, started, record)
        # Long-lived: tracked so that stop() can cancel it instead of waiting for it.
        task = asyncio.current_task()
        self._lingering.add(task)
        try:
            try:
                if fake.delay:
                    await asyncio.sleep(fake.delay)
                if fake.hang:
                    await asyncio.get_running_loop().create_future()  # resolved by nobody: await cancellation
            except asyncio.CancelledError:
                self._client_gone(record)
                raise
            if reply.stream and fake.status is None and not fake.garbage:
                return await self._stream(request, reply, number, _headers(number, started), record)
            return self._respond(reply, number, started, record)
        finally:
            self._lingering.discard(task)

    def _respond(self, reply: Reply, number: int, started: float, record: _Record) -> web.Response:
        """Return the complete (non-streamed) answer: a ``status`` error, ``garbage`` or the reply."""
        fake = reply.fake
        headers = _headers(number, started)
        if fake.status is not None:
            headers["Content-Type"] = fake.content_type or _JSON
            if fake.headers:
                headers.update(fake.headers)
            response = web.Response(status=fake.status, body=fake.error_payload(), headers=headers)
        elif fake.garbage:
            headers["Content-Type"] = _JSON
            response = web.Response(status=200, body=GARBAGE_BODY, headers=headers)
        else:
            headers["Content-Type"] = _JSON
            response = web.Response(status=200, body=reply.plain(number), headers=headers)
        self._finished(record, response.status)
        return response

    async def _stream(
        self,
        request: web.BaseRequest,
        reply: Reply,
        number: int,
        headers: dict[str, str],
        record: _Record,
    ) -> web.StreamResponse:
        """Send ``reply`` as server-sent events, writing each chunk to the socket as soon as it is made.

        Content chunks are paced on absolute deadlines (``start + i * chunk_delay``) so a loaded server does
        not drift.  A client disconnect (handler cancelled, or a write failing) is recorded and ends the
        stream; ``cut_after_chunks`` closes the connection after that many content chunks, without the
        final chunks, the terminating HTTP chunk or ``[DONE]``.
        """
        headers["Content-Type"] = _SSE
        headers["Cache-Control"] = "no-cache"
        response = web.StreamResponse(status=200, headers=headers)
        fake = reply.fake
        plan = reply.plan(number)
        cut = fake.cut_after_chunks
        delay = fake.chunk_delay
        loop = asyncio.get_running_loop()
        if record is not None:
            record.stream = True
            record.status = 200
        self.open_streams += 1
        try:
            await response.prepare(request)
            for event in plan.head:
                await response.write(event)
            deadline = loop.time()
            content = plan.content if cut is None else itertools.islice(plan.content, cut)
            for sent, event in enumerate(content, 1):
                if delay:
                    deadline += delay
                    pause = deadline - loop.time()
                    if pause > 0:
                        await asyncio.sleep(pause)
                await response.write(event)
                if record is not None:
                    record.chunks_sent = sent
            if cut is not None:
                self._cut(request, record)
                return response
            if delay:
                deadline += delay
                pause = deadline - loop.time()
                if pause > 0:
                    await asyncio.sleep(pause)
            for event in plan.tail:
                await response.write(event)
            await response.write(_DONE)
            await response.write_eof()
        except asyncio.CancelledError:
            self._client_gone(record)
            raise
        except ConnectionError:
            self._client_gone(record)
            return response
        finally:
            self.open_streams -= 1
        self._finished(record, 200)
        return response

    @staticmethod
    def _cut(request: web.BaseRequest, record: _Record) -> None:
        """Close the connection mid-response; the chunks already written are flushed first."""
        if record is not None:
            record.cut = True
            record.finished_at = time.time()
        transport = request.transport
        if transport is not None:
            transport.close()

    # ------------------------------------------------------------------ bookkeeping

    def _finished(self, record: _Record, status: int) -> None:
        """Count a response handed over in full and mark its record."""
        self.completed += 1
        if record is not None:
            record.status = status
            record.completed = True
            record.finished_at = time.time()

    def _client_gone(self, record: _Record) -> None:
        """Count and record a client that went away before its response was complete."""
        if self._stopping:
            return
        self.client_disconnects += 1
        if record is not None:
            record.disconnected = True
            record.disconnected_at = record.finished_at = time.time()

    def stats(self) -> dict[str, int]:
        """Return the counters served by ``GET /_fake/stats``."""
        return {
            "open_streams": self.open_streams,
            "completed": self.completed,
            "client_disconnects": self.client_disconnects,
        }

    def _introspect(self, request: web.BaseRequest, path: str) -> web.Response:
        """Serve the ``/_fake/*`` test endpoints."""
        method = request.method
        if path == "/_fake/requests":
            if method == "GET":
                return _json_response(200, orjson.dumps([record.as_dict() for record in self.requests]))
            if method == "DELETE":
                cleared = len(self.requests)
                self.requests.clear()
                return _json_response(200, orjson.dumps({"cleared": cleared}))
        elif path == "/_fake/mode":
            if method == "POST":
                status = request.query.get("fail_status")
                self.fail_status = int(status) if status else None
                self.retry_after = request.query.get("retry_after") or None
                self.hang = request.query.get("hang") == "1"
            if method in ("GET", "POST"):
                state = {"fail_status": self.fail_status, "retry_after": self.retry_after, "hang": self.hang}
                return _json_response(200, orjson.dumps(state))
        elif path == "/_fake/stats":
            if method == "GET":
                return _json_response(200, orjson.dumps(self.stats()))
            if method == "DELETE":
                self.completed = self.client_disconnects = 0
                return _json_response(200, orjson.dumps(self.stats()))
        else:
            return _not_found(method, path)
        message = f"Method not allowed ({method} {path})"
        return _json_response(405, error_body(message, "invalid_request_error"))


def _azure_error(code: str, message: str) -> bytes:
    """An error body as Azure OpenAI writes it: a code and a message, no type or param."""
    return orjson.dumps({"error": {"code": code, "message": message}})


def _bind(host: str, port: int) -> socket.socket:
    """Return a non-blocking TCP socket bound to ``host:port`` (not yet listening)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, type_, proto, _, address = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def new_event_loop() -> asyncio.AbstractEventLoop:
    """Return a new event loop: uvloop's when importable, else asyncio's default."""
    return uvloop.new_event_loop() if uvloop is not None else asyncio.new_event_loop()


def serve_in_thread(
    host: str = "127.0.0.1", port: int = 0, *, require_key: str | None = None, record: bool = True
) -> tuple[str, Callable[[], None]]:
    """Run a :class:`FakeUpstream` on its own event loop in a daemon thread.

    Returns ``(base_url, stop)`` once the server is listening: ``base_url`` is ``http://HOST:PORT`` with the
    real port (port 0 picks a free one; append ``/v1`` for an OpenAI client), and ``stop()`` shuts the server
    down and joins the thread (idempotent, safe to call from any thread but the server's own).
    """
    upstream = FakeUpstream(require_key=require_key, record=record)
    loop = new_event_loop()
    ready = threading.Event()
    outcome: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            try:
                outcome["url"] = loop.run_until_complete(upstream.start(host, port))
            except BaseException as exc:  # handed over to the caller's thread
                outcome["error"] = exc
                return
            finally:
                ready.set()
            loop.run_forever()
            loop.run_until_complete(upstream.stop())
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name=f"fakeupstream-{host}:{port}", daemon=True)
    thread.start()
    ready.wait()
    if "error" in outcome:
        thread.join()
        raise outcome["error"]
    lock = threading.Lock()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        with lock:
            if stopped:
                return
            stopped = True
        with contextlib.suppress(RuntimeError):  # the loop is already closed
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)

    return outcome["url"], stop


async def serve_forever(
    host: str,
    port: int,
    *,
    require_key: str | None = None,
    record: bool = True,
    on_ready: Callable[[str], None] | None = None,
    collect_while_idle: bool = False,
    **options: Any,
) -> None:
    """Serve until SIGTERM or SIGINT, then shut down cleanly (the body of ``python -m fakeupstream``).

    ``on_ready(base_url)`` is called once the socket is listening. ``collect_while_idle`` runs the process's full
    garbage collections between streams (see ``_collect_while_idle``; the caller turns the automatic ones off).
    """
    upstream = FakeUpstream(require_key=require_key, record=record, **options)
    url = await upstream.start(host, port)
    collector = asyncio.ensure_future(_collect_while_idle(upstream)) if collect_while_idle else None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
    finally:
        if collector is not None:
            collector.cancel()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await upstream.stop()


# How often the idle collector looks, and the longest it lets garbage wait under load that never pauses.
IDLE_CHECK_SECONDS = 0.25
LONGEST_WITHOUT_FULL_COLLECTION = 30.0


async def _collect_while_idle(upstream: FakeUpstream) -> None:
    """Run the full garbage collections of a process whose automatic ones are off (``python -m fakeupstream``)
    while nothing long-lived is in flight: a full collection traverses every held stream with the loop stopped
    (130-180 ms at 1,000 held streams), and at such a moment nobody waits for it. Under load that never pauses, one
    runs at least every LONGEST_WITHOUT_FULL_COLLECTION seconds, so reference cycles are still freed."""
    last = time.monotonic()
    while True:
        await asyncio.sleep(IDLE_CHECK_SECONDS)
        now = time.monotonic()
        if gc.get_count()[2] and (not upstream._lingering or now - last >= LONGEST_WITHOUT_FULL_COLLECTION):
            gc.collect()
            last = now
