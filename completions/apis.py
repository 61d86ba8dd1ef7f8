"""The API views: one `RelayApi` per declared endpoint (`completions.endpoints`), and the model list.

A view only authenticates (DRF, natively async: `core.asyncview`) and drives the pipeline of
`completions.relay`; everything an endpoint does differently lives in its declaration.
"""

import time

import orjson
from django.http import HttpResponse, StreamingHttpResponse
from rest_framework.parsers import BaseParser

from apikeys.authentication import BearerAPIKeyAuthentication
from core.asyncview import AsyncAPIView
from core.outcome import RequestOutcome

from .endpoints import ENDPOINTS, Endpoint
from .relay import RelayStream, relay
from .schema import model_list_schema
from .upstream import list_models


class RawJSONParser(BaseParser):
    """Declares JSON for the schema; the body itself is read raw by the relay (it is forwarded as bytes)."""

    media_type = "application/json"


class RelayApi(AsyncAPIView):
    """POST to a relayed endpoint: authenticate, then the relay's pipeline (`completions.relay`)."""

    endpoint: Endpoint
    authentication_classes = [BearerAPIKeyAuthentication]
    permission_classes = []  # authentication raises by itself for a missing or bad key
    parser_classes = [RawJSONParser]
    # Limits are admitted atomically by the relay (metering.throttling.admit), not checked one by one by DRF.
    throttle_classes = []

    async def post(self, request, *args, **kwargs):
        outcome = RequestOutcome(request_id=request._request.request_id, key=request.auth, endpoint=self.endpoint.name)
        pipeline = relay(self.endpoint, request, outcome)
        head = await pipeline.__anext__()
        if head.body is None:
            return StreamingHttpResponse(
                RelayStream(pipeline), status=head.status, content_type=head.content_type, headers=head.headers
            )
        async for _ in pipeline:  # runs the pipeline to its end: the request is reported
            pass
        return HttpResponse(head.body, status=head.status, content_type=head.content_type, headers=head.headers)


def relay_api(endpoint: Endpoint) -> type[RelayApi]:
    """The view class of `endpoint`, named after it (`EmbeddingsApi`) and described by its schema."""
    name = "".join(part.capitalize() for part in endpoint.name.replace("_", ".").split(".")) + "Api"
    view = type(name, (RelayApi,), {"endpoint": endpoint, "__doc__": f"POST {', '.join(endpoint.paths)}."})
    return endpoint.schema(view) if endpoint.schema is not None else view


RELAY_APIS = {endpoint.name: relay_api(endpoint) for endpoint in ENDPOINTS}


@model_list_schema
class ModelListApi(AsyncAPIView):
    """GET /v1/models: the models this key may use, in OpenAI's list shape.

    A key with an allowlist (its own intersected with its team's) sees exactly that; a key without one sees the
    upstream's own list.
    """

    authentication_classes = [BearerAPIKeyAuthentication]
    permission_classes = []

    async def get(self, request, *args, **kwargs):
        allowlist = request.auth.model_allowlist
        if allowlist is not None:
            created = int(time.time())
            data = [
                {"id": model, "object": "model", "created": created, "owned_by": "tollgate"}
                for model in sorted(allowlist)
            ]
            return HttpResponse(orjson.dumps({"object": "list", "data": data}), content_type="application/json")
        return HttpResponse(await list_models(), content_type="application/json")
