"""`POST /v1/completions`, the legacy completions API: plain and streamed, like chat."""

from ..schema import completion_schema
from ..sse import DataEventStream
from ..tokens import estimate_input_tokens
from ..usage import chat_usage
from ..validation import parse_completion_request
from .base import Endpoint, body_usage_field


def estimate_prompt(parsed) -> int:
    """The prompt's tokens; with `echo` the prompt comes back as output too, so it is reserved twice."""
    tokens = estimate_input_tokens(parsed.data.get("prompt"))
    return tokens * 2 if parsed.data.get("echo") is True else tokens


COMPLETIONS = Endpoint(
    name="completions",
    paths=("v1/completions",),
    upstream_path="/completions",
    parse=parse_completion_request,
    estimate_input=estimate_prompt,
    read_usage=body_usage_field(chat_usage),
    stream=DataEventStream(generated=rb'"text":\s?"(?!")'),
    log_field="prompt",
    schema=completion_schema,
)
