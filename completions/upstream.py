"""The one `openai` client per process (per event loop), and the calls Tollgate makes with it.

Requests are relayed, not re-modelled: the client's JSON body goes out as bytes, and the answer comes back as a
raw `httpx2.Response`, unread, so plain answers are returned byte for byte and streams are relayed event by
event as they arrive. Upstream failures are translated here into Tollgate's errors.

The hot path (`open_upstream`) skips the SDK's per-call request building: the SDK rebuilds the URL, the
headers and a pydantic options model on every call (a quarter of a worker's CPU in a profile). Instead
`UpstreamPoster` takes the base URL, key and headers from the SDK client once per event loop and sends each
body through the SDK client's own HTTP client and connection pool (`UPSTREAM_HTTP_CLIENT=sdk`, the default;
`aiohttp` and `httpx` use a separate pool, for comparison in `make bench`). The answer is the same unread
`httpx2.Response` the SDK would return, with httpx2's errors. `GET /models` goes through the SDK's full path.

There is one client and one poster per upstream (`upstreams.targets.Target`: the default of `OPENAI_API_KEY` and
`OPENAI_BASE_URL`, or a row of `upstreams.models.Upstream`), each with that upstream's own key and headers: one
upstream's key is never sent to another. Which upstream serves a request is `upstreams.selection`'s choice.
"""

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator

import aiohttp
import httpx2
import openai
import orjson
from django.conf import settings
from httpx2._client import BoundAsyncStream
from openai._vendor.httpx_aiohttp.transport import AiohttpResponseStream as SDKAiohttpResponseStream

from core.errors import OpenAIError, UpstreamError, UpstreamTimeout
from core.outcome import ErrorType
from upstreams.models import UpstreamKind
from upstreams.selection import default_target, get_table
from upstreams.targets import Target

logger = logging.getLogger("tollgate.upstream")

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, openai.AsyncOpenAI]" = weakref.WeakKeyDictionary()
_posters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, UpstreamPoster]" = weakref.WeakKeyDictionary()
# The posters of defined upstreams, per event loop and upstream name (replaced when the upstream changes).
_target_posters: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, UpstreamPoster]]" = (
    weakref.WeakKeyDictionary()
)
_retired: set = set()  # strong references to the closing of replaced posters

# Upstream statuses passed to the client as they came: the request itself was wrong.
PASSTHROUGH_STATUSES = frozenset({400, 404, 409, 413, 415, 422})
# Headers of an upstream error worth keeping for the client.
PASSTHROUGH_HEADERS = ("retry-after", "retry-after-ms", "x-request-id")


# Seconds an idle upstream connection is kept for reuse.
KEEPALIVE_EXPIRY = 30


def upstream_timeout() -> httpx2.Timeout:
    return httpx2.Timeout(settings.OPENAI_TIMEOUT, connect=settings.OPENAI_CONNECT_TIMEOUT)


def build_upstream_client(target: Target | None = None) -> openai.AsyncOpenAI:
    """A new client for `target` (default: the upstream of OPENAI_API_KEY and OPENAI_BASE_URL), timeouts and pool
    from settings. The SDK retries nothing here: the client's own SDK does, against our limits."""
    target = target or default_target()
    timeout = upstream_timeout()
    limits = httpx2.Limits(
        max_connections=settings.UPSTREAM_MAX_CONNECTIONS,
        max_keepalive_connections=settings.UPSTREAM_MAX_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY,
    )
    if settings.UPSTREAM_HTTP_CLIENT == "httpx":
        http_client = openai.DefaultAsyncHttpxClient(timeout=timeout, limits=limits)
    else:
        http_client = openai.DefaultAioHttpClient(timeout=timeout, limits=limits)
    return openai.AsyncOpenAI(
        api_key=target.api_key,
        organization=target.organization or None,
        project=target.project or None,
        base_url=target.client_base_url(),
        timeout=timeout,
        max_retries=0,
        http_client=http_client,
    )


def get_upstream_client() -> openai.AsyncOpenAI:
    """The client for the running event loop (one per process in production: one loop per worker)."""
    loop = asyncio.get_running_loop()
    client = _clients.get(loop)
    if client is None:
        client = _clients[loop] = build_upstream_client()
    return client


def get_poster() -> "UpstreamPoster":
    """The hot-path poster for the running event loop, built from that loop's SDK client."""
    loop = asyncio.get_running_loop()
    poster = _posters.get(loop)
    if poster is None:
        poster = _posters[loop] = UpstreamPoster(get_upstream_client())
    return poster


def get_target_poster(target: Target) -> "UpstreamPoster":
    """The poster of `target` for the running event loop (the default upstream's is `get_poster()`)."""
    if target.is_default:
        return get_poster()
    loop = asyncio.get_running_loop()
    posters = _target_posters.get(loop)
    if posters is None:
        posters = _target_posters[loop] = {}
    poster = posters.get(target.name)
    if poster is None or poster.target is None or poster.target.version != target.version:
        if poster is not None:  # the upstream changed (key, URL, ...): a new client, the old one closed
            task = loop.create_task(_close_poster(poster))
            _retired.add(task)
            task.add_done_callback(_retired.discard)
        poster = posters[target.name] = UpstreamPoster(build_upstream_client(target), target)
    return poster


async def _close_poster(poster: "UpstreamPoster") -> None:
    await asyncio.sleep(settings.OPENAI_TIMEOUT)  # requests still reading from it finish first
    await poster.close()
    await poster.sdk.close()


async def prepare_routes() -> None:
    """Load the upstream table now (a database that cannot be asked yet leaves it to the first request)."""
    table = get_table()
    try:
        await table.current()
    except OpenAIError:
        logger.warning("upstreams not loaded at start; the first request will try again")
    table.start_refresher()


async def close_upstream_clients() -> None:
    for poster in list(_posters.values()):
        await poster.close()
    _posters.clear()
    for posters in list(_target_posters.values()):
        for poster in posters.values():
            await poster.close()
            await poster.sdk.close()
    _target_posters.clear()
    for client in list(_clients.values()):
        await client.close()
    _clients.clear()


class UpstreamStatusError(OpenAIError):
    """An upstream 4xx the client should see as it came (status, body and content type unchanged)."""

    def __init__(self, status: int, content: bytes, content_type: str, headers: dict):
        super().__init__("upstream error", headers=headers)
        # A 429 is worth another upstream (`completions.relay`); the other statuses are the request's own fault.
        self.failover = "429" if status == 429 else None
        self.status_code = status
        self.outcome_error_type = ErrorType.UPSTREAM_RATE_LIMITED if status == 429 else ErrorType.UPSTREAM_REJECTED
        self.content = content
        self.content_type = content_type

    def as_response(self):
        from django.http import HttpResponse

        response = HttpResponse(self.content, status=self.status_code, content_type=self.content_type)
        for name, value in self.headers.items():
            response[name] = value
        return response


def translate_status_error(exc: openai.APIStatusError) -> OpenAIError:
    """Map an upstream error status to what the client gets (see the README's error table).

    The result carries `upstream_request_id` (the upstream's `x-request-id`) for the usage record and logs."""
    error = _translate_status_error(exc)
    error.upstream_request_id = exc.response.headers.get("x-request-id", "")
    return error


def _translate_status_error(exc: openai.APIStatusError) -> OpenAIError:
    return translate_error_response(exc.response)


def translate_error_response(response: httpx2.Response, kind: str = "") -> OpenAIError:
    """`translate_status_error` for a read `httpx2.Response` whose status is 400 or more. An Azure upstream's
    error body (`kind`) leaves in OpenAI's shape.

    Errors another upstream may not have (a 5xx, a 429) carry `failover`, their reason (`5xx`, `429`)."""
    status = response.status_code
    headers = {name: response.headers[name] for name in PASSTHROUGH_HEADERS if name in response.headers}
    upstream_id = response.headers.get("x-request-id", "-")
    if status in PASSTHROUGH_STATUSES or status == 429:
        if kind == UpstreamKind.AZURE:
            return UpstreamStatusError(status, openai_error_body(response.content, status), "application/json", headers)
        return UpstreamStatusError(
            status, response.content, response.headers.get("content-type", "application/json"), headers
        )
    if status in (401, 403):
        # Our upstream key is wrong or lacks access: never the client's fault.
        logger.error(
            "upstream rejected the gateway's credentials: status=%s upstream_request_id=%s", status, upstream_id
        )
        return UpstreamError("The upstream service rejected the gateway's credentials.", code="upstream_auth_error")
    error = UpstreamError(f"The upstream service failed with status {status}.")
    if status >= 500:
        error.failover = "5xx"
    return error


def openai_error_body(content: bytes, status: int) -> bytes:
    """An Azure error body (`{"error": {"code", "message", ...}}`, or `{"statusCode", "message"}`, or not JSON)
    as OpenAI's `{"error": {"message", "type", "param", "code"}}`."""
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError:
        body = None
    inner = body.get("error") if isinstance(body, dict) else None
    if not isinstance(inner, dict):
        inner = body if isinstance(body, dict) else {}
    message = inner.get("message")
    if not isinstance(message, str) or not message:
        message = content.decode("utf-8", "replace")[:500] or f"The upstream service answered {status}."
    code = inner.get("code", inner.get("statusCode"))
    default_type = "requests" if status == 429 else "invalid_request_error"
    error_type = inner.get("type") if isinstance(inner.get("type"), str) else default_type
    param = inner.get("param") if isinstance(inner.get("param"), str) else None
    return orjson.dumps(
        {"error": {"message": message, "type": error_type, "param": param, "code": None if code is None else str(code)}}
    )


async def open_upstream(
    path: str, body: bytes, *, method: str = "POST", query: str = "", target: Target | None = None, model: str = ""
) -> httpx2.Response:
    """POST `body` (already-valid JSON bytes) to the upstream's `path` (`/chat/completions`, `/embeddings`, ...),
    or send `method` (GET, DELETE: no body) with `query` (already encoded); return the unread response.

    `target` is the upstream (default: the one of OPENAI_API_KEY/OPENAI_BASE_URL); `model` the public model the
    request names, which the target may know by another name (an alias, an Azure deployment).

    Raises `UpstreamStatusError` (400/404/409/413/415/422/429, to pass through), `UpstreamError` (502: other
    statuses, refused or broken connections) or `UpstreamTimeout` (504: nothing within OPENAI_TIMEOUT).
    The caller must `aclose()` the response. Errors another upstream might not have carry `failover` (their
    reason: `connect`, `timeout`, `5xx`, `429`).
    """
    if target is None or target.is_default:
        return await get_poster().post(path, body, method=method, query=query)
    path, query = target.locate(path, query, model)
    return await get_target_poster(target).post(path, target.body_for(body, model), method=method, query=query)


class UpstreamPoster:
    """POST bodies to the upstream's endpoints as the SDK would, with everything else prepared once.

    The base URL, the key and the SDK's headers (Authorization, OpenAI-Organization/-Project, User-Agent and the
    X-Stainless-* headers) come from the SDK client it is built from; timeouts and pool size from settings, as
    for the SDK client. With the default `sdk` transport it sends through the SDK client's own HTTP client and
    connection pool; `aiohttp` and `httpx` build a pool of their own. One instance per event loop
    (`get_poster`); `close()` releases the connections it owns.
    """

    def __init__(self, sdk: openai.AsyncOpenAI, target: Target | None = None):
        self.sdk = sdk
        self.target = target
        self.kind = target.kind if target is not None else ""
        self.base_url = str(sdk.base_url).rstrip("/")
        timeout = upstream_timeout()
        headers = {name: value for name, value in sdk.default_headers.items() if isinstance(value, str)}
        headers.update(sdk.auth_headers)
        if target is not None:
            headers.pop("Authorization", None)  # Azure's key goes in `api-key` instead
            headers.update(target.auth_headers())
        headers["X-Stainless-Retry-Count"] = "0"
        headers["X-Stainless-Read-Timeout"] = str(timeout.read)
        # What httpx2 asks for by default, and what `Response.aread()` decodes.
        headers.setdefault("Accept-Encoding", "gzip, deflate")
        self.headers = headers
        self.timeout = timeout
        self.transport = settings.UPSTREAM_HTTP_CLIENT
        self._session: aiohttp.ClientSession | None = None
        self._httpx_client: httpx2.AsyncClient | None = None
        self._urls: dict[str, tuple[str, httpx2.URL]] = {}
        self._httpx_headers = [(name.lower().encode(), value.encode()) for name, value in headers.items()]
        self._httpx_extensions = {"timeout": timeout.as_dict()}

    def prepare(self) -> None:
        """Build the connection pool now (its TLS context takes tens of ms), not on the first request."""
        if self.transport == "aiohttp" and self._session is None:
            self._session = self._build_session()
        elif self.transport == "httpx" and self._httpx_client is None:
            self._httpx_client = self._build_httpx_client()

    # Paths with ids in them (`/responses/resp_…`) are not kept: one entry per object would grow without bound.
    max_cached_urls = 64

    def _url(self, path: str) -> tuple[str, httpx2.URL]:
        urls = self._urls.get(path)
        if urls is None:
            url = self.base_url + path
            urls = (url, httpx2.URL(url))
            if len(self._urls) < self.max_cached_urls:
                self._urls[path] = urls
        return urls

    async def post(self, path: str, body: bytes, *, method: str = "POST", query: str = "") -> httpx2.Response:
        """The unread response to sending `body` to `path` with `method` (POST unless told), or the Tollgate error
        for a failure (see open_upstream)."""
        if query:
            url = f"{self.base_url}{path}?{query}"
            httpx_url = httpx2.URL(url)
        else:
            url, httpx_url = self._url(path)
        try:
            if self.transport == "sdk":
                response = await self._post_sdk(httpx_url, body, method)
            elif self.transport == "aiohttp":
                response = await self._post_aiohttp(url, body, method)
            else:
                response = await self._post_httpx(httpx_url, body, method)
            if response.status_code >= 400:
                try:
                    await response.aread()
                finally:
                    await response.aclose()
        except (aiohttp.ClientError, httpx2.HTTPError, TimeoutError) as exc:
            raise translate_transport_error(exc) from None
        if response.status_code >= 400:
            error = translate_error_response(response, self.kind)
            # As translate_status_error does for the SDK's errors: the usage record and the log line keep it.
            error.upstream_request_id = response.headers.get("x-request-id", "")
            raise error
        return response

    async def _post_aiohttp(self, url: str, body: bytes, method: str = "POST") -> httpx2.Response:
        if self._session is None:
            self._session = self._build_session()
        answer = await self._session.request(method, url, data=body or None, headers=self.headers)
        return httpx2.Response(
            status_code=answer.status, headers=answer.raw_headers, stream=AiohttpResponseStream(answer)
        )

    async def _post_sdk(self, url: httpx2.URL, body: bytes, method: str = "POST") -> httpx2.Response:
        # The SDK client's own HTTP client (its aiohttp transport and connection pool), sent a prepared request.
        request = httpx2.Request(
            method, url, headers=self._httpx_headers, content=body or None, extensions=self._httpx_extensions
        )
        return await self.sdk._client.send(request, stream=True)

    async def _post_httpx(self, url: httpx2.URL, body: bytes, method: str = "POST") -> httpx2.Response:
        request = httpx2.Request(
            method, url, headers=self._httpx_headers, content=body or None, extensions=self._httpx_extensions
        )
        if self._httpx_client is None:
            self._httpx_client = self._build_httpx_client()
        return await self._httpx_client.send(request, stream=True)

    def _build_httpx_client(self) -> httpx2.AsyncClient:
        limits = httpx2.Limits(
            max_connections=settings.UPSTREAM_MAX_CONNECTIONS,
            max_keepalive_connections=settings.UPSTREAM_MAX_CONNECTIONS,
            keepalive_expiry=KEEPALIVE_EXPIRY,
        )
        return openai.DefaultAsyncHttpxClient(timeout=self.timeout, limits=limits)

    def _build_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=settings.UPSTREAM_MAX_CONNECTIONS,
            keepalive_timeout=KEEPALIVE_EXPIRY,
            # The same certificate store as the SDK's transport (certifi).
            ssl=httpx2.create_ssl_context(),
        )
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.timeout.pool,  # waiting for a free connection in the pool, then connecting
            sock_connect=self.timeout.connect,
            sock_read=self.timeout.read,
        )
        # No decompression here: `httpx2.Response` decodes like the SDK's did; the stream is relayed raw. No
        # trust_env, as in the SDK's aiohttp transport (it would also look up ~/.netrc on every request).
        return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._httpx_client is not None:
            await self._httpx_client.aclose()
            self._httpx_client = None


def aiter_body(response: httpx2.Response) -> AsyncIterator[bytes]:
    """The raw body of an unread upstream `response`, each chunk as soon as it arrives: what aiohttp holds when it
    is read (so the events that arrived together come as one chunk), with httpx2's errors.

    A stream relays every upstream event through this loop. `response.aiter_raw()` resumes four generators per
    chunk (httpx2's byte chunker, its timing stream, the aiohttp transport's stream, aiohttp's iterator) before
    the relay sees it; an aiohttp-carried body (the SDK's transport, `UPSTREAM_HTTP_CLIENT=sdk` or `aiohttp`) is
    read here straight from aiohttp's buffer instead. Any other transport (`httpx`) goes through `aiter_raw()`.
    """
    content = _aiohttp_content(response)
    if content is None:
        return response.aiter_raw()
    response.is_stream_consumed = True
    return _aiter_aiohttp(content)


def _aiohttp_content(response: httpx2.Response) -> "aiohttp.StreamReader | None":
    stream = response.stream
    if isinstance(stream, BoundAsyncStream):  # the SDK's client wraps its transport's stream to time it
        stream = stream._stream
    if isinstance(stream, AiohttpResponseStream):
        return stream._answer.content
    if isinstance(stream, SDKAiohttpResponseStream):
        return stream._aiohttp_response.content
    return None


async def _aiter_aiohttp(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    try:
        while chunk := await content.readany():
            yield chunk
    except TimeoutError as exc:  # before ClientError: aiohttp's read timeout is both
        raise httpx2.ReadTimeout(str(exc)) from exc
    except aiohttp.ClientError as exc:
        raise httpx2.ReadError(str(exc)) from exc


class AiohttpResponseStream(httpx2.AsyncByteStream):
    """An aiohttp response body as an httpx2 stream, raising httpx2's errors like the SDK's aiohttp transport."""

    def __init__(self, answer: aiohttp.ClientResponse):
        self._answer = answer

    async def __aiter__(self):
        try:
            async for chunk in self._answer.content.iter_any():
                yield chunk
        except TimeoutError as exc:
            raise httpx2.ReadTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx2.ReadError(str(exc)) from exc

    async def aclose(self) -> None:
        # Back to the pool when fully read; a response abandoned halfway (a client that went away) is closed.
        try:
            self._answer.release()
            await self._answer.wait_for_close()
        except aiohttp.ClientError as exc:
            raise httpx2.ReadError(str(exc)) from exc


def translate_transport_error(exc: BaseException) -> OpenAIError:
    """504 for an upstream silent past OPENAI_TIMEOUT (or unreachable within OPENAI_CONNECT_TIMEOUT); else 502.

    Takes the poster's transport errors and the SDK's `APIConnectionError`/`APITimeoutError` alike. The cause
    chain is checked, not just the class: the SDK's aiohttp transport (openai 3.x, vendored httpx_aiohttp) maps a
    refused connection (aiohttp.ClientConnectorError) to ConnectTimeout.
    """
    error = _translate_transport_error(exc)
    # Nothing was answered: another upstream may do better (the relay fails over while nothing reached the client).
    error.failover = "timeout" if isinstance(error, UpstreamTimeout) else "connect"
    return error


def _translate_transport_error(exc: BaseException) -> OpenAIError:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, (aiohttp.ClientConnectorError, httpx2.ConnectError, ConnectionError)):
            logger.warning("upstream connection failed: %s", cause)
            return UpstreamError("Could not connect to the upstream service.")
        cause = cause.__cause__
    if isinstance(exc, (TimeoutError, httpx2.TimeoutException, openai.APITimeoutError)):
        return UpstreamTimeout(f"The upstream service did not answer within {settings.OPENAI_TIMEOUT:g} s.")
    logger.warning("upstream connection failed: %s", exc)
    return UpstreamError("Could not connect to the upstream service.")


async def list_models(target: Target | None = None) -> bytes:
    """The upstream's GET /models body (raw JSON bytes)."""
    if target is not None and not target.is_default:
        path, query = target.locate("/models", "", "")
        response = await get_target_poster(target).post(path, b"", method="GET", query=query)
        try:
            return await response.aread()
        finally:
            await response.aclose()
    client = get_upstream_client()
    try:
        response = await client.get("/models", cast_to=httpx2.Response)
    except openai.APIStatusError as exc:
        raise translate_status_error(exc) from None
    except openai.APIConnectionError as exc:
        raise translate_transport_error(exc) from None
    return response.content
