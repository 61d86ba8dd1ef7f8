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

Endpoints on server-side state add three steps, all declared (`Endpoint.owned`, `references`, `creates`): before
admission, every object the path or the body names must be owned by the key's lineage (`serverstate`), else a
404 that reads exactly like an unknown id's, and nothing reaches the upstream; a follow-up reserves the recorded
size of the chain it continues on top of its own input; and the id of an object the answer creates is recorded
as the lineage's before the answer is handed out (a stream: before its `response.created` event is relayed). A
created object that outlives the request (a background response) takes the admission with it: its concurrency
slot and reservations stay held, and `completions.background` settles them once, when it ends.

Usage comes from the upstream (`Endpoint.read_usage`, the stream dialect). Without it — a stream cut short, a
client gone, a malformed usage object — the request is recorded with an estimate and flagged `usage_estimated`:
the input estimate, and for a stream one output token per relayed piece of text.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field

import httpx2
import orjson
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import DatabaseError

from core import metrics
from core.errors import (
    ModelNotFound,
    ObjectNotFound,
    OpenAIError,
    ServiceUnavailable,
    ToolNotAllowed,
    UpstreamError,
    UpstreamTimeout,
)
from core.outcome import ErrorType, RequestOutcome, outcome_finish
from metering.throttling import Admission, admit
from serverstate.models import BackgroundResponse
from serverstate.selectors import owned_objects_find
from serverstate.services import owned_object_record, owned_response_usage
from upstreams.health import get_health, retry_after_seconds
from upstreams.selection import NoUpstreamLeft, choose
from upstreams.targets import DEFAULT_NAME
from upstreams.telemetry import upstream_attempted, upstream_failed_over

from .endpoints.base import Endpoint, Owned
from .sse import StreamState
from .upstream import aiter_body, open_upstream
from .usage import BadUsage, Usage
from .validation import ParsedRequest, conversation_of

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


async def relay(endpoint: Endpoint, request, outcome: RequestOutcome, params: dict | None = None):
    """The pipeline for one authenticated request (see the module docstring); `params` are the route's path
    parameters. Raises `OpenAIError` (or DRF's errors) before the `Head` for every refusal and upstream failure;
    after the `Head` of a stream, failures become the stream's last event."""
    admission = None
    state = None  # a stream's, once its head is handed out
    owner: _Owner | None = None
    try:
        parsed = endpoint.parse(request._request.body)
        query = endpoint.read_query(parsed, request._request.GET) if endpoint.read_query is not None else ""
        outcome.model = parsed.model
        outcome.streamed = parsed.stream
        if settings.LOG_PROMPTS:
            outcome.prompt_messages = parsed.data.get(endpoint.log_field)
        key = request.auth
        if parsed.model and not key.allows_model(parsed.model):
            raise ModelNotFound(
                f"The model `{parsed.model}` does not exist or you do not have access to it.", param="model"
            )
        if endpoint.hosted_tools is not None:
            refused = key.refused_tools(endpoint.hosted_tools(parsed))
            if refused:
                raise ToolNotAllowed(
                    f"This API key may not use the hosted tool type `{refused[0]}` (allowed: "
                    f"{', '.join(sorted(key.hosted_tools))}).",
                    param="tools",
                )
        chains, holder = await _check_owned(endpoint, parsed, key, params or {})
        input_estimate = endpoint.estimate_input(parsed) + chains
        admission = admit(key=key, demand=endpoint.demand(parsed, input_estimate), outcome=outcome)
        if endpoint.creates is not None:
            owner = _Owner(endpoint, parsed, key, outcome, admission, input_estimate)
        async with admission:
            upstream_path = endpoint.upstream_path.format(**params) if params else endpoint.upstream_path
            upstream = await _forward(endpoint, parsed, upstream_path, query, outcome, holder, input_estimate)
            outcome.upstream_request_id = upstream.headers.get("x-request-id", "")
            if not parsed.stream:
                content, answer = await _read_plain(endpoint, upstream, outcome, input_estimate)
                if owner is not None and answer is not None and upstream.status_code == 200:
                    await owner.record(answer.get("id"))
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
                            async for chunk in aiter_body(upstream):
                                out = dialect.cut(state, chunk)
                                if owner is not None and state.created_id is not None and not owner.recorded:
                                    # Owned before anyone can learn the id from the stream.
                                    await owner.record(state.created_id)
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
                        if endpoint.metered:
                            _take_stream_usage(state, outcome, input_estimate)
                        if owner is not None:
                            owner.usage_known(state)
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


async def _forward(
    endpoint: Endpoint, parsed: ParsedRequest, path: str, query: str, outcome: RequestOutcome, holder: str, tokens: int
):
    """The upstream's unread answer to the request, failing over: an upstream that refuses or resets the connection,
    stays silent until the timeout (`UPSTREAM_FIRST_BYTE_TIMEOUT` for its answer's head when set, else what is left
    of `OPENAI_TIMEOUT`), or answers 5xx or 429 (`OpenAIError.failover`) is marked in its health and the same
    request goes to the next upstream `upstreams.selection` chooses, up to `UPSTREAM_MAX_ATTEMPTS` and within
    `OPENAI_TIMEOUT`. Nothing has reached the client yet: the head is yielded only after this returns. A request
    about a stored object goes only to its `holder`. The last failure is raised when no attempt succeeds."""
    deadline = time.monotonic() + settings.OPENAI_TIMEOUT
    tokens += (parsed.max_output_tokens or 0) * max(parsed.choices or 1, 1)
    tried: list[str] = []
    failure: OpenAIError | None = None
    while True:
        try:
            target = await choose(parsed.model, tried=tried, pinned=holder or None, tokens=tokens)
        except NoUpstreamLeft:
            assert failure is not None  # raised only once an upstream has failed this request
            raise failure from None
        outcome.upstream = target.name
        outcome.attempts = len(tried) + 1
        started = time.perf_counter()
        try:
            answer = await _attempt(endpoint, parsed, path, query, target, deadline)
        except OpenAIError as exc:
            upstream_attempted(target, time.perf_counter() - started, exc.failover)
            if exc.failover is None or target.is_default:
                raise
            await get_health().failed(
                target.name,
                retry_after=retry_after_seconds(exc.headers) if exc.failover == "429" else None,
                reason=exc.failover,
                message=exc.message,
            )
            failure = exc
            tried.append(target.name)
            if len(tried) >= settings.UPSTREAM_MAX_ATTEMPTS or time.monotonic() >= deadline:
                raise
            upstream_failed_over(target)
            continue
        upstream_attempted(target, time.perf_counter() - started, None)
        return answer


async def _attempt(endpoint: Endpoint, parsed: ParsedRequest, path: str, query: str, target, deadline: float):
    """One upstream's unread answer, its head awaited at most `UPSTREAM_FIRST_BYTE_TIMEOUT` (when set) and never
    past `deadline`: an upstream that accepted the connection and went silent is an `UpstreamTimeout` the request
    fails over from, while there is time left to."""
    send = open_upstream(
        path, parsed.forward_body, method=endpoint.method, query=query, target=target, model=parsed.model
    )
    bound = settings.UPSTREAM_FIRST_BYTE_TIMEOUT
    if not bound or target.is_default:
        return await send
    try:
        async with asyncio.timeout(min(bound, max(deadline - time.monotonic(), 0.0))):
            return await send
    except TimeoutError:
        error = UpstreamTimeout("The upstream service did not start its answer in time.")
        error.failover = "timeout"
        raise error from None


async def _read_plain(
    endpoint: Endpoint, upstream, outcome: RequestOutcome, input_estimate: int
) -> tuple[bytes, dict | None]:
    """The whole answer and its JSON object, its usage taken into the outcome (an estimate, flagged, when it
    reports none; nothing for an endpoint that is not `metered`)."""
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
    if not endpoint.metered:
        try:
            body = orjson.loads(content)
        except orjson.JSONDecodeError:
            body = None
        return content, body if isinstance(body, dict) else None
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
    return content, body if isinstance(body, dict) else None


def not_found_message(owned: Owned) -> str:
    """What an id the key's lineage does not own answers: OpenAI's own words for an id that does not exist."""
    if owned.param == "previous_response_id":
        return f"Previous response with id '{owned.object_id}' not found."
    return f"{owned.kind.capitalize()} with id '{owned.object_id}' not found."


async def _check_owned(endpoint: Endpoint, parsed: ParsedRequest, key, params: dict) -> tuple[int, str]:
    """Refuse (404, as for an unknown id) any object the path or body names that the key's lineage does not own.
    Returns the recorded size of the chains the body's references continue (tokens the upstream will add), and the
    upstream holding the objects named ("" for none, or objects recorded before upstreams were data)."""
    wanted = list(endpoint.references(parsed))
    if endpoint.owned is not None:
        wanted.insert(0, Owned(endpoint.owned.kind, params[endpoint.owned.parameter]))
    if not wanted:
        return 0, ""
    try:
        found = await sync_to_async(owned_objects_find, thread_sensitive=False)(
            lineage=key.lineage, wanted=[(item.kind, item.object_id) for item in wanted]
        )
    except DatabaseError:
        raise ServiceUnavailable("Tollgate cannot check who owns this object right now; try again shortly.") from None
    for item in wanted:
        if (item.kind, item.object_id) not in found:
            raise ObjectNotFound(not_found_message(item), param=item.param)
    holder = next(
        (found[item.kind, item.object_id].upstream for item in wanted if found[item.kind, item.object_id].upstream), ""
    )
    return sum(found[item.kind, item.object_id].chain_tokens for item in wanted if item.param is not None), holder


def holder_of(outcome: RequestOutcome) -> str:
    """The upstream an object the request created lives in, as ownership records it: "" for the default upstream
    (as for objects recorded before upstreams were data: any upstream may be asked about them)."""
    return "" if outcome.upstream == DEFAULT_NAME else outcome.upstream


_usage_updates: set = set()  # strong references to ownership usage updates running in the background


class _Owner:
    """Records the object a request creates as its key lineage's (`Endpoint.creates`), once, and hands the
    admission of one that outlives the request (a background response) to `completions.background`."""

    __slots__ = ("admission", "endpoint", "input_estimate", "key", "object_id", "outcome", "parsed", "recorded")

    def __init__(self, endpoint, parsed, key, outcome, admission: Admission, input_estimate: int):
        self.endpoint = endpoint
        self.parsed = parsed
        self.key = key
        self.outcome = outcome
        self.admission = admission
        self.input_estimate = input_estimate
        self.recorded = False
        self.object_id: str | None = None

    async def record(self, object_id) -> None:
        self.recorded = True
        if not isinstance(object_id, str) or not object_id:
            return
        endpoint, parsed, key, outcome = self.endpoint, self.parsed, self.key, self.outcome
        background = None
        if endpoint.outlives(parsed):
            background = BackgroundResponse(
                response_id=object_id,
                request_id=outcome.request_id,
                api_key_id=key.id,
                key_prefix=key.prefix,
                key_name=key.name,
                lineage=key.lineage,
                endpoint=endpoint.name,
                model=parsed.model,
                upstream=holder_of(outcome),
                streamed=parsed.stream,
                input_estimate=self.input_estimate,
                admission=self.admission.hand_over(),
            )
        elif parsed.data.get("store") is False:
            return  # nothing is kept upstream: there is nothing to own
        known = not parsed.stream and background is None and not outcome.usage_estimated
        try:
            await sync_to_async(owned_object_record, thread_sensitive=False)(
                kind=endpoint.creates,
                object_id=object_id,
                lineage=key.lineage,
                key_prefix=key.prefix,
                request_id=outcome.request_id,
                input_tokens=outcome.prompt_tokens if known else None,
                output_tokens=outcome.completion_tokens if known else None,
                conversation_id=conversation_of(parsed.data) or "",
                upstream=holder_of(outcome),
                background=background,
            )
        except DatabaseError:
            if background is not None:
                self.admission.take_back()
            logger.exception("could not record the owner of %s %s", endpoint.creates, object_id)
            raise ServiceUnavailable(
                "Tollgate could not record the owner of the new object; it was not handed out. Try again shortly."
            ) from None
        self.object_id = object_id
        if background is not None:
            outcome.usage_deferred = True

    def usage_known(self, state: StreamState) -> None:
        """A stream's usage is known (its end): record the response's size for follow-ups, in the background."""
        if self.object_id is None or self.outcome.usage_deferred or state.usage is None:
            return
        update = sync_to_async(owned_response_usage, thread_sensitive=False)(
            response_id=self.object_id, input_tokens=state.usage.input_tokens, output_tokens=state.usage.output_tokens
        )
        task = asyncio.ensure_future(update)
        _usage_updates.add(task)
        task.add_done_callback(_usage_updates.discard)


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
    outcome.reasoning_tokens = usage.reasoning_tokens
    outcome.hosted_tool_calls = dict(usage.hosted_tool_calls)


def _estimate(outcome: RequestOutcome, input_estimate: int, output_tokens: int = 0) -> None:
    outcome.usage_estimated = True
    outcome.prompt_tokens = input_estimate
    outcome.cached_tokens = 0
    outcome.completion_tokens = output_tokens
    outcome.reasoning_tokens = 0


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
    """A stream's generator handed to `BytesStreamingResponse`, with the `close()` Django calls when the response
    closes.

    A client that goes away while the server waits to *send* a chunk (a slow reader, the socket buffer full)
    cancels the send, not the generator: left suspended at its `yield`, its settlement and report would wait for
    garbage collection, which a quiet worker may not run for a long time. `close()` finishes it at once.
    """

    __slots__ = ("agen",)

    def __init__(self, agen):
        self.agen = agen

    def __aiter__(self):
        # The generator itself: `async for` resumes it for each chunk with no call of ours in between.
        return self.agen

    def __anext__(self):
        return self.agen.__anext__()

    def close(self) -> None:
        agen = self.agen
        if agen.ag_frame is None or agen.ag_running:
            return  # finished (the usual case), or finishing right now
        task = asyncio.get_running_loop().create_task(agen.aclose())
        _closing_relays.add(task)
        task.add_done_callback(_closing_relays.discard)
