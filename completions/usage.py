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
    reasoning_tokens: int = 0  # part of output_tokens
    # Hosted tool calls the answer's output holds, as sorted (call item type, count) pairs.
    hosted_tool_calls: tuple[tuple[str, int], ...] = ()


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


# Output items of calls the client runs itself (function and custom tools, Codex's shell and patch tools, the
# computer-use loop): no per-call charge. Every other `*_call` item is a hosted tool OpenAI ran and bills per call.
CLIENT_CALL_ITEMS = frozenset(
    {"function_call", "custom_tool_call", "local_shell_call", "shell_call", "apply_patch_call", "computer_call"}
)


def hosted_tool_calls(output) -> tuple[tuple[str, int], ...]:
    """The hosted tool calls among a response's `output` items, as sorted (item type, count) pairs."""
    counts: dict[str, int] = {}
    for item in output if isinstance(output, list) else ():
        kind = item.get("type") if isinstance(item, dict) else None
        if isinstance(kind, str) and kind.endswith("_call") and kind not in CLIENT_CALL_ITEMS:
            counts[kind] = counts.get(kind, 0) + 1
    return tuple(sorted(counts.items()))


def responses_usage(usage) -> Usage:
    """`{input_tokens, input_tokens_details: {cached_tokens}, output_tokens, output_tokens_details:
    {reasoning_tokens}}` (the Responses API)."""
    if not isinstance(usage, dict):
        raise BadUsage("usage is not an object")
    prompt = _count(usage.get("input_tokens"), "input_tokens")
    output = _count(usage.get("output_tokens"), "output_tokens")
    cached = _count(_details(usage, "input_tokens_details").get("cached_tokens"), "cached_tokens")
    reasoning = _count(_details(usage, "output_tokens_details").get("reasoning_tokens"), "reasoning_tokens")
    return Usage(
        input_tokens=prompt,
        output_tokens=output,
        cached_tokens=min(cached, prompt),
        reasoning_tokens=min(reasoning, output),
    )


def response_object_usage(response) -> Usage | None:
    """The usage of a Response object (a plain answer, or a stream's terminal event's `response`) with its
    hosted tool calls; None when it has no usage yet (queued, in progress). Raises `BadUsage`."""
    if not isinstance(response, dict):
        raise BadUsage("response is not an object")
    usage = response.get("usage")
    if usage is None:
        return None
    read = responses_usage(usage)
    calls = hosted_tool_calls(response.get("output"))
    return Usage(
        input_tokens=read.input_tokens,
        output_tokens=read.output_tokens,
        cached_tokens=read.cached_tokens,
        reasoning_tokens=read.reasoning_tokens,
        hosted_tool_calls=calls,
    )
