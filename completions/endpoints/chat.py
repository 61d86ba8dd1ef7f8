"""`POST /v1/chat/completions` (and `/api/route`, its original name): plain and streamed."""

from ..schema import chat_completion_schema
from ..sse import DataEventStream
from ..tokens import estimate_prompt_tokens
from ..usage import chat_usage
from ..validation import parse_chat_request
from .base import Endpoint, body_usage_field

CHAT_COMPLETIONS = Endpoint(
    name="chat.completions",
    paths=("v1/chat/completions", "api/route"),
    upstream_path="/chat/completions",
    parse=parse_chat_request,
    estimate_input=lambda parsed: estimate_prompt_tokens(parsed.data["messages"]),
    read_usage=body_usage_field(chat_usage),
    # A non-empty string of generated text in a delta: content, refusal or tool-call arguments.
    stream=DataEventStream(generated=rb'"(?:content|refusal|arguments)":\s?"(?!")'),
    log_field="messages",
    schema=chat_completion_schema,
)
