"""Content negotiation that never answers 406.

The openai SDK sends `Accept: application/json` even when it asks for a stream, and other clients send
`text/event-stream`; the response type is decided by the request body (`stream`), not by `Accept`.
"""

from rest_framework.negotiation import BaseContentNegotiation


class AnyAcceptNegotiation(BaseContentNegotiation):
    def select_parser(self, request, parsers):
        return parsers[0] if parsers else None

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type
