"""The endpoints the relay serves, each a declaration (`base.Endpoint`). `ENDPOINTS` is what `completions.urls`
routes; an endpoint not listed here is a 404 and reaches no upstream."""

from .base import Endpoint
from .chat import CHAT_COMPLETIONS
from .conversations import (
    CONVERSATION_ITEM_DELETE,
    CONVERSATION_ITEM_RETRIEVE,
    CONVERSATION_ITEMS_CREATE,
    CONVERSATION_ITEMS_LIST,
    CONVERSATIONS_CREATE,
    CONVERSATIONS_DELETE,
    CONVERSATIONS_RETRIEVE,
    CONVERSATIONS_UPDATE,
)
from .embeddings import EMBEDDINGS
from .legacy_completions import COMPLETIONS
from .moderations import MODERATIONS
from .responses import (
    RESPONSES_CANCEL,
    RESPONSES_CREATE,
    RESPONSES_DELETE,
    RESPONSES_INPUT_ITEMS,
    RESPONSES_INPUT_TOKENS,
    RESPONSES_RETRIEVE,
)

ENDPOINTS: tuple[Endpoint, ...] = (
    CHAT_COMPLETIONS,
    COMPLETIONS,
    EMBEDDINGS,
    MODERATIONS,
    # `input_tokens` before the routes with a response id, so that it is never read as one.
    RESPONSES_INPUT_TOKENS,
    RESPONSES_CREATE,
    RESPONSES_RETRIEVE,
    RESPONSES_DELETE,
    RESPONSES_CANCEL,
    RESPONSES_INPUT_ITEMS,
    CONVERSATIONS_CREATE,
    CONVERSATIONS_RETRIEVE,
    CONVERSATIONS_UPDATE,
    CONVERSATIONS_DELETE,
    CONVERSATION_ITEMS_CREATE,
    CONVERSATION_ITEMS_LIST,
    CONVERSATION_ITEM_RETRIEVE,
    CONVERSATION_ITEM_DELETE,
)

__all__ = [
    "CHAT_COMPLETIONS",
    "COMPLETIONS",
    "EMBEDDINGS",
    "ENDPOINTS",
    "MODERATIONS",
    "RESPONSES_CREATE",
    "Endpoint",
]
