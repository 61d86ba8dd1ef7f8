"""Pure, I/O-free logic of the fake upstream: request parsing, replies, usage and the ``fake`` switches.

This module holds chat completions and what every endpoint shares (the ``fake`` switches, the reply
protocol, JSON body loading); :mod:`fakeupstream.embeddings`, :mod:`fakeupstream.text_completions` and
:mod:`fakeupstream.moderations` hold the other endpoints.  Everything here is deterministic (but for
``created`` timestamps) and synchronous so it can be unit-tested without a server.  The HTTP layer in
:mod:`fakeupstream.server` only writes these bytes on the wire.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

#: Models listed by ``GET /v1/models`` (``created`` values are fixed so the listing is deterministic).
MODELS: tuple[tuple[str, int], ...] = (
    ("gpt-4o-mini", 1721172741),
    ("gpt-4o", 1715367049),
    ("gpt-4.1-mini", 1744318173),
    ("o4-mini", 1744225351),
)

#: Body sent for ``"fake": {"status": S}`` when no ``error_body`` is given.
DEFAULT_ERROR_BODY: dict[str, Any] = {
    "error": {"message": "fake error", "type": "server_error", "param": None, "code": None}
}

#: Body sent for ``"fake": {"garbage": true}`` (served as ``application/json`` on purpose).
GARBAGE_BODY = b"<html>oops"

#: The ``prompt_tokens`` reported for ``"fake": {"bad_usage": true}``.
BAD_USAGE_VALUE = "abc"

#: Switches that only make sense for a streamed answer.
STREAM_SWITCHES = ("chunk_delay_ms", "cut_after_chunks")


class InvalidRequestError(ValueError):
    """The request body is unusable; ``str(exc)`` is the OpenAI-style message and ``param`` the field."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """Return an OpenAI-shaped error document ``{"error": {message, type, param, code}}`` as JSON bytes."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def content_text(content: Any) -> str:
    """Return the text of a message ``content``.

    A string is returned as is; a list of parts yields its ``text`` parts (parts that are dicts with a
    string ``text``) joined with single spaces; anything else (``None``, tool calls, ...) yields ``""``.
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def split_pieces(text: str) -> list[str]:
    """Split ``text`` into stream pieces at single spaces, keeping the spaces.

    Every piece but the last ends with the space that followed it, so ``"".join(split_pieces(t)) == t``
    always holds.  No piece is empty unless ``text`` itself is empty (then the result is ``[]``).
    """
    if not text:
        return []
    words = text.split(" ")
    pieces = [word + " " for word in words[:-1]]
    if words[-1]:
        pieces.append(words[-1])
    return pieces


def prompt_tokens(messages: list[Any]) -> int:
    """Return the fake prompt token count: words across all contents + 3 per message."""
    words = 0
    for message in messages:
        if isinstance(message, dict):
            words += len(content_text(message.get("content")).split())
    return words + 3 * len(messages)


def make_usage(prompt: int, completion: int) -> dict[str, Any]:
    """Return an OpenAI ``usage`` object for the given prompt and completion token counts."""
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }


def _number(fake: dict[str, Any], key: str, *, integer: bool = False) -> float | None:
    """Return ``fake[key]`` as a non-negative number, ``None`` when absent; raise InvalidRequestError."""
    value = fake.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise InvalidRequestError(f"fake.{key} must be a non-negative number", f"fake.{key}")
    if integer:
        if value != int(value):
            raise InvalidRequestError(f"fake.{key} must be an integer", f"fake.{key}")
        return int(value)
    return float(value)


def _bad_usage(value: Any) -> Any:
    """Return the ``prompt_tokens`` value ``fake.bad_usage`` asks for, ``None`` when it is off.

    ``true`` means :data:`BAD_USAGE_VALUE`; ``false`` and ``null`` mean off; any other JSON value (``1.5``,
    ``-3``, ``"12"``, ``[]``) is reported as it is.
    """
    if value is None or value is False:
        return None
    if value is True:
        return BAD_USAGE_VALUE
    return value


def _is_http_status(value: Any) -> bool:
    """Tell whether ``value`` is an integer (not a bool) between 100 and 599."""
    return isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599


@dataclass(slots=True)
class FakeSwitches:
    """The parsed ``"fake"`` object of a request body (all switches optional, see the package docs).

    ``chunks`` (reply ``tok0 tok1 ...``), ``chunk_delay_ms`` (pause before each streamed content chunk),
    ``delay_ms`` (before answering), ``status`` (+ ``error_body``, ``content_type``, ``headers``: answer
    that error instead), ``garbage`` (a 200 whose body is not JSON), ``hang`` (never answer),
    ``cut_after_chunks`` (close the connection after that many content chunks), ``usage`` (reported
    verbatim) and ``bad_usage`` (``prompt_tokens`` reported as ``"abc"``, or as the value given).
    ``names`` keeps the switch names given, for :meth:`refuse`.
    """

    chunks: int | None = None
    chunk_delay: float = 0.0
    delay: float = 0.0
    status: int | None = None
    error_body: Any = None
    content_type: str | None = None
    headers: dict[str, str] | None = None
    garbage: bool = False
    hang: bool = False
    cut_after_chunks: int | None = None
    usage: dict[str, Any] | None = None
    bad_usage: Any = None
    names: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def parse(cls, fake: Any) -> FakeSwitches:
        """Validate the ``fake`` field of a request body; ``None`` means no switches.

        Raises :class:`InvalidRequestError` for a ``fake`` that is not an object or a switch of the wrong
        type, so a typo in a test fails loudly instead of silently producing an ordinary completion.
        """
        if fake is None:
            return _NO_SWITCHES
        if not isinstance(fake, dict):
            raise InvalidRequestError("fake must be an object", "fake")
        chunks = _number(fake, "chunks", integer=True)
        cut = _number(fake, "cut_after_chunks", integer=True)
        status = fake.get("status")
        if status is not None and not _is_http_status(status):
            raise InvalidRequestError("fake.status must be an integer HTTP status", "fake.status")
        content_type = fake.get("content_type")
        if content_type is not None and not isinstance(content_type, str):
            raise InvalidRequestError("fake.content_type must be a string", "fake.content_type")
        headers = fake.get("headers")
        if headers is not None:
            if not isinstance(headers, dict):
                raise InvalidRequestError("fake.headers must be an object", "fake.headers")
            headers = {str(k): str(v) for k, v in headers.items()}
        usage = fake.get("usage")
        if usage is not None and not isinstance(usage, dict):
            raise InvalidRequestError("fake.usage must be an object", "fake.usage")
        return cls(
            chunks=None if chunks is None else int(chunks),
            chunk_delay=(_number(fake, "chunk_delay_ms") or 0.0) / 1000.0,
            delay=(_number(fake, "delay_ms") or 0.0) / 1000.0,
            status=status,
            error_body=fake.get("error_body"),
            content_type=content_type,
            headers=headers,
            garbage=bool(fake.get("garbage")),
            hang=bool(fake.get("hang")),
            cut_after_chunks=None if cut is None else int(cut),
            usage=usage,
            bad_usage=_bad_usage(fake.get("bad_usage")),
            names=frozenset(fake),
        )

    def refuse(self, names: Iterable[str], reason: str) -> None:
        """Raise InvalidRequestError if any switch of ``names`` was given: it means nothing on this endpoint.

        A test steering an endpoint with a switch it ignores would pass for the wrong reason.
        """
        for name in names:
            if name in self.names:
                raise InvalidRequestError(f"fake.{name} does not apply here: {reason}", f"fake.{name}")

    def reported_usage(self, usage: dict[str, Any]) -> dict[str, Any]:
        """Return the usage to report: ``fake.usage`` verbatim if given, else ``usage``; then ``bad_usage``.

        ``bad_usage`` replaces ``prompt_tokens`` (and nothing else) in a copy, so the rest of the object
        stays plausible and only the one count is unusable.
        """
        reported = self.usage if self.usage is not None else usage
        if self.bad_usage is not None:
            reported = {**reported, "prompt_tokens": self.bad_usage}
        return reported

    def error_payload(self) -> bytes:
        """Return the body bytes for a ``status`` override (string as UTF-8, anything else as JSON)."""
        if self.error_body is None:
            return orjson.dumps(DEFAULT_ERROR_BODY)
        if isinstance(self.error_body, str):
            return self.error_body.encode()
        return orjson.dumps(self.error_body)


_NO_SWITCHES = FakeSwitches()


@dataclass(slots=True)
class StreamPlan:
    """The SSE events of one streamed answer, in order, before the closing ``data: [DONE]``.

    ``head`` events come first (chat's role chunk, a legacy completion's echoed prompt); each event of
    ``content`` is one content chunk (counted by ``chunks_sent``, paced by ``chunk_delay_ms``, cut by
    ``cut_after_chunks``; an iterator, so a long stream is made as it is sent); ``tail`` comes last (the
    finish chunks, then the ``include_usage`` chunk when asked).  Every event ends with a blank line.
    """

    head: list[bytes]
    content: Iterable[bytes]
    tail: list[bytes]


class Reply(Protocol):
    """What :mod:`fakeupstream.server` needs of a parsed request to answer it."""

    model: str
    stream: bool
    fake: FakeSwitches

    def plain(self, number: int) -> bytes:
        """Return the JSON body of the complete (non-streamed) answer numbered ``number``."""

    def plan(self, number: int) -> StreamPlan:
        """Return the events of the streamed answer numbered ``number`` (only called when ``stream``)."""


def load_object(body: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object; raise InvalidRequestError with OpenAI's message."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidRequestError(
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using "
            "your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not "
            "valid JSON.)"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return data


def required_model(data: dict[str, Any]) -> str:
    """Return ``data["model"]``, which must be a non-empty string; raise InvalidRequestError otherwise."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("you must provide a model parameter", "model")
    return model


def include_usage_asked(data: dict[str, Any]) -> bool:
    """Tell whether the body asks for ``stream_options.include_usage``."""
    stream_options = data.get("stream_options")
    return isinstance(stream_options, dict) and stream_options.get("include_usage") is True


def sse(data: dict[str, Any]) -> bytes:
    """Return one ``data: <json>`` SSE event."""
    return b"data: " + orjson.dumps(data) + b"\n\n"


@dataclass(slots=True)
class ChatRequest:
    """A validated chat completion request, reduced to what the fake needs to answer it."""

    model: str
    stream: bool
    include_usage: bool
    pieces: list[str]
    usage: dict[str, Any]
    fake: FakeSwitches

    @property
    def text(self) -> str:
        """The full reply text (the concatenation of :attr:`pieces`)."""
        return "".join(self.pieces)

    def plain(self, number: int) -> bytes:
        """Return the JSON of a non-streamed ``chat.completion`` object."""
        return orjson.dumps(
            {
                "id": f"chatcmpl-fake{number}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": self.text, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": self.usage,
                "service_tier": "default",
                "system_fingerprint": "fp_fake",
            }
        )

    def plan(self, number: int) -> StreamPlan:
        """Return the ``chat.completion.chunk`` events: role, one per piece, finish, then usage if asked."""
        chunk = _ChatChunkMaker(f"chatcmpl-fake{number}", self.model, self.include_usage)
        tail = [chunk.finish()]
        if self.include_usage:
            tail.append(chunk.usage(self.usage))
        return StreamPlan([chunk.role()], map(chunk.content, self.pieces), tail)


class _ChatChunkMaker:
    """Builds the ``data: {...}`` SSE events (each ending in a blank line) of one streamed chat completion."""

    __slots__ = ("_base", "_include_usage", "_prefix", "_suffix")

    def __init__(self, completion_id: str, model: str, include_usage: bool) -> None:
        self._include_usage = include_usage
        self._base = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "service_tier": "default",
            "system_fingerprint": "fp_fake",
        }
        # Content chunks are the hot path: splice the JSON-encoded piece between constant bytes.
        head = orjson.dumps(self._base)[:-1]
        self._prefix = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":'
        self._suffix = b'},"logprobs":null,"finish_reason":null}]' + (
            b',"usage":null}\n\n' if include_usage else b"}\n\n"
        )

    def _event(self, delta: dict[str, Any], finish_reason: str | None) -> bytes:
        data = dict(self._base)
        data["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        if self._include_usage:
            data["usage"] = None
        return sse(data)

    def role(self) -> bytes:
        """Return the first event: ``delta = {"role": "assistant", "content": ""}``."""
        return self._event({"role": "assistant", "content": ""}, None)

    def content(self, piece: str) -> bytes:
        """Return one content event carrying ``piece``."""
        return self._prefix + orjson.dumps(piece) + self._suffix

    def finish(self) -> bytes:
        """Return the event with an empty delta and ``finish_reason: "stop"``."""
        return self._event({}, "stop")

    def usage(self, usage: dict[str, Any]) -> bytes:
        """Return the extra ``include_usage`` event: no choices, just the usage object."""
        data = dict(self._base)
        data["choices"] = []
        data["usage"] = usage
        return sse(data)


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parse and validate a ``POST /v1/chat/completions`` body; raise InvalidRequestError if unusable.

    The reply is ``"echo: " + text of the last message`` split with :func:`split_pieces`, or
    ``"tok0 ", "tok1 ", ...`` when ``fake.chunks`` is given.  The usage follows :func:`prompt_tokens` and
    the number of pieces, unless ``fake.usage`` replaces it verbatim (and ``fake.bad_usage`` spoils its
    ``prompt_tokens``).
    """
    data = load_object(body)
    model = required_model(data)
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("Missing required parameter: 'messages'.", "messages")
    fake = FakeSwitches.parse(data.get("fake"))
    if fake.chunks is not None:
        pieces = [f"tok{i} " for i in range(fake.chunks)]
    else:
        last = messages[-1]
        last_content = last.get("content") if isinstance(last, dict) else None
        pieces = split_pieces("echo: " + content_text(last_content))
    return ChatRequest(
        model=model,
        stream=data.get("stream") is True,
        include_usage=include_usage_asked(data),
        pieces=pieces,
        usage=fake.reported_usage(make_usage(prompt_tokens(messages), len(pieces))),
        fake=fake,
    )


def models_list() -> bytes:
    """Return the ``GET /v1/models`` body (OpenAI list shape)."""
    return orjson.dumps({"object": "list", "data": [model_object(name, created) for name, created in MODELS]})


def model_object(name: str, created: int) -> dict[str, Any]:
    """Return one OpenAI ``model`` object."""
    return {"id": name, "object": "model", "created": created, "owned_by": "system"}
