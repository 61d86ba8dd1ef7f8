"""Pure, I/O-free logic of the fake upstream: request parsing, replies, usage and the ``fake`` switches.

Everything here is deterministic and synchronous so it can be unit-tested without a server.  The HTTP
layer in :mod:`fakeupstream.server` only turns these values into bytes on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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


def _is_http_status(value: Any) -> bool:
    """Tell whether ``value`` is an integer (not a bool) between 100 and 599."""
    return isinstance(value, int) and not isinstance(value, bool) and 100 <= value <= 599


@dataclass(slots=True)
class FakeSwitches:
    """The parsed ``"fake"`` object of a request body (all switches optional, see the package docs)."""

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
        )

    def error_payload(self) -> bytes:
        """Return the body bytes for a ``status`` override (string as UTF-8, anything else as JSON)."""
        if self.error_body is None:
            return orjson.dumps(DEFAULT_ERROR_BODY)
        if isinstance(self.error_body, str):
            return self.error_body.encode()
        return orjson.dumps(self.error_body)


_NO_SWITCHES = FakeSwitches()


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


def parse_chat_request(body: bytes) -> ChatRequest:
    """Parse and validate a ``POST /v1/chat/completions`` body; raise InvalidRequestError if unusable.

    The reply is ``"echo: " + text of the last message`` split with :func:`split_pieces`, or
    ``"tok0 ", "tok1 ", ...`` when ``fake.chunks`` is given.  The usage follows :func:`prompt_tokens` and
    the number of pieces, unless ``fake.usage`` replaces it verbatim.
    """
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
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("you must provide a model parameter", "model")
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
    stream_options = data.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True
    usage = fake.usage if fake.usage is not None else make_usage(prompt_tokens(messages), len(pieces))
    return ChatRequest(
        model=model,
        stream=data.get("stream") is True,
        include_usage=include_usage,
        pieces=pieces,
        usage=usage,
        fake=fake,
    )


def models_list() -> bytes:
    """Return the ``GET /v1/models`` body (OpenAI list shape)."""
    return orjson.dumps({"object": "list", "data": [model_object(name, created) for name, created in MODELS]})


def model_object(name: str, created: int) -> dict[str, Any]:
    """Return one OpenAI ``model`` object."""
    return {"id": name, "object": "model", "created": created, "owned_by": "system"}
