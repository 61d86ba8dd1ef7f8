"""`BytesStreamingResponse`: a streamed answer whose chunks are already bytes, ready to go out as they are.

Django's `StreamingHttpResponse` wraps its iterator in an async generator that re-encodes every chunk
(`make_bytes`), and `ASGIHandler.send_response` iterates that through `aclosing()` and `chunk_bytes()`: four
Python layers per chunk, each resumed for every relayed stream event. The API handler (`config.asgi.APIHandler`)
sends a `BytesStreamingResponse`'s chunks straight from `chunks` to ASGI `send`, one message per chunk; any other
handler (Django's own) serves it as the `StreamingHttpResponse` it also is.
"""

from collections.abc import AsyncIterator

from django.http import StreamingHttpResponse


class BytesStreamingResponse(StreamingHttpResponse):
    """A `StreamingHttpResponse` over an async iterator of non-empty `bytes` chunks (`chunks`)."""

    def __init__(self, chunks: AsyncIterator[bytes], *args, **kwargs):
        super().__init__(chunks, *args, **kwargs)
        self.chunks = chunks
