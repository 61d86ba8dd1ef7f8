"""`POST /v1/moderations`: free of charge, counted against the key's requests per minute, recorded."""

from ..schema import moderation_schema
from ..validation import parse_moderation_request
from .base import Endpoint, no_usage

MODERATIONS = Endpoint(
    name="moderations",
    paths=("v1/moderations",),
    upstream_path="/moderations",
    parse=parse_moderation_request,
    # Moderations cost nothing and have no token usage: they reserve no tokens against tokens per minute.
    estimate_input=lambda parsed: 0,
    read_usage=no_usage,
    output=False,
    priced=False,
    schema=moderation_schema,
)
