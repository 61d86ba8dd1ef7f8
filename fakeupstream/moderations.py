"""``POST /v1/moderations`` of the fake upstream: OpenAI's moderation object, decided by trigger words.

Each input (a string, a list of strings, or a list of ``text`` / ``image_url`` parts, which together
make one input) gets one result.  A category is flagged when the input's text contains one of its
trigger words (:data:`TRIGGERS`, whole words, any case); its score is then 0.9, else 0.0001.
``category_applied_input_types`` lists ``"text"`` for every category, plus ``"image"`` for the
categories OpenAI also judges on images when the input has an image part.  No usage: moderations are
free.  ``model`` defaults to ``omni-moderation-latest`` and is echoed back.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import orjson

from fakeupstream.completions import (
    STREAM_SWITCHES,
    FakeSwitches,
    InvalidRequestError,
    StreamPlan,
    load_object,
)

DEFAULT_MODEL = "omni-moderation-latest"
CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
#: The categories OpenAI's omni model also judges on images.
IMAGE_CATEGORIES = frozenset(
    {"self-harm", "self-harm/intent", "self-harm/instructions", "sexual", "violence", "violence/graphic"}
)
#: Trigger word -> the categories it flags.
TRIGGERS: dict[str, tuple[str, ...]] = {
    "kill": ("violence", "harassment/threatening"),
    "hate": ("hate",),
    "stupid": ("harassment",),
    "gore": ("violence", "violence/graphic"),
    "shoplift": ("illicit",),
}
FLAGGED_SCORE = 0.9
CLEAR_SCORE = 0.0001
_WORD = re.compile(r"[a-z]+")
_INPUT_ERROR = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."


def moderation_inputs(value: Any) -> list[tuple[str, bool]]:
    """Return ``(text, has_image)`` per input of an ``input`` field; raise InvalidRequestError otherwise.

    Accepted: a string, a non-empty list of strings, or a non-empty list of parts (objects of type
    ``text`` with a string ``text``, or ``image_url`` with an object ``image_url`` holding a string
    ``url``), the parts making a single input.
    """
    if isinstance(value, str):
        return [(value, False)]
    if isinstance(value, list) and value:
        if all(isinstance(item, str) for item in value):
            return [(item, False) for item in value]
        texts, has_image = [], False
        for part in value:
            if not isinstance(part, dict):
                break
            if part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif (
                part.get("type") == "image_url"
                and isinstance(part.get("image_url"), dict)
                and isinstance(part["image_url"].get("url"), str)
            ):
                has_image = True
            else:
                break
        else:
            return [(" ".join(texts), has_image)]
    raise InvalidRequestError(_INPUT_ERROR, "input")


def moderation_result(text: str, has_image: bool) -> dict[str, Any]:
    """Return one ``results`` entry for an input's text (and whether it had an image part)."""
    flagged = set()
    for word in _WORD.findall(text.lower()):
        flagged.update(TRIGGERS.get(word, ()))
    return {
        "flagged": bool(flagged),
        "categories": {name: name in flagged for name in CATEGORIES},
        "category_scores": {name: FLAGGED_SCORE if name in flagged else CLEAR_SCORE for name in CATEGORIES},
        "category_applied_input_types": {
            name: ["text", "image"] if has_image and name in IMAGE_CATEGORIES else ["text"] for name in CATEGORIES
        },
    }


@dataclass(slots=True)
class ModerationRequest:
    """A validated moderation request (never streamed, no usage)."""

    model: str
    inputs: list[tuple[str, bool]]
    fake: FakeSwitches
    stream: bool = False

    def plain(self, number: int) -> bytes:
        """Return the JSON of the moderation object: ``id``, ``model`` and one result per input."""
        results = [moderation_result(text, has_image) for text, has_image in self.inputs]
        return orjson.dumps({"id": f"modr-fake{number}", "model": self.model, "results": results})

    def plan(self, number: int) -> StreamPlan:  # pragma: no cover - moderations are never streamed
        raise NotImplementedError("moderations are not streamed")


def parse_moderation_request(body: bytes) -> ModerationRequest:
    """Parse and validate a ``POST /v1/moderations`` body; raise InvalidRequestError if unusable.

    ``model`` is optional (a non-empty string when given); ``input`` is required (see
    :func:`moderation_inputs`).  The ``fake`` switches about streams, text or usage are refused.
    """
    data = load_object(body)
    model = data.get("model", DEFAULT_MODEL)
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("Invalid 'model': expected a non-empty string.", "model")
    if "input" not in data:
        raise InvalidRequestError("Missing required parameter: 'input'.", "input")
    inputs = moderation_inputs(data["input"])
    fake = FakeSwitches.parse(data.get("fake"))
    fake.refuse((*STREAM_SWITCHES, "chunks", "usage", "bad_usage"), "moderations have no stream, text or usage")
    return ModerationRequest(model=model, inputs=inputs, fake=fake)
