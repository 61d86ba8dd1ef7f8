"""Where an upstream reports usage, read strictly: token counts must be non-negative integers.

A usage object the upstream sends with a count that is not an integer (`"prompt_tokens": "abc"`) raises
`BadUsage`; the relay then treats the request as one without reported usage (an estimate, flagged), so a
malformed answer can neither crash accounting nor leave a reservation held.
"""

from dataclasses import dataclass


class BadUsage(ValueError):
    """The upstream's usage object is not what its API documents."""


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens of one request as the upstream billed them. `cached_tokens` is part of `input_tokens`."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0


NO_USAGE = Usage()


def _count(value, name: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadUsage(f"usage.{name} is not a non-negative integer: {value!r:.40}")
    return value


def _details(usage: dict, name: str) -> dict:
    details = usage.get(name)
    return details if isinstance(details, dict) else {}


def chat_usage(usage) -> Usage:
    """`{prompt_tokens, completion_tokens, prompt_tokens_details: {cached_tokens}}` (chat, legacy completions,
    embeddings without completion tokens)."""
    if not isinstance(usage, dict):
        raise BadUsage("usage is not an object")
    prompt = _count(usage.get("prompt_tokens"), "prompt_tokens")
    cached = _count(_details(usage, "prompt_tokens_details").get("cached_tokens"), "cached_tokens")
    return Usage(
        input_tokens=prompt,
        output_tokens=_count(usage.get("completion_tokens"), "completion_tokens"),
        cached_tokens=min(cached, prompt),
    )
