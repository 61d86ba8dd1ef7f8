"""`POST /v1/embeddings`: input as text or tokens, priced per million input tokens, no output."""

from ..schema import embedding_schema
from ..tokens import estimate_input_tokens
from ..usage import chat_usage
from ..validation import parse_embedding_request
from .base import Endpoint, body_usage_field

EMBEDDINGS = Endpoint(
    name="embeddings",
    paths=("v1/embeddings",),
    upstream_path="/embeddings",
    parse=parse_embedding_request,
    # tiktoken for text, the length for token arrays.
    estimate_input=lambda parsed: estimate_input_tokens(parsed.data["input"]),
    read_usage=body_usage_field(chat_usage),
    output=False,
    schema=embedding_schema,
)
