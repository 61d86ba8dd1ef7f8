"""The names usage records give the relay's endpoints (`UsageRecord.endpoint`).

The relay (completions/) declares its endpoints and sets `RequestOutcome.endpoint`; usage/ may not import the
relay (the relay imports usage/), so the names it knows of are repeated here for the report's `--endpoint`
check and the dashboards' order. A name recorded but missing here still shows everywhere.
"""

CHAT_COMPLETIONS = "chat.completions"
KNOWN_ENDPOINTS: tuple[str, ...] = (
    CHAT_COMPLETIONS,
    "completions",
    "embeddings",
    "moderations",
    "responses",
    "responses.input_tokens",
    "responses.retrieve",
    "responses.delete",
    "responses.cancel",
    "responses.input_items",
    "conversations",
    "conversations.retrieve",
    "conversations.update",
    "conversations.delete",
    "conversations.items.create",
    "conversations.items.list",
    "conversations.items.retrieve",
    "conversations.items.delete",
)
