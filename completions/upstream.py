"""The one `openai` client per process (per event loop), and the calls Tollgate makes with it.

Requests are relayed, not re-modelled: the client's JSON body goes out as bytes (`content=`), and the answer
comes back as the SDK's raw `httpx2.Response`, unread, so plain answers are returned byte for byte and streams
are relayed event by event as they arrive. Upstream failures are translated here into Tollgate's errors.
"""

import asyncio
import logging
import weakref

import httpx2
import openai
from django.conf import settings

from .errors import OpenAIError, UpstreamError, UpstreamTimeout

logger = logging.getLogger("tollgate.upstream")

_clients: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, openai.AsyncOpenAI]" = weakref.WeakKeyDictionary()

# Upstream statuses passed to the client as they came: the request itself was wrong.
PASSTHROUGH_STATUSES = frozenset({400, 404, 409, 413, 415, 422})
# Headers of an upstream error worth keeping for the client.
PASSTHROUGH_HEADERS = ("retry-after", "retry-after-ms", "x-request-id")


def build_upstream_client() -> openai.AsyncOpenAI:
    """A new client from settings. The SDK retries nothing here: the client's own SDK does, against our limits."""
    timeout = httpx2.Timeout(settings.OPENAI_TIMEOUT, connect=settings.OPENAI_CONNECT_TIMEOUT)
    limits = httpx2.Limits(
        max_connections=settings.UPSTREAM_MAX_CONNECTIONS,
        max_keepalive_connections=settings.UPSTREAM_MAX_CONNECTIONS,
        keepalive_expiry=30,
    )
    if settings.UPSTREAM_HTTP_CLIENT == "httpx":
        http_client = openai.DefaultAsyncHttpxClient(timeout=timeout, limits=limits)
    else:
        http_client = openai.DefaultAioHttpClient(timeout=timeout, limits=limits)
    return openai.AsyncOpenAI(
        # An OpenAI-compatible server without auth (the bundled fake, a local vLLM) needs no key; the SDK does.
        api_key=settings.OPENAI_API_KEY or "tollgate-no-upstream-key",
        base_url=settings.OPENAI_BASE_URL,
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


async def close_upstream_clients() -> None:
    for client in list(_clients.values()):
        await client.close()
    _clients.clear()


class UpstreamStatusError(OpenAIError):
    """An upstream 4xx the client should see as it came (status, body and content type unchanged)."""

    def __init__(self, status: int, content: bytes, content_type: str, headers: dict):
        super().__init__("upstream error", headers=headers)
        self.status_code = status
        self.content = content
        self.content_type = content_type

    def as_response(self):
        from django.http import HttpResponse

        response = HttpResponse(self.content, status=self.status_code, content_type=self.content_type)
        for name, value in self.headers.items():
            response[name] = value
        return response


def translate_status_error(exc: openai.APIStatusError) -> OpenAIError:
    """Map an upstream error status to what the client gets (see the README's error table)."""
    response = exc.response
    status = response.status_code
    headers = {name: response.headers[name] for name in PASSTHROUGH_HEADERS if name in response.headers}
    upstream_id = response.headers.get("x-request-id", "-")
    if status in PASSTHROUGH_STATUSES or status == 429:
        return UpstreamStatusError(
            status, response.content, response.headers.get("content-type", "application/json"), headers
        )
    if status in (401, 403):
        # Our upstream key is wrong or lacks access: never the client's fault.
        logger.error(
            "upstream rejected the gateway's credentials: status=%s upstream_request_id=%s", status, upstream_id
        )
        return UpstreamError("The upstream service rejected the gateway's credentials.", code="upstream_auth_error")
    return UpstreamError(f"The upstream service failed with status {status}.")


async def open_chat_completion(body: bytes) -> httpx2.Response:
    """POST `body` (already-valid JSON bytes) to the upstream's /chat/completions; return the unread response.

    Raises `UpstreamStatusError` (400/404/409/413/415/422/429, to pass through), `UpstreamError` (502: other
    statuses, refused or broken connections) or `UpstreamTimeout` (504: nothing within OPENAI_TIMEOUT).
    The caller must `aclose()` the response.
    """
    client = get_upstream_client()
    try:
        return await client.post("/chat/completions", cast_to=httpx2.Response, content=body, stream=True)
    except openai.APIStatusError as exc:
        raise translate_status_error(exc) from None
    except openai.APITimeoutError:
        raise UpstreamTimeout(f"The upstream service did not answer within {settings.OPENAI_TIMEOUT:g} s.") from None
    except openai.APIConnectionError as exc:
        logger.warning("upstream connection failed: %s", exc.__cause__ or exc)
        raise UpstreamError("Could not connect to the upstream service.") from None


async def list_models() -> bytes:
    """The upstream's GET /models body (raw JSON bytes)."""
    client = get_upstream_client()
    try:
        response = await client.get("/models", cast_to=httpx2.Response)
    except openai.APIStatusError as exc:
        raise translate_status_error(exc) from None
    except openai.APITimeoutError:
        raise UpstreamTimeout("The upstream service did not answer in time.") from None
    except openai.APIConnectionError:
        raise UpstreamError("Could not connect to the upstream service.") from None
    return response.content
