"""Validation of request bodies, by OpenAI's rules, for every endpoint the relay serves.

Only the fields Tollgate relies on, or whose ranges OpenAI documents, are checked; every other field is left
exactly as the client sent it, so a new OpenAI parameter needs no Tollgate release. Each `parse_*_request` takes
the raw body and returns a `ParsedRequest` or raises `InvalidRequest` (400, `param` naming the field).
"""

import functools
import json
from dataclasses import dataclass

import orjson

from core.errors import InvalidRequest

MAX_INT32 = 2**31 - 1
# (field, minimum, maximum, integer only)
CHAT_RANGES = (
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, False),
    ("n", 1, 128, True),
    ("presence_penalty", -2, 2, False),
    ("frequency_penalty", -2, 2, False),
    ("top_logprobs", 0, 20, True),
    ("max_tokens", 1, MAX_INT32, True),
    ("max_completion_tokens", 1, MAX_INT32, True),
    ("seed", -(2**63), 2**63 - 1, True),
)
NUMERIC_RANGES = CHAT_RANGES  # the chat ranges under their earlier name
# CreateCompletionRequest (the legacy completions API).
COMPLETION_RANGES = (
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, False),
    ("n", 1, 128, True),
    ("best_of", 0, 20, True),
    ("logprobs", 0, 5, True),
    ("presence_penalty", -2, 2, False),
    ("frequency_penalty", -2, 2, False),
    ("max_tokens", 0, MAX_INT32, True),
    ("seed", -(2**63), 2**63 - 1, True),
)
EMBEDDING_RANGES = (("dimensions", 1, MAX_INT32, True),)
CHAT_BOOLEANS = ("stream", "logprobs", "store", "parallel_tool_calls")
BOOLEAN_FIELDS = CHAT_BOOLEANS
COMPLETION_BOOLEANS = ("stream", "echo")
# The fields Tollgate acts on (allowlist, limits, budgets, streaming). JSON leaves a key named twice open to either
# reading: orjson keeps the last, a parser upstream may keep the first, so a body could pass the allowlist with one
# model and reach the upstream with another. A body naming one of them twice is refused.
GUARDED_FIELDS = ("model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens", "n")
COMPLETION_GUARDED_FIELDS = ("model", "prompt", "stream", "stream_options", "max_tokens", "n", "best_of", "echo")
INPUT_GUARDED_FIELDS = ("model", "input")
# OpenAI's own default for a moderations request that names no model.
DEFAULT_MODERATION_MODEL = "omni-moderation-latest"
# OpenAI's limit on the items of one embeddings request.
MAX_EMBEDDING_INPUTS = 2048
# The legacy completions API's default `max_tokens`.
COMPLETION_DEFAULT_MAX_TOKENS = 16


@dataclass(slots=True)
class ParsedRequest:
    """A validated request: the parsed body, what Tollgate needs from it, and the bytes to forward upstream."""

    data: dict
    model: str
    forward_body: bytes
    stream: bool = False
    client_wants_usage: bool = False  # the client itself asked for stream_options.include_usage
    max_output_tokens: int | None = None  # the request's bound on output tokens per choice, None if it sets none
    choices: int = 1  # outputs generated (n; best_of for legacy completions)
    max_tool_calls: int | None = None  # the Responses API's bound on hosted tool calls, None if it sets none


ChatRequest = ParsedRequest


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@functools.cache
def _quoted(names: tuple) -> tuple:
    return tuple(f'"{name}"'.encode() for name in names)


def _duplicate_guarded_field(raw: bytes, guarded: tuple = GUARDED_FIELDS) -> str | None:
    """A `guarded` name the top-level object of `raw` (valid JSON) has twice, else None.

    Costs a few substring counts; only a body where a guarded name appears twice, or that has `\\u` escapes (a
    name can be spelled with them), is parsed a second time, keeping the top-level object's pairs in order.
    """
    if b"\\u" not in raw and not any(raw.count(name) > 1 for name in _quoted(guarded)):
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
        if name in guarded and name in seen:
            return name
        seen.add(name)
    return None


def parse_json_object(raw: bytes, guarded: tuple) -> dict:
    """The body as a dict; 400 for an empty body, invalid JSON, a non-object, or a `guarded` field named twice."""
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
    duplicate = _duplicate_guarded_field(raw, guarded)
    if duplicate is not None:
        raise InvalidRequest(f"The request body names '{duplicate}' more than once.", param=duplicate)
    return data


def require_model(data: dict) -> str:
    model = data.get("model")
    if "model" not in data:
        raise InvalidRequest("you must provide a model parameter", param="model")
    if not isinstance(model, str) or not model.strip():
        raise InvalidRequest("'model' must be a non-empty string.", param="model")
    return model


def check_booleans(data: dict, fields: tuple) -> None:
    for name in fields:
        value = data.get(name)
        if value is not None and not isinstance(value, bool):
            raise InvalidRequest(f"'{name}' must be a boolean.", param=name)


def check_ranges(data: dict, ranges: tuple) -> None:
    """Each present (non-null) field of `ranges` is a number of the right kind within its bounds."""
    for name, low, high, integer in ranges:
        value = data.get(name)
        if value is None:
            continue
        # JSON has one number type: 2.0 is an integer to JSON Schema (and to OpenAI), 2.5 is not.
        if not _is_number(value) or (integer and not (isinstance(value, int) or value.is_integer())):
            kind = "an integer" if integer else "a number"
            raise InvalidRequest(f"'{name}' must be {kind}.", param=name)
        if integer and isinstance(value, float):
            data[name] = value = int(value)  # for Tollgate's own arithmetic; the bytes forwarded are unchanged
        if (low is not None and value < low) or (high is not None and value > high):
            bound = f">= {low}" if high is None else f"between {low} and {high}"
            raise InvalidRequest(f"'{name}' must be {bound}; got {value}.", param=name)


def stream_usage(data: dict, raw: bytes) -> tuple[bool, bool, bytes]:
    """`(stream, client_wants_usage, forward_body)` of a chat or legacy completions request.

    For a streamed request whose client did not ask for usage, the forwarded body gains
    `stream_options.include_usage: true` (Tollgate needs the usage to account for the request; the extra chunk is
    hidden from the client). Otherwise the client's bytes are forwarded untouched.
    """
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
    return stream, client_wants_usage, forward_body


def parse_chat_request(raw: bytes) -> ParsedRequest:
    """A chat completion request (CreateChatCompletionRequest)."""
    data = parse_json_object(raw, GUARDED_FIELDS)
    model = require_model(data)
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
    check_booleans(data, CHAT_BOOLEANS)
    check_ranges(data, CHAT_RANGES)
    stream, client_wants_usage, forward_body = stream_usage(data, raw)
    max_output = data.get("max_completion_tokens")
    if max_output is None:
        max_output = data.get("max_tokens")
    return ParsedRequest(
        data=data,
        model=model,
        forward_body=forward_body,
        stream=stream,
        client_wants_usage=client_wants_usage,
        max_output_tokens=max_output,
        choices=data.get("n") or 1,
    )


def _is_token_array(value) -> bool:
    return isinstance(value, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in value)


def _check_text_or_tokens(value, name: str, *, allow_empty_string: bool) -> None:
    """A string, an array of strings, an array of token ids, or an array of token-id arrays (non-empty)."""
    if isinstance(value, str):
        if not value and not allow_empty_string:
            raise InvalidRequest(f"'{name}' cannot be an empty string.", param=name)
        return
    if not isinstance(value, list) or not value:
        raise InvalidRequest(
            f"'{name}' must be a string, an array of strings, an array of integers (tokens) or an array of "
            "arrays of integers, and not empty.",
            param=name,
        )
    if _is_token_array(value):
        return
    if all(isinstance(item, str) for item in value):
        return
    for index, item in enumerate(value):
        if not _is_token_array(item) or not item:
            raise InvalidRequest(
                f"'{name}[{index}]' must be a string when {name} is an array of strings, or a non-empty array of "
                "integers (tokens) when it is an array of token arrays.",
                param=name,
            )


def parse_completion_request(raw: bytes) -> ParsedRequest:
    """A legacy completions request (CreateCompletionRequest): `prompt`, `max_tokens` (default 16), `n`, `best_of`.

    The output reservation is `max_tokens` x the larger of `n` and `best_of` (OpenAI generates `best_of`
    completions and bills them all); with `echo`, the prompt comes back too and counts as output.
    """
    data = parse_json_object(raw, COMPLETION_GUARDED_FIELDS)
    model = require_model(data)
    if "prompt" not in data:
        raise InvalidRequest("Missing required parameter: 'prompt'.", param="prompt")
    prompt = data.get("prompt")
    if prompt is not None:
        _check_text_or_tokens(prompt, "prompt", allow_empty_string=True)
    check_booleans(data, COMPLETION_BOOLEANS)
    check_ranges(data, COMPLETION_RANGES)
    # `best_of` below `n`, or with `stream`, is the upstream's to refuse: the reservation covers either reading.
    n = data.get("n") or 1
    best_of = data.get("best_of")
    stream, client_wants_usage, forward_body = stream_usage(data, raw)
    max_tokens = data.get("max_tokens")
    return ParsedRequest(
        data=data,
        model=model,
        forward_body=forward_body,
        stream=stream,
        client_wants_usage=client_wants_usage,
        max_output_tokens=COMPLETION_DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens,
        choices=max(n, best_of or 1),
    )


def parse_embedding_request(raw: bytes) -> ParsedRequest:
    """An embeddings request (CreateEmbeddingRequest): `model`, `input` as text or tokens, up to 2,048 items."""
    data = parse_json_object(raw, INPUT_GUARDED_FIELDS)
    model = require_model(data)
    if "input" not in data:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    value = data["input"]
    _check_text_or_tokens(value, "input", allow_empty_string=False)
    if isinstance(value, list) and not _is_token_array(value) and len(value) > MAX_EMBEDDING_INPUTS:
        raise InvalidRequest(f"'input' may hold at most {MAX_EMBEDDING_INPUTS} items; got {len(value)}.", param="input")
    if isinstance(value, list) and any(item == "" for item in value):
        raise InvalidRequest("'input' cannot contain an empty string.", param="input")
    encoding_format = data.get("encoding_format")
    if encoding_format is not None and encoding_format not in ("float", "base64"):
        raise InvalidRequest("'encoding_format' must be 'float' or 'base64'.", param="encoding_format")
    check_ranges(data, EMBEDDING_RANGES)
    return ParsedRequest(data=data, model=model, forward_body=raw)


def parse_moderation_request(raw: bytes) -> ParsedRequest:
    """A moderations request (CreateModerationRequest): `input` (text, texts, or content parts); `model` optional,
    `omni-moderation-latest` when absent (OpenAI's default; the allowlist and the usage record use it)."""
    data = parse_json_object(raw, INPUT_GUARDED_FIELDS)
    model = require_model(data) if "model" in data else DEFAULT_MODERATION_MODEL
    if "input" not in data:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    value = data["input"]
    if isinstance(value, str):
        pass
    elif isinstance(value, list) and value and all(isinstance(item, (str, dict)) for item in value):
        if any(isinstance(item, str) for item in value) and any(isinstance(item, dict) for item in value):
            raise InvalidRequest("'input' must be an array of strings or an array of content parts.", param="input")
    else:
        raise InvalidRequest(
            "'input' must be a string, an array of strings or an array of content parts.", param="input"
        )
    return ParsedRequest(data=data, model=model, forward_body=raw)


# THE RESPONSES API AND CONVERSATIONS

RESPONSE_RANGES = (
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, False),
    ("top_logprobs", 0, 20, True),
    ("max_output_tokens", 1, MAX_INT32, True),
    ("max_tool_calls", 0, MAX_INT32, True),
)
RESPONSE_BOOLEANS = ("stream", "background", "store", "parallel_tool_calls")
RESPONSE_GUARDED_FIELDS = (
    "model",
    "input",
    "instructions",
    "stream",
    "background",
    "store",
    "max_output_tokens",
    "max_tool_calls",
    "previous_response_id",
    "conversation",
    "tools",
)
# Tools whose calls the client runs itself: always allowed, never charged per call. Every other `tools[].type`
# is a hosted tool (web_search, file_search, code_interpreter, image_generation, mcp, ...).
CLIENT_TOOL_TYPES = frozenset(
    {"function", "custom", "local_shell", "shell", "apply_patch", "computer", "computer_use_preview"}
)
# OpenAI's limit on the items of one `POST /conversations` or `/conversations/{id}/items`.
MAX_CONVERSATION_ITEMS = 20


def _check_input(data: dict) -> None:
    value = data.get("input")
    if value is not None and not isinstance(value, (str, list)):
        raise InvalidRequest("'input' must be a string or an array of input items.", param="input")


def _check_tools(data: dict) -> None:
    tools = data.get("tools")
    if tools is None:
        return
    if not isinstance(tools, list):
        raise InvalidRequest("'tools' must be an array.", param="tools")
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str) or not tool["type"]:
            raise InvalidRequest(f"'tools[{index}].type' must be a non-empty string.", param=f"tools[{index}].type")


def _check_id(data: dict, name: str) -> None:
    value = data.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise InvalidRequest(f"'{name}' must be a non-empty string.", param=name)


def conversation_of(data: dict) -> str | None:
    """The conversation id a Responses request names (`conversation`: an id, or `{"id": ...}`), else None."""
    value = data.get("conversation")
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) else None


def parse_response_request(raw: bytes) -> ParsedRequest:
    """A Responses API create (CreateResponse): `model`, `input` (a string or items), OpenAI's ranges; a
    `previous_response_id` or a `conversation` (not both) that must be an id; `tools` objects with a `type`."""
    data = parse_json_object(raw, RESPONSE_GUARDED_FIELDS)
    model = require_model(data)
    _check_input(data)
    instructions = data.get("instructions")
    if instructions is not None and not isinstance(instructions, (str, list)):
        raise InvalidRequest("'instructions' must be a string.", param="instructions")
    check_booleans(data, RESPONSE_BOOLEANS)
    check_ranges(data, RESPONSE_RANGES)
    _check_id(data, "previous_response_id")
    conversation = data.get("conversation")
    if conversation is not None:
        if isinstance(conversation, dict):
            if not isinstance(conversation.get("id"), str) or not conversation["id"]:
                raise InvalidRequest("'conversation.id' must be a non-empty string.", param="conversation")
        elif not isinstance(conversation, str) or not conversation:
            raise InvalidRequest(
                "'conversation' must be a conversation id or an object with an id.", param="conversation"
            )
        if data.get("previous_response_id") is not None:
            raise InvalidRequest(
                "'previous_response_id' cannot be used together with 'conversation'.", param="previous_response_id"
            )
    _check_tools(data)
    return ParsedRequest(
        data=data,
        model=model,
        forward_body=raw,
        stream=data.get("stream") is True,
        max_output_tokens=data.get("max_output_tokens"),
        max_tool_calls=data.get("max_tool_calls"),
    )


def parse_input_tokens_request(raw: bytes) -> ParsedRequest:
    """`POST /responses/input_tokens`: the create's fields, none required but checked alike (`model` optional)."""
    data = parse_json_object(raw, RESPONSE_GUARDED_FIELDS)
    model = require_model(data) if "model" in data else ""
    _check_input(data)
    check_ranges(data, RESPONSE_RANGES)
    _check_id(data, "previous_response_id")
    _check_tools(data)
    return ParsedRequest(data=data, model=model, forward_body=raw)


def parse_no_body(raw: bytes) -> ParsedRequest:
    """A route whose request has no body (retrieve, delete, cancel, lists): whatever was sent is not forwarded."""
    return ParsedRequest(data={}, model="", forward_body=b"")


def parse_optional_object(raw: bytes) -> ParsedRequest:
    """A body that may be empty or an object (conversation create and update): forwarded as sent."""
    if not raw or not raw.strip():
        return ParsedRequest(data={}, model="", forward_body=b"{}")
    data = parse_json_object(raw, ("items", "metadata"))
    items = data.get("items")
    if items is not None and (not isinstance(items, list) or len(items) > MAX_CONVERSATION_ITEMS):
        raise InvalidRequest(f"'items' must be an array of at most {MAX_CONVERSATION_ITEMS} items.", param="items")
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object.", param="metadata")
    return ParsedRequest(data=data, model="", forward_body=raw)


def parse_conversation_items(raw: bytes) -> ParsedRequest:
    """`POST /conversations/{id}/items`: `items`, a non-empty array of at most 20 objects."""
    data = parse_json_object(raw, ("items",))
    items = data.get("items")
    if "items" not in data:
        raise InvalidRequest("Missing required parameter: 'items'.", param="items")
    if not isinstance(items, list) or not items or len(items) > MAX_CONVERSATION_ITEMS:
        raise InvalidRequest(
            f"'items' must be a non-empty array of at most {MAX_CONVERSATION_ITEMS} items.", param="items"
        )
    if not all(isinstance(item, dict) for item in items):
        raise InvalidRequest("'items' must be an array of objects.", param="items")
    return ParsedRequest(data=data, model="", forward_body=raw)


def forward_query(allowed: tuple[str, ...], query) -> str:
    """The query parameters of `allowed` as they came (a repeated one, like `include`, repeated), URL-encoded."""
    from urllib.parse import urlencode

    pairs = [(name, value) for name in allowed for value in query.getlist(name)]
    return urlencode(pairs)


def check_query_int(query, name: str, low: int, high: int) -> None:
    value = query.get(name)
    if value is None:
        return
    if not value.isdigit() or not low <= int(value) <= high:
        raise InvalidRequest(f"'{name}' must be an integer between {low} and {high}.", param=name)


def check_query_choice(query, name: str, choices: tuple[str, ...]) -> None:
    value = query.get(name)
    if value is not None and value not in choices:
        raise InvalidRequest(f"'{name}' must be one of {', '.join(choices)}.", param=name)
