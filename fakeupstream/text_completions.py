"""``POST /v1/completions`` (OpenAI's legacy text completions) of the fake upstream.

Each prompt gets ``"echo: " + <prompt text>`` split at spaces (a token-array prompt's text is its ids
joined by spaces), or ``"tok0 tok1 ..."`` with ``fake.chunks``, cut to ``max_tokens`` pieces (default
16; ``finish_reason`` is then ``"length"``, else ``"stop"``).  ``echo`` puts the prompt text before the
reply; ``n`` answers each prompt ``n`` times (choice ``index`` = prompt * n + j); ``best_of`` is the
number of candidates made per prompt (at least ``n``; never with ``stream``).

Usage: ``prompt_tokens`` = words of every string prompt + length of every token array;
``completion_tokens`` = the pieces of each prompt's reply times ``max(n, best_of)`` (OpenAI bills every
candidate), unless ``fake.usage`` / ``fake.bad_usage`` say otherwise.  Streams are ``text_completion``
chunks ending in ``data: [DONE]``; ``stream_options.include_usage`` adds a last chunk with
``choices: []`` and the usage (every earlier chunk then carries ``"usage": null``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from fakeupstream.completions import (
    FakeSwitches,
    InvalidRequestError,
    StreamPlan,
    include_usage_asked,
    load_object,
    required_model,
    split_pieces,
    sse,
)

DEFAULT_MAX_TOKENS = 16
MAX_N = 128
MAX_BEST_OF = 20

_PROMPT_ERROR = "'$.prompt' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def prompts_of(value: Any) -> list[str | list[int]]:
    """Return the prompts of a ``prompt`` field: a string, strings, a token array or token arrays.

    Raises InvalidRequestError (``param`` ``"prompt"``) for any other shape, an empty list or an empty
    token array.
    """
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return value
        if all(_is_int(item) for item in value):
            return [value]
        if all(isinstance(item, list) and item and all(_is_int(t) for t in item) for item in value):
            return value
    raise InvalidRequestError(_PROMPT_ERROR, "prompt")


def prompt_text(prompt: str | list[int]) -> str:
    """Return the text of one prompt (a token array's ids joined by single spaces)."""
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


def prompt_tokens_of(prompt: str | list[int]) -> int:
    """Return the fake token count of one prompt: its words, or a token array's length."""
    return len(prompt.split()) if isinstance(prompt, str) else len(prompt)


def _bounded_int(data: dict[str, Any], name: str, default: int, low: int, high: int | None) -> int:
    """Return ``data[name]`` (``default`` when absent or null), an integer in ``[low, high]``."""
    value = data.get(name)
    if value is None:
        return default
    if not _is_int(value) or value < low or (high is not None and value > high):
        bound = f"at least {low}" if high is None else f"from {low} to {high}"
        raise InvalidRequestError(f"Invalid '{name}': must be an integer {bound}.", name)
    return value


@dataclass(slots=True)
class _Choice:
    index: int
    prefix: str  # the echoed prompt, or ""
    pieces: list[str]
    finish_reason: str


@dataclass(slots=True)
class TextCompletionRequest:
    """A validated legacy completion request, reduced to what the fake needs to answer it."""

    model: str
    stream: bool
    include_usage: bool
    choices: list[_Choice]
    usage: dict[str, Any]
    fake: FakeSwitches

    def _base(self, number: int) -> dict[str, Any]:
        return {
            "id": f"cmpl-fake{number}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": self.model,
            "system_fingerprint": "fp_fake",
        }

    def plain(self, number: int) -> bytes:
        """Return the JSON of a ``text_completion`` object with every choice and the usage."""
        data = self._base(number)
        data["choices"] = [
            {
                "text": choice.prefix + "".join(choice.pieces),
                "index": choice.index,
                "logprobs": None,
                "finish_reason": choice.finish_reason,
            }
            for choice in self.choices
        ]
        data["usage"] = self.usage
        return orjson.dumps(data)

    def plan(self, number: int) -> StreamPlan:
        """Return the chunks: echoed prompts, then piece k of every choice in turn, then the finish chunks."""
        base = self._base(number)
        # Content chunks are the hot path: splice the JSON-encoded text between constant bytes.
        prefix = b"data: " + orjson.dumps(base)[:-1] + b',"choices":[{"text":'
        ending = b',"usage":null}\n\n' if self.include_usage else b"}\n\n"
        suffixes = {
            c.index: f',"index":{c.index},"logprobs":null,"finish_reason":null}}]'.encode() + ending
            for c in self.choices
        }

        def event(text: str, index: int) -> bytes:
            return prefix + orjson.dumps(text) + suffixes[index]

        def content():
            for position in range(max((len(c.pieces) for c in self.choices), default=0)):
                for choice in self.choices:
                    if position < len(choice.pieces):
                        yield event(choice.pieces[position], choice.index)

        head = [event(c.prefix, c.index) for c in self.choices if c.prefix]
        tail = []
        for choice in self.choices:
            data = dict(base)
            data["choices"] = [
                {"text": "", "index": choice.index, "logprobs": None, "finish_reason": choice.finish_reason}
            ]
            if self.include_usage:
                data["usage"] = None
            tail.append(sse(data))
        if self.include_usage:
            data = dict(base)
            data["choices"] = []
            data["usage"] = self.usage
            tail.append(sse(data))
        return StreamPlan(head, content(), tail)


def parse_text_completion_request(body: bytes) -> TextCompletionRequest:
    """Parse and validate a ``POST /v1/completions`` body; raise InvalidRequestError if unusable.

    Checked: ``model``, ``prompt`` (see :func:`prompts_of`), ``max_tokens`` (integer ≥ 0), ``n`` (1 to
    128), ``best_of`` (0 to 20, at least ``n``, and 1 or absent with ``stream``), ``stream`` and ``echo``
    (booleans).  Everything else is accepted and ignored.
    """
    data = load_object(body)
    model = required_model(data)
    if "prompt" not in data:
        raise InvalidRequestError("Missing required parameter: 'prompt'.", "prompt")
    prompts = prompts_of(data["prompt"])
    for name in ("stream", "echo"):
        if data.get(name) is not None and not isinstance(data[name], bool):
            raise InvalidRequestError(f"Invalid type for '{name}': expected a boolean.", name)
    stream = data.get("stream") is True
    max_tokens = _bounded_int(data, "max_tokens", DEFAULT_MAX_TOKENS, 0, None)
    n = _bounded_int(data, "n", 1, 1, MAX_N)
    best_of = _bounded_int(data, "best_of", 1, 0, MAX_BEST_OF)
    if "best_of" in data and data["best_of"] is not None and best_of < n:
        raise InvalidRequestError("best_of must be greater than or equal to n.", "best_of")
    if stream and best_of > 1:
        raise InvalidRequestError("Cannot stream results with best_of greater than 1.", "best_of")
    fake = FakeSwitches.parse(data.get("fake"))
    echo = data.get("echo") is True
    choices: list[_Choice] = []
    completion_tokens = 0
    for number, prompt in enumerate(prompts):
        text = prompt_text(prompt)
        chunks = fake.chunks
        pieces = split_pieces("echo: " + text) if chunks is None else [f"tok{i} " for i in range(chunks)]
        finish_reason = "length" if len(pieces) > max_tokens else "stop"
        pieces = pieces[:max_tokens]
        completion_tokens += len(pieces) * max(n, best_of)
        for j in range(n):
            choices.append(_Choice(number * n + j, text if echo else "", pieces, finish_reason))
    prompt_tokens = sum(map(prompt_tokens_of, prompts))
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return TextCompletionRequest(
        model=model,
        stream=stream,
        include_usage=include_usage_asked(data),
        choices=choices,
        usage=fake.reported_usage(usage),
        fake=fake,
    )
