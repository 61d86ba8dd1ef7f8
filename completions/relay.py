"""The relay: one pipeline for every endpoint, with exactly-once settlement and reporting by construction.

    authenticate (DRF, before the handler) → parse and validate (the endpoint's `parse`) → model allowlist →
    admit (`metering.throttling.admit`: every limit and the budget in one atomic store call) → forward
    (`completions.upstream.open_upstream`) → relay (a JSON body whole, or a stream event by event) → settle
    once → report once (`core.outcome.outcome_finish`: usage record, metrics, log line)

`relay()` is one async generator per request. It yields a `Head` (status, headers, and for a plain answer its
body), then, for a stream, the stream's chunks. Two structural guarantees hang off its shape:

* **settled exactly once**: the upstream call and the whole relay run inside `async with admit(...)`, whose exit
  settles on every path — an answer, an error, a client gone (cancellation), a stream closed by the server;
* **reported exactly once**: the generator's outermost `finally` calls `outcome_finish`, which runs once per
  outcome.

The view (`completions.apis.RelayApi`) drives the generator: a plain answer is run to its end before the response
is returned; a stream is handed to Django wrapped in `RelayStream`, whose `close()` finishes the generator at once
when the response is closed early.

Usage comes from the upstream (`Endpoint.read_usage`, the stream dialect). Without it — a stream cut short, a
client gone, a malformed usage object — the request is recorded with an estimate and flagged `usage_estimated`:
the input estimate, and for a stream one output token per relayed piece of text.
"""

import asyncio
import logging
from dataclasses import dataclass, field

import httpx2
import orjson
from django.conf import settings

from core import metrics
from core.errors import ModelNotFound, OpenAIError, UpstreamError, UpstreamTimeout
from core.outcome import ErrorType, RequestOutcome, outcome_finish
from metering.throttling import admit

from .endpoints.base import Endpoint
from .sse import StreamState
from .upstream import open_upstream
from .usage import BadUsage, Usage

logger = logging.getLogger("tollgate.relay")

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # Tells nginx and similar proxies not to buffer the stream.
    "X-Accel-Buffering": "no",
}
# nginx's "client closed request": the client went away before the answer, which is no server error (a 500 here
# would count every impatient client in the 5xx rate of the metrics and logs).
CLIENT_CLOSED_REQUEST = 499


@dataclass(slots=True)
class Head:
    """The start of the answer: status, content type, headers; `body` for a plain answer, None for a stream."""

    status: int
    content_type: str
    headers: dict = field(default_factory=dict)
    body: bytes | None = None


async def relay(endpoint: Endpoint, request, outcome: RequestOutcome):
    """The pipeline for one authenticated request (see the module docstring). Raises `OpenAIError` (or DRF's
    errors) before the `Head` for every refusal and upstream failure; after the `Head` of a stream, failures
    become the stream's last event."""
    admission = None
    state = None  # a stream's, once its head is handed out
    try:
        parsed = endpoint.parse(request._request.body)
        outcome.model = parsed.model
        outcome.streamed = parsed.stream
        if settings.LOG_PROMPTS:
            outcome.prompt_messages = parsed.data.get(endpoint.log_field)
        if not request.auth.allows_model(parsed.model):
            raise ModelNotFound(
                f"The model `{parsed.model}` does not exist or you do not have access to it.", param="model"
            )
        input_estimate = endpoint.estimate_input(parsed)
        admission = admit(key=request.auth, demand=endpoint.demand(parsed, input_estimate), outcome=outcome)
        async with admission:
            upstream = await open_upstream(endpoint.upstream_path, parsed.forward_body)
            outcome.upstream_request_id = upstream.headers.get("x-request-id", "")
            if not parsed.stream:
                content = await _read_plain(endpoint, upstream, outcome, input_estimate)
            else:
                if not upstream.headers.get("content-type", "").lower().startswith("text/event-stream"):
                    # A 200 that is not a stream (a proxy's HTML page, a JSON body) has started nothing: a 502
                    # before any stream, as for a plain request, not a 200 whose only event is an error.
                    await upstream.aclose()
                    raise UpstreamError(
                        "The upstream service answered a streamed request without a stream.",
                        code="upstream_bad_response",
                    )
                dialect = endpoint.stream
                state = StreamState(client_wants_usage=parsed.client_wants_usage)
                metrics.stream_started()
                try:
                    yield Head(200, "text/event-stream", {**SSE_HEADERS, **admission.headers})
                    try:
                        try:
                            async for chunk in upstream.aiter_raw():
                                out = dialect.cut(state, chunk)
                                if out:
                                    outcome.mark_first_byte()
                                    yield out
                            dialect.check_end(state)
                        except httpx2.TimeoutException:
                            raise UpstreamTimeout("The upstream service stopped sending within the timeout.") from None
                        except httpx2.HTTPError:
                            raise UpstreamError("The upstream connection failed mid-stream.") from None
                    except OpenAIError as exc:
                        outcome.status = exc.status_code
                        outcome.error_type = outcome.error_type or exc.outcome_error_type
                        yield dialect.error_event(exc, state)
                    if state.upstream_error and not outcome.error_type:
                        outcome.error_type = ErrorType.UPSTREAM_ERROR
                finally:
                    metrics.stream_finished()
                    try:
                        await upstream.aclose()
                    finally:
                        _take_stream_usage(state, outcome, input_estimate)
        if state is None:
            outcome.status = upstream.status_code
            # After settling: the tokens left reflect the real usage.
            yield Head(
                upstream.status_code,
                upstream.headers.get("content-type", "application/json"),
                admission.headers,
                content,
            )
    except BaseException as exc:
        _fail(outcome, exc, state)
        if admission is not None and admission.headers and isinstance(exc, OpenAIError):
            # An upstream failure after admission still tells the client where its limits stand.
            exc.headers = {**admission.headers, **exc.headers}
        raise
    finally:
        outcome_finish(outcome)


async def _read_plain(endpoint: Endpoint, upstream, outcome: RequestOutcome, input_estimate: int) -> bytes:
    """The whole answer, its usage taken into the outcome (an estimate, flagged, when it reports none)."""
    try:
        content = await upstream.aread()
    except httpx2.TimeoutException:
        _estimate(outcome, input_estimate)
        raise UpstreamTimeout("The upstream service did not answer in time.") from None
    except httpx2.HTTPError:
        _estimate(outcome, input_estimate)
        raise UpstreamError("The upstream connection failed while reading the answer.") from None
    except BaseException:
        _estimate(outcome, input_estimate)
        raise
    finally:
        await upstream.aclose()
    outcome.mark_first_byte()
    try:
        body = orjson.loads(content)
        usage = endpoint.read_usage(body) if isinstance(body, dict) else None
    except (orjson.JSONDecodeError, BadUsage) as exc:
        _estimate(outcome, input_estimate)
        logger.warning("the upstream answer to request %s is not valid: %s", outcome.request_id, exc)
        raise UpstreamError(
            "The upstream service returned an invalid JSON body or usage.", code="upstream_bad_response"
        ) from None
    if usage is None:
        _estimate(outcome, input_estimate)
    else:
        _take_usage(outcome, usage)
    return content


def _take_stream_usage(state: StreamState, outcome: RequestOutcome, input_estimate: int) -> None:
    if state.usage is not None:
        _take_usage(outcome, state.usage)
        return
    if state.bad_usage:
        logger.warning("upstream stream of request %s reported an invalid usage object", outcome.request_id)
    _estimate(outcome, input_estimate, output_tokens=state.relayed_text)


def _take_usage(outcome: RequestOutcome, usage: Usage) -> None:
    outcome.prompt_tokens = usage.input_tokens
    outcome.cached_tokens = usage.cached_tokens
    outcome.completion_tokens = usage.output_tokens


def _estimate(outcome: RequestOutcome, input_estimate: int, output_tokens: int = 0) -> None:
    outcome.usage_estimated = True
    outcome.prompt_tokens = input_estimate
    outcome.cached_tokens = 0
    outcome.completion_tokens = output_tokens


def _fail(outcome: RequestOutcome, exc: BaseException, state: StreamState | None) -> None:
    """Record on the outcome how an exception (or a cancellation) ended the request."""
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        if state is not None:
            # A stream the client got the head of: a 200 it left early, unless it had everything already.
            if not state.complete:
                outcome.client_disconnected = True
                outcome.error_type = outcome.error_type or ErrorType.CLIENT_DISCONNECTED
            return
        outcome.status = CLIENT_CLOSED_REQUEST
        outcome.error_type = outcome.error_type or ErrorType.CLIENT_DISCONNECTED
        return
    outcome.status = getattr(exc, "status_code", 500)
    if not outcome.error_type:
        outcome.error_type = getattr(exc, "outcome_error_type", None) or _drf_error_type(exc)
    outcome.upstream_request_id = outcome.upstream_request_id or getattr(exc, "upstream_request_id", "")


def _drf_error_type(exc: BaseException) -> ErrorType:
    status = getattr(exc, "status_code", 500)
    return ErrorType.INVALID_REQUEST if 400 <= status < 500 else ErrorType.SERVER_ERROR


_closing_relays: set = set()  # strong references to relays being closed in the background


class RelayStream:
    """A stream's generator handed to `StreamingHttpResponse`, with the `close()` Django calls when the response
    closes.

    A client that goes away while the server waits to *send* a chunk (a slow reader, the socket buffer full)
    cancels the send, not the generator: left suspended at its `yield`, its settlement and report would wait for
    garbage collection, which a quiet worker may not run for a long time. `close()` finishes it at once.
    """

    __slots__ = ("agen",)

    def __init__(self, agen):
        self.agen = agen

    def __aiter__(self):
        return self

    def __anext__(self):
        return self.agen.__anext__()

    def close(self) -> None:
        agen = self.agen
        if agen.ag_frame is None or agen.ag_running:
            return  # finished (the usual case), or finishing right now
        task = asyncio.get_running_loop().create_task(agen.aclose())
        _closing_relays.add(task)
        task.add_done_callback(_closing_relays.discard)
