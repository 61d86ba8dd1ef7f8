"""Server-sent event streams as the upstream sends them, relayed event by event, unchanged.

A *dialect* knows how one family of endpoints frames its stream: where an event ends, which event ends the
stream, which event carries the usage, and how a failure is told to the client. `DataEventStream` is the one of
chat and legacy completions: `data: <json>` events, a usage chunk (`choices: []`) when asked for, and
`data: [DONE]` at the end. `TypedEventStream` is the Responses API's: `event: <type>` then `data: <json>`, no
`[DONE]`, ended by a terminal event whose `response.usage` is the usage.

The relay reads the upstream's bytes as they arrive, cuts them into complete events (`\\n\\n`), and yields
each batch of complete events at once: nothing is held back, nothing re-encoded. Only an event that may carry
usage or an error is parsed.
"""

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson

from core.errors import OpenAIError, UpstreamError, error_body_bytes

from .usage import BadUsage, Usage, chat_usage, response_object_usage

DONE_EVENT = b"data: [DONE]"


@dataclass(slots=True)
class StreamState:
    """What a relayed stream has told Tollgate so far.

    `usage` is the upstream's reported usage (None: none yet, or malformed); `complete` is True once the
    dialect's end event was relayed; `relayed_text` counts the pieces of generated text sent to the client (the
    estimate of a stream cut short); `upstream_error` is True when the upstream itself sent an error event.
    """

    client_wants_usage: bool = False
    usage: Usage | None = None
    bad_usage: bool = False
    complete: bool = False
    relayed_text: int = 0
    upstream_error: bool = False
    created_id: str | None = None  # the id of the object the stream created (Responses: `response.created`)
    last_sequence: int = -1  # the last `sequence_number` relayed (typed event streams)
    pending: bytes = field(default=b"", repr=False)


def complete_part(state: StreamState, chunk: bytes) -> bytes:
    """The part of `state.pending + chunk` up to the end of its last complete event (CRLF read as LF), or b""; the
    incomplete rest stays pending."""
    if b"\r" in chunk:
        chunk = chunk.replace(b"\r\n", b"\n")
    data = state.pending + chunk if state.pending else chunk
    end = data.rfind(b"\n\n")
    if end < 0:
        state.pending = data
        return b""
    end += 2
    if end == len(data):
        state.pending = b""
        return data
    state.pending = data[end:]
    return data[:end]


def complete_events(state: StreamState, chunk: bytes) -> list[bytes]:
    """The events `state.pending + chunk` completes (CRLF read as LF); the incomplete rest stays pending."""
    if b"\r" in chunk:
        chunk = chunk.replace(b"\r\n", b"\n")
    pending = state.pending + chunk if state.pending else chunk
    if b"\n\n" not in pending:
        state.pending = pending
        return []
    *events, state.pending = pending.split(b"\n\n")
    return events


class DataEventStream:
    """`data: <json>` events ended by `data: [DONE]` (chat completions, legacy completions).

    The usage chunk Tollgate asked for (`stream_options.include_usage`) is dropped unless the client asked for it
    too. `generated` matches one piece of generated text in an event (about one token each).
    """

    def __init__(self, *, generated: bytes):
        self.generated = re.compile(generated)

    def cut(self, state: StreamState, chunk: bytes) -> bytes:
        """The complete events of `state.pending + chunk`, filtered, ready to send (b"" if none is complete).

        Almost every chunk holds only content events: none ends the stream, carries usage or an error, so the
        complete part goes out as it came, in one slice, after one count of its pieces of text. Only a chunk that
        may hold one of those events is cut into events and looked at one by one.
        """
        data = complete_part(state, chunk)
        if not data:
            return b""
        if DONE_EVENT not in data and b'"usage":{' not in data and b'"usage": {' not in data and b'"error"' not in data:
            state.relayed_text += len(self.generated.findall(data))
            return data
        out = []
        for event in data.split(b"\n\n")[:-1]:
            if not event:
                continue
            if event.startswith(DONE_EVENT):
                state.complete = True
            elif b'"usage":{' in event or b'"usage": {' in event:
                parsed = _data_of(event)
                if parsed is not None and isinstance(parsed.get("usage"), dict):
                    try:
                        state.usage = chat_usage(parsed["usage"])
                    except BadUsage:
                        state.bad_usage = True
                    if not state.client_wants_usage and not parsed.get("choices"):
                        continue  # the usage chunk only Tollgate asked for
            elif b'"error"' in event[:20]:
                state.upstream_error = True
            else:
                state.relayed_text += len(self.generated.findall(event))
            out.append(event)
            out.append(b"\n\n")
        return b"".join(out)

    def check_end(self, state: StreamState) -> None:
        """Raise `UpstreamError` when the upstream's stream ended before its end event."""
        if not state.complete:
            raise UpstreamError("The upstream stream ended before it was complete.")

    def error_event(self, exc: OpenAIError, state: StreamState) -> bytes:
        """The last event of a stream that failed: `data: {"error": {...}}`."""
        return b"data: " + error_body_bytes(exc.message, exc.error_type, exc.param, exc.error_code) + b"\n\n"


_EVENT_TYPE = re.compile(rb"^event:[ ]?(\S+)", re.MULTILINE)
_DATA_TYPE = re.compile(rb'"type":\s?"([^"]+)"')
_SEQUENCE = re.compile(rb'"sequence_number":\s?(\d+)')
TERMINAL_EVENTS = frozenset({b"response.completed", b"response.incomplete", b"response.failed"})


class TypedEventStream:
    """`event: <type>` + `data: <json>` events (the Responses API), relayed unchanged as they come.

    The stream is complete after `response.completed`, `response.incomplete`, `response.failed` or `error`; the
    terminal event's `response.usage` (and the hosted tool calls of its `response.output`) is the usage.
    `response.created` names the id of the response the stream creates (`state.created_id`). Only those events
    are parsed; the others are scanned for their type and sequence number. Each `*.delta` event counts as one
    generated token for the estimate of a stream cut short.
    """

    def cut(self, state: StreamState, chunk: bytes) -> bytes:
        """The complete events of `state.pending + chunk`, ready to send (b"" if none is complete)."""
        events = complete_events(state, chunk)
        if not events:
            return b""
        out = []
        for event in events:
            if not event:
                continue
            found = _EVENT_TYPE.search(event) or _DATA_TYPE.search(event)
            kind = found.group(1) if found else b""
            sequence = _SEQUENCE.search(event)
            if sequence is not None:
                state.last_sequence = int(sequence.group(1))
            if kind.endswith(b".delta"):
                state.relayed_text += 1
            elif kind == b"response.created":
                data = _data_of(event)
                response = data.get("response") if data else None
                if isinstance(response, dict) and isinstance(response.get("id"), str):
                    state.created_id = response["id"]
            elif kind in TERMINAL_EVENTS:
                state.complete = True
                if kind == b"response.failed":
                    state.upstream_error = True
                data = _data_of(event)
                if data is not None:
                    try:
                        state.usage = response_object_usage(data.get("response"))
                    except BadUsage:
                        state.bad_usage = True
            elif kind == b"error":
                state.complete = True
                state.upstream_error = True
            out.append(event)
            out.append(b"\n\n")
        return b"".join(out)

    def check_end(self, state: StreamState) -> None:
        """Raise `UpstreamError` when the upstream's stream ended before a terminal event."""
        if not state.complete:
            raise UpstreamError("The upstream stream ended before it was complete.")

    def error_event(self, exc: OpenAIError, state: StreamState) -> bytes:
        """The last event of a stream that failed: OpenAI's `error` event, numbered after the last one relayed."""
        data = {
            "type": "error",
            "code": exc.error_code,
            "message": exc.message,
            "param": exc.param,
            "sequence_number": state.last_sequence + 1,
        }
        return b"event: error\ndata: " + orjson.dumps(data) + b"\n\n"


def _data_of(event: bytes) -> dict | None:
    for line in event.split(b"\n"):
        if line.startswith(b"data:"):
            break
    else:
        return None
    try:
        parsed = orjson.loads(line[5:])
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


async def aiter_events(dialect, state: StreamState, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The upstream's raw chunks as batches of complete, filtered events."""
    async for chunk in chunks:
        out = dialect.cut(state, chunk)
        if out:
            yield out
