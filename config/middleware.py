"""Async-native middleware for the API paths (no thread hop per request)."""

import secrets

from asgiref.sync import iscoroutinefunction, markcoroutinefunction

REQUEST_ID_HEADER = "x-request-id"


def new_request_id() -> str:
    """`req_` and 32 random hex digits (128 bits; `secrets.token_hex` costs a quarter of `uuid4().hex`)."""
    return f"req_{secrets.token_hex(16)}"


def request_id_middleware(get_response):
    """Give every request an id (`request.request_id`) and echo it as `x-request-id` on every response.

    The id is always ours: a client-sent `x-request-id` is not trusted (it would let a client forge log lines).
    """

    if iscoroutinefunction(get_response):

        async def middleware(request):
            request.request_id = new_request_id()
            response = await get_response(request)
            response[REQUEST_ID_HEADER] = request.request_id
            response.setdefault("X-Content-Type-Options", "nosniff")
            return response

        markcoroutinefunction(middleware)
        return middleware

    def sync_middleware(request):
        request.request_id = new_request_id()
        response = get_response(request)
        response[REQUEST_ID_HEADER] = request.request_id
        response.setdefault("X-Content-Type-Options", "nosniff")
        return response

    return sync_middleware


request_id_middleware.async_capable = True
request_id_middleware.sync_capable = True
