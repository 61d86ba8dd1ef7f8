"""Validation of a chat-completion request body, by OpenAI's rules (CreateChatCompletionRequest).

Only the fields Tollgate relies on, or whose ranges OpenAI documents, are checked; every other field is left
exactly as the client sent it, so a new OpenAI parameter needs no Tollgate release.
"""

import json
from dataclasses import dataclass

import orjson

from core.errors import InvalidRequest

# (field, minimum, maximum, integer only)
NUMERIC_RANGES = (
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, False),
    ("n", 1, 128, True),
    ("presence_penalty", -2, 2, False),
    ("frequency_penalty", -2, 2, False),
    ("top_logprobs", 0, 20, True),
    ("max_tokens", 1, 2**31 - 1, True),
    ("max_completion_tokens", 1, 2**31 - 1, True),
    ("seed", -(2**63), 2**63 - 1, True),
)
BOOLEAN_FIELDS = ("stream", "logprobs", "store", "parallel_tool_calls")
# The fields Tollgate acts on (allowlist, limits, budgets, streaming). JSON leaves a key named twice open to either
# reading: orjson keeps the last, a parser upstream may keep the first, so a body could pass the allowlist with one
# model and reach the upstream with another. A body naming one of them twice is refused (issue 8).
GUARDED_FIELDS = ("model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n")
_GUARDED_NAMES = tuple(f'"{name}"'.encode() for name in GUARDED_FIELDS)


@dataclass(slots=True)
class ChatRequest:
    """A validated request: the parsed body, and the bytes to forward upstream."""

    data: dict
    model: str
    stream: bool
    client_wants_usage: bool  # the client itself asked for stream_options.include_usage
    max_output_tokens: int | None  # max_completion_tokens, else max_tokens, else None
    forward_body: bytes


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _duplicate_guarded_field(raw: bytes) -> str | None:
    """A `GUARDED_FIELDS` name the top-level object of `raw` (valid JSON) has twice, else None.

    Costs a few substring counts; only a body where a guarded name appears twice, or that has `\\u` escapes (a
    name can be spelled with them), is parsed a second time, keeping the top-level object's pairs in order.
    """
    if b"\\u" not in raw and not any(raw.count(name) > 1 for name in _GUARDED_NAMES):
        return None
    try:
        # The hook turns every object into its list of pairs; the top-level object's is the result.
        pairs = json.loads(raw, object_pairs_hook=lambda pairs: pairs)
    except RecursionError:
        raise InvalidRequest("The request body is nested too deeply.") from None
    except ValueError as exc:  # what orjson accepted but the standard parser does not (none known)
        raise InvalidRequest(f"We could not parse the JSON body of your request ({exc}).") from None
    seen = set()
    for name, _ in pairs:
        if name in GUARDED_FIELDS and name in seen:
            return name
        seen.add(name)
    return None


def parse_chat_request(raw: bytes) -> ChatRequest:
    """Parse and validate `raw`; raise `InvalidRequest` (400, `param` naming the field) on the first problem.

    For a streamed request whose client did not ask for usage, the forwarded body gains
    `stream_options.include_usage: true` (Tollgate needs the usage to account for the request; the extra
    chunk is hidden from the client). Otherwise the client's bytes are forwarded untouched.
    """
    if not raw or not raw.strip():
        raise InvalidRequest("We could not parse the JSON body of your request: the body is empty.")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request ({exc.msg} at position {exc.pos})."
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    duplicate = _duplicate_guarded_field(raw)
    if duplicate is not None:
        raise InvalidRequest(f"The request body names '{duplicate}' more than once.", param=duplicate)

    model = data.get("model")
    if "model" not in data:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string.", param="model")

    messages = data.get("messages")
    if "messages" not in data:
        raise InvalidRequest("Missing required parameter: 'messages'.", param="messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"'messages[{index}]' must be an object.", param=f"messages[{index}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequest(
                f"Missing required parameter: 'messages[{index}].role'.", param=f"messages[{index}].role"
            )

    for field in BOOLEAN_FIELDS:
        value = data.get(field)
        if value is not None and not isinstance(value, bool):
            raise InvalidRequest(f"'{field}' must be a boolean.", param=field)

    for field, low, high, integer in NUMERIC_RANGES:
        value = data.get(field)
        if value is None:
            continue
        # JSON has one number type: 2.0 is an integer to JSON Schema (and to OpenAI), 2.5 is not.
        if not _is_number(value) or (integer and not (isinstance(value, int) or value.is_integer())):
            kind = "an integer" if integer else "a number"
            raise InvalidRequest(f"'{field}' must be {kind}.", param=field)
        if integer and isinstance(value, float):
            data[field] = value = int(value)  # for Tollgate's own arithmetic; the bytes forwarded are unchanged
        if (low is not None and value < low) or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise InvalidRequest(f"'{field}' must be {bound}; got {value}.", param=field)

    stream = data.get("stream") is True
    stream_options = data.get("stream_options")
    client_wants_usage = False
    if stream_options is not None:
        if not stream:
            raise InvalidRequest(
                "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
            )
        if not isinstance(stream_options, dict):
            raise InvalidRequest("'stream_options' must be an object.", param="stream_options")
        include_usage = stream_options.get("include_usage")
        if include_usage is not None and not isinstance(include_usage, bool):
            raise InvalidRequest("'stream_options.include_usage' must be a boolean.", param="stream_options")
        client_wants_usage = include_usage is True

    forward_body = raw
    if stream and not client_wants_usage:
        data["stream_options"] = {**(stream_options or {}), "include_usage": True}
        forward_body = orjson.dumps(data)

    max_output = data.get("max_completion_tokens")
    if max_output is None:
        max_output = data.get("max_tokens")
    return ChatRequest(
        data=data,
        model=model,
        stream=stream,
        client_wants_usage=client_wants_usage,
        max_output_tokens=max_output,
        forward_body=forward_body,
    )
