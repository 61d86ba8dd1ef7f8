"""The endpoints the relay serves, each a declaration (`base.Endpoint`). `ENDPOINTS` is what `completions.urls`
routes; an endpoint not listed here is a 404 and reaches no upstream."""

from .base import Endpoint
from .chat import CHAT_COMPLETIONS
from .embeddings import EMBEDDINGS
from .legacy_completions import COMPLETIONS
from .moderations import MODERATIONS

ENDPOINTS: tuple[Endpoint, ...] = (CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, MODERATIONS)

__all__ = ["CHAT_COMPLETIONS", "COMPLETIONS", "EMBEDDINGS", "ENDPOINTS", "MODERATIONS", "Endpoint"]
