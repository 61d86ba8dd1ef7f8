"""``POST /v1/embeddings`` of the fake upstream: deterministic unit vectors and a word-count usage.

Each input gets a vector derived from a hash of its JSON text (the same input always gets the same
vector, different inputs practically never do), of ``dimensions`` components or the model's default
(:data:`DEFAULT_DIMENSIONS`), scaled to length 1 and rounded to float32, as OpenAI's are: the ``float``
and ``base64`` encodings (little-endian float32, as the SDK decodes it) carry exactly the same numbers.

Usage: ``prompt_tokens`` = ``total_tokens`` = the whitespace-separated words of every string input
plus the length of every token array (unless ``fake.usage`` / ``fake.bad_usage`` say otherwise).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
import struct
from dataclasses import dataclass
from typing import Any

import orjson

from fakeupstream.completions import (
    STREAM_SWITCHES,
    FakeSwitches,
    InvalidRequestError,
    StreamPlan,
    load_object,
    required_model,
)

#: Vector length when the request gives no ``dimensions``: OpenAI's for its models, else 1536.
DEFAULT_DIMENSIONS: dict[str, int] = {
    "text-embedding-3-large": 3072,
    "text-embedding-3-small": 1536,
    "text-embedding-ada-002": 1536,
}
FALLBACK_DIMENSIONS = 1536
#: OpenAI's caps: inputs per request and the largest ``dimensions`` the fake agrees to make.
MAX_INPUTS = 2048
MAX_DIMENSIONS = 3072

_INPUT_ERROR = "'$.input' is invalid. Please check the API reference: https://platform.openai.com/docs/api-reference."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def embedding_inputs(value: Any) -> list[str | list[int]]:
    """Return the inputs of an ``input`` field: a list of strings or a list of token arrays.

    Accepts OpenAI's four forms (a non-empty string, 1 to 2048 strings, a non-empty token array, 1 to
    2048 non-empty token arrays); raises InvalidRequestError (``param`` ``"input"``) for anything else.
    """
    if isinstance(value, str):
        if value:
            return [value]
    elif isinstance(value, list) and 0 < len(value) <= MAX_INPUTS:
        if all(isinstance(item, str) and item for item in value):
            return value
        if all(_is_int(item) for item in value):
            return [value]
        if all(isinstance(item, list) and item and all(_is_int(t) for t in item) for item in value):
            return value
    raise InvalidRequestError(_INPUT_ERROR, "input")


def input_tokens(item: str | list[int]) -> int:
    """Return the fake token count of one input: its words for a string, its length for a token array."""
    return len(item.split()) if isinstance(item, str) else len(item)


@functools.lru_cache(maxsize=4096)
def _packed_unit_vector(key: bytes, dimensions: int) -> bytes:
    raw = hashlib.shake_128(key).digest(4 * dimensions)
    values = struct.unpack(f"<{dimensions}i", raw)
    scale = 1.0 / (math.hypot(*values) or 1.0)
    return struct.pack(f"<{dimensions}f", *map(scale.__mul__, values))


def packed_unit_vector(item: str | list[int], dimensions: int) -> bytes:
    """Return the deterministic unit vector of one input as little-endian float32 bytes.

    SHAKE-128 of the input's JSON gives 4 bytes per component; the components are centred on 0 and scaled
    to length 1.  The per-component work runs in C (hashlib, struct, ``math.hypot``) and the last 4,096
    vectors are cached, since benchmarks send the same inputs over and over.
    """
    return _packed_unit_vector(orjson.dumps(item), dimensions)


def unit_vector(item: str | list[int], dimensions: int) -> tuple[float, ...]:
    """Return the vector of :func:`packed_unit_vector` as floats (the values the SDK decodes from base64)."""
    return struct.unpack(f"<{dimensions}f", packed_unit_vector(item, dimensions))


@dataclass(slots=True)
class EmbeddingsRequest:
    """A validated embeddings request, reduced to what the fake needs to answer it (never streamed)."""

    model: str
    inputs: list[str | list[int]]
    dimensions: int
    base64: bool
    usage: dict[str, Any]
    fake: FakeSwitches
    stream: bool = False

    def plain(self, number: int) -> bytes:
        """Return the JSON of the ``list`` of ``embedding`` objects, with ``usage``."""
        data = []
        for index, item in enumerate(self.inputs):
            if self.base64:
                embedding: Any = base64.b64encode(packed_unit_vector(item, self.dimensions)).decode("ascii")
            else:
                embedding = unit_vector(item, self.dimensions)
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        return orjson.dumps({"object": "list", "data": data, "model": self.model, "usage": self.usage})

    def plan(self, number: int) -> StreamPlan:  # pragma: no cover - embeddings are never streamed
        raise NotImplementedError("embeddings are not streamed")


def parse_embeddings_request(body: bytes) -> EmbeddingsRequest:
    """Parse and validate a ``POST /v1/embeddings`` body; raise InvalidRequestError if unusable.

    ``encoding_format`` is ``"float"`` (the default) or ``"base64"``; ``dimensions`` an integer from 1 to
    :data:`MAX_DIMENSIONS`.  ``stream`` is not an embeddings parameter and is ignored, as OpenAI does.
    """
    data = load_object(body)
    model = required_model(data)
    if "input" not in data:
        raise InvalidRequestError("Missing required parameter: 'input'.", "input")
    inputs = embedding_inputs(data["input"])
    encoding = data.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        message = f"Invalid value: {encoding!r}. Supported values are: 'float' and 'base64'."
        raise InvalidRequestError(message, "encoding_format")
    dimensions = data.get("dimensions")
    if dimensions is None:
        dimensions = DEFAULT_DIMENSIONS.get(model, FALLBACK_DIMENSIONS)
    elif not _is_int(dimensions) or not 1 <= dimensions <= MAX_DIMENSIONS:
        raise InvalidRequestError(f"Invalid 'dimensions': must be an integer from 1 to {MAX_DIMENSIONS}.", "dimensions")
    fake = FakeSwitches.parse(data.get("fake"))
    fake.refuse((*STREAM_SWITCHES, "chunks"), "embeddings are not streamed and have no text")
    tokens = sum(map(input_tokens, inputs))
    return EmbeddingsRequest(
        model=model,
        inputs=inputs,
        dimensions=dimensions,
        base64=encoding == "base64",
        usage=fake.reported_usage({"prompt_tokens": tokens, "total_tokens": tokens}),
        fake=fake,
    )
