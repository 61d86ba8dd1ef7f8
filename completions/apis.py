"""The API endpoints: chat completions (plain and streamed) and the model list."""

import asyncio
import logging
import time

import httpx2
import orjson
from django.conf import settings
from django.http import HttpResponse, StreamingHttpResponse
from rest_framework.parsers import BaseParser

from apikeys.authentication import BearerAPIKeyAuthentication
from core import metrics
from core.asyncview import AsyncAPIView
from core.errors import ModelNotFound, OpenAIError, UpstreamError, UpstreamTimeout, error_body_bytes
from core.outcome import RequestOutcome, outcome_finish
from metering import throttling

from .schema import chat_completion_schema, model_list_schema
from .tokens import estimate_completion_tokens_from_text
from .upstream import list_models, open_chat_completion
from .validation import parse_chat_request

logger = logging.getLogger("tollgate.completions")

SSE_HEADERS = {
    "Cache-Control": "no-cache",
    # Tells nginx and similar proxies not to buffer the stream.
    "X-Accel-Buffering": "no",
}
DONE_EVENT = b"data: [DONE]"


class RawJSONParser(BaseParser):
    """Declares JSON for the schema; the body itself is read raw by the view (it is forwarded as bytes)."""

    media_type = "application/json"


def _error_event(exc: OpenAIError) -> bytes:
    return b"data: " + error_body_bytes(exc.message, exc.error_type, exc.param, exc.error_code) + b"\n\n"


_closing_relays: set = set()  # strong references to relays being closed in the background


class RelayStream:
    """The SSE relay handed to `StreamingHttpResponse`, with the `close()` Django calls when the response closes.

    A client that goes away while the server waits to *send* a chunk (a slow reader, the socket buffer full)
    cancels the send, not the relay generator: left suspended at its `yield`, its accounting (settle,
    `outcome_finish`) would wait for garbage collection, which a quiet worker may not run for a long time.
    `close()` finishes it at once: `aclose()` for a relay that started, `abandon()` for one the client left
    before the first chunk (the generator's own `finally` never runs then).
    """

    __slots__ = ("abandon", "agen", "started")

    def __init__(self, agen, abandon):
        self.agen = agen
        self.abandon = abandon
        self.started = False

    def __aiter__(self):
        return self

    async def __anext__(self):
        self.started = True
        return await self.agen.__anext__()

    def close(self) -> None:
        if self.started:
            if self.agen.ag_frame is None or self.agen.ag_running:
                return  # finished (the usual case), or finishing right now
            coroutine = self.agen.aclose()
        else:
            coroutine = self.abandon()
        task = asyncio.get_running_loop().create_task(coroutine)
        _closing_relays.add(task)
        task.add_done_callback(_closing_relays.discard)


@chat_completion_schema
class ChatCompletionCreateApi(AsyncAPIView):
    """POST /v1/chat/completions (and /api/route): authenticate, validate, limit, relay, account."""

    authentication_classes = [BearerAPIKeyAuthentication]
    permission_classes = []  # authentication raises by itself for a missing or bad key
    parser_classes = [RawJSONParser]
    throttle_classes = throttling.COMPLETION_THROTTLES

    async def post(self, request, *args, **kwargs):
        outcome = RequestOutcome(request_id=request._request.request_id, key=request.auth)
        try:
            response = await self.relay(request, outcome)
        except BaseException as exc:
            outcome.status = _status_of(exc)
            outcome.error_type = outcome.error_type or _error_type_of(exc)
            outcome.upstream_request_id = outcome.upstream_request_id or getattr(exc, "upstream_request_id", "")
            admission = getattr(self, "admission", None)
            if admission is not None and isinstance(exc, OpenAIError):
                # An upstream failure after admission still tells the client where its limits stand.
                exc.headers = {**admission.headers, **exc.headers}
            outcome_finish(outcome)
            raise
        if not outcome.streamed:
            outcome.status = response.status_code
            outcome_finish(outcome)
        return response

    async def relay(self, request, outcome: RequestOutcome):
        key = request.auth
        chat = parse_chat_request(request._request.body)
        outcome.model = chat.model
        outcome.streamed = chat.stream
        if settings.LOG_PROMPTS:
            outcome.prompt_messages = chat.data.get("messages")
        if not key.allows_model(chat.model):
            raise ModelNotFound(
                f"The model `{chat.model}` does not exist or you do not have access to it.", param="model"
            )
        self.admission = admission = await throttling.admit(
            request=request, view=self, key=key, chat=chat, outcome=outcome
        )
        try:
            upstream = await open_chat_completion(chat.forward_body)
        except BaseException:
            await admission.settle(outcome)
            raise
        outcome.upstream_request_id = upstream.headers.get("x-request-id", "")
        if chat.stream and not upstream.headers.get("content-type", "").lower().startswith("text/event-stream"):
            # A 200 that is not a stream (a proxy's HTML page, a JSON body) has started nothing: a 502 before any
            # stream, as for a plain request, not a 200 whose only event is an error (issue 8).
            await upstream.aclose()
            await admission.settle(outcome)
            raise UpstreamError(
                "The upstream service answered a streamed request without a stream.", code="upstream_bad_response"
            )
        if chat.stream:
            response = StreamingHttpResponse(
                RelayStream(
                    self.relay_stream(upstream, chat, admission, outcome),
                    abandon=lambda: self.abandon_stream(upstream, admission, outcome),
                ),
                content_type="text/event-stream",
                headers={**SSE_HEADERS, **admission.headers},
            )
            return response
        try:
            content = await upstream.aread()
        except httpx2.TimeoutException:
            await admission.settle(outcome)
            raise UpstreamTimeout("The upstream service did not answer in time.") from None
        except httpx2.HTTPError:
            await admission.settle(outcome)
            raise UpstreamError("The upstream connection failed while reading the answer.") from None
        finally:
            await upstream.aclose()
        outcome.mark_first_byte()
        try:
            usage = orjson.loads(content).get("usage") or {}
        except (orjson.JSONDecodeError, AttributeError):
            await admission.settle(outcome)
            raise UpstreamError(
                "The upstream service returned an invalid JSON body.", code="upstream_bad_response"
            ) from None
        _take_usage(outcome, usage)
        await admission.settle(outcome)
        return HttpResponse(
            content,
            status=upstream.status_code,
            content_type=upstream.headers.get("content-type", "application/json"),
            headers=admission.headers,
        )

    async def relay_stream(self, upstream, chat, admission, outcome: RequestOutcome):
        """Forward each upstream SSE event the moment it is complete; account for the stream when it ends.

        The usage chunk Tollgate asked for is dropped unless the client asked for it too. An upstream that
        fails or ends without `[DONE]` gets a final `data: {"error": …}` event. A client that goes away cancels
        this generator: the upstream request is closed at once and the usage estimated from what was relayed.
        """
        pending = b""
        done = False
        usage = None
        relayed_text = []
        metrics.stream_started()
        try:
            try:
                async for chunk in upstream.aiter_raw():
                    if b"\r" in chunk:
                        chunk = chunk.replace(b"\r\n", b"\n")
                    pending += chunk
                    if b"\n\n" not in pending:
                        continue
                    *events, pending = pending.split(b"\n\n")
                    out = []
                    for event in events:
                        if not event:
                            continue
                        if event.startswith(DONE_EVENT):
                            done = True
                        elif b'"usage":{' in event or b'"usage": {' in event:
                            parsed = _parse_event(event)
                            if parsed is not None and isinstance(parsed.get("usage"), dict):
                                usage = parsed["usage"]
                                if not chat.client_wants_usage and not parsed.get("choices"):
                                    continue  # the usage chunk only Tollgate asked for
                        elif b'"error"' in event[:20]:
                            outcome.error_type = "upstream_error"
                        else:
                            relayed_text.append(event)
                        out.append(event + b"\n\n")
                    if out:
                        outcome.mark_first_byte()
                        yield b"".join(out)
                if not done:
                    raise UpstreamError("The upstream stream ended before it was complete.")
            except httpx2.TimeoutException:
                raise UpstreamTimeout("The upstream service stopped sending within the timeout.") from None
            except httpx2.HTTPError:
                raise UpstreamError("The upstream connection failed mid-stream.") from None
        except OpenAIError as exc:
            outcome.status = exc.status_code
            outcome.error_type = outcome.error_type or exc.error_code or exc.error_type
            yield _error_event(exc)
        except (asyncio.CancelledError, GeneratorExit):
            if not done:  # after [DONE] the client has it all: a complete request, not a disconnect
                outcome.client_disconnected = True
                outcome.error_type = outcome.error_type or "client_disconnected"
            raise
        finally:
            metrics.stream_finished()
            await upstream.aclose()
            if usage is not None:
                _take_usage(outcome, usage)
            else:
                outcome.usage_estimated = True
                outcome.prompt_tokens = admission.prompt_estimate
                outcome.completion_tokens = estimate_completion_tokens_from_text(relayed_text)
            try:
                await admission.settle(outcome)
            finally:
                # The SDK hangs up as soon as it has read [DONE]: the cancellation that follows can land in
                # settle's await (7 of 20 SDK streams on a key with a budget went unrecorded), and the request
                # must still be reported.
                outcome_finish(outcome)

    async def abandon_stream(self, upstream, admission, outcome: RequestOutcome) -> None:
        """Account for a stream whose client left before its first chunk was sent (see `RelayStream`)."""
        outcome.client_disconnected = True
        outcome.error_type = outcome.error_type or "client_disconnected"
        try:
            await upstream.aclose()
        finally:
            outcome.usage_estimated = True
            outcome.prompt_tokens = admission.prompt_estimate
            try:
                await admission.settle(outcome)
            finally:
                outcome_finish(outcome)


def _parse_event(event: bytes):
    line = event.split(b"\n", 1)[0]
    if not line.startswith(b"data:"):
        return None
    try:
        parsed = orjson.loads(line[5:])
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _take_usage(outcome: RequestOutcome, usage: dict) -> None:
    outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    outcome.completion_tokens = int(usage.get("completion_tokens") or 0)


# nginx's "client closed request": the client went away before the answer, which is no server error (a 500 here
# would count every impatient client in the 5xx rate of the metrics and logs).
CLIENT_CLOSED_REQUEST = 499


def _status_of(exc) -> int:
    if isinstance(exc, asyncio.CancelledError):
        return CLIENT_CLOSED_REQUEST
    return getattr(exc, "status_code", 500)


def _error_type_of(exc) -> str:
    if isinstance(exc, OpenAIError):
        return exc.error_code or exc.error_type
    if isinstance(exc, asyncio.CancelledError):
        return "client_disconnected"
    return getattr(exc, "default_code", "") or exc.__class__.__name__


@model_list_schema
class ModelListApi(AsyncAPIView):
    """GET /v1/models: the models this key may use, in OpenAI's list shape.

    A key with an allowlist sees exactly its allowlist; a key without one sees the upstream's own list.
    """

    authentication_classes = [BearerAPIKeyAuthentication]
    permission_classes = []

    async def get(self, request, *args, **kwargs):
        key = request.auth
        if key.allowed_models:
            created = int(time.time())
            data = [
                {"id": model, "object": "model", "created": created, "owned_by": "tollgate"}
                for model in sorted(key.allowed_models)
            ]
            return HttpResponse(orjson.dumps({"object": "list", "data": data}), content_type="application/json")
        return HttpResponse(await list_models(), content_type="application/json")
