"""`AsyncAPIView`: DRF's `APIView`, dispatched natively on the event loop.

adrf's APIView runs `initial()` through `sync_to_async` and async authenticators back through `async_to_sync`:
two thread hops per request, which held the whole gateway to about 450 req/s (README, Performance). Here
authentication is awaited directly (`aauthenticate` when the class has it) and everything else in DRF's
request cycle (Request wrapping, exception handling, finalize_response) is DRF's own.
"""

from typing import Any

from asgiref.sync import iscoroutinefunction
from rest_framework.views import APIView


class AsyncAPIView(APIView):
    """An APIView whose handlers are `async def`. Throttles are checked by the handler itself (see `apis.py`)."""

    # No OPTIONS metadata (DRF would describe the view, docstring included): OPTIONS is a 405 like other methods.
    metadata_class = None

    async def dispatch(self, request, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        request = self.initialize_request(request, *args, **kwargs)
        self.request = request
        self.headers = self.default_response_headers
        try:
            await self.ainitial(request, *args, **kwargs)
            handler = getattr(self, request.method.lower(), None)
            if request.method.lower() not in self.http_method_names or handler is None:
                handler = self.http_method_not_allowed
            response: Any = handler(request, *args, **kwargs)
            if iscoroutinefunction(handler):
                response = await response
        except Exception as exc:
            response = self.handle_exception(exc)
        self.response = self.finalize_response(request, response, *args, **kwargs)
        # Django's list of what HttpResponse.close() calls (the stubs type DRF's Response, which lacks it).
        self.response._resource_closers.append(self.release)  # type: ignore[attr-defined]
        return self.response

    def release(self) -> None:
        """Run when the response closes: drop the references that make the view and its request a cycle.

        `self.request` and the DRF request's `parser_context["view"]` refer to each other, and through the view
        everything the response holds (a relayed stream's generator and its state) stays in that cycle: reference
        counting never frees it, only a full garbage collection does. With thousands of streams held, a full
        collection traverses all of them on the event loop (over 100 ms at 500 streams per worker); it
        comes after enough such garbage has piled up, so the less there is, the rarer it is.
        """
        request = getattr(self, "request", None)
        if request is not None:
            request.parser_context = None
        self.request = self.response = None  # type: ignore[assignment]
        # Django's View.setup() sets `self.head = self.get` on a view with a GET handler: a bound method of the
        # view on the view, one more cycle.
        vars(self).pop("head", None)

    async def ainitial(self, request, *args, **kwargs):
        self.format_kwarg = self.get_format_suffix(**kwargs)
        neg = self.perform_content_negotiation(request)
        request.accepted_renderer, request.accepted_media_type = neg
        version, scheme = self.determine_version(request, *args, **kwargs)
        request.version, request.versioning_scheme = version, scheme
        await self.aperform_authentication(request)
        self.check_permissions(request)

    async def aperform_authentication(self, request):
        for authenticator in request.authenticators:
            aauthenticate = getattr(authenticator, "aauthenticate", None)
            result = await aauthenticate(request) if aauthenticate else authenticator.authenticate(request)
            if result is not None:
                request._authenticator = authenticator
                request.user, request.auth = result
                return
        request._not_authenticated()
