"""The API views: one `RelayApi` per declared endpoint (`completions.endpoints`), and the model list.

A view only authenticates (DRF, natively async: `core.asyncview`) and drives the pipeline of
`completions.relay`; everything an endpoint does differently lives in its declaration.
"""

import time

import orjson
from django.http import HttpResponse
from rest_framework.parsers import BaseParser

from apikeys.authentication import BearerAPIKeyAuthentication
from core.asyncview import AsyncAPIView
from core.errors import OpenAIError
from core.outcome import RequestOutcome
from core.streaming import BytesStreamingResponse
from upstreams.selection import get_table, served_models

from .endpoints import ENDPOINTS, Endpoint
from .relay import RelayStream, relay
from .schema import model_list_schema
from .upstream import list_models


class RawJSONParser(BaseParser):
    """Declares JSON for the schema; the body itself is read raw by the relay (it is forwarded as bytes)."""

    media_type = "application/json"


class RelayApi(AsyncAPIView):
    """A relayed route: authenticate, then the relay's pipeline (`completions.relay`) for the endpoint declared
    for the request's method (a route such as `/v1/responses/{id}` serves GET and DELETE)."""

    endpoint: Endpoint  # the POST endpoint (or the route's only one)
    endpoints: dict[str, Endpoint]  # by HTTP method
    authentication_classes = [BearerAPIKeyAuthentication]
    permission_classes = []  # authentication raises by itself for a missing or bad key
    parser_classes = [RawJSONParser]
    # Limits are admitted atomically by the relay (metering.throttling.admit), not checked one by one by DRF.
    throttle_classes = []

    async def post(self, request, *args, **kwargs):
        return await self.relay(self.endpoints["POST"], request, kwargs)

    async def get(self, request, *args, **kwargs):
        return await self.relay(self.endpoints["GET"], request, kwargs)

    async def delete(self, request, *args, **kwargs):
        return await self.relay(self.endpoints["DELETE"], request, kwargs)

    async def relay(self, endpoint: Endpoint, request, params: dict):
        outcome = RequestOutcome(request_id=request._request.request_id, key=request.auth, endpoint=endpoint.name)
        pipeline = relay(endpoint, request, outcome, params)
        head = await pipeline.__anext__()
        if head.body is None:
            return BytesStreamingResponse(
                RelayStream(pipeline), status=head.status, content_type=head.content_type, headers=head.headers
            )
        async for _ in pipeline:  # runs the pipeline to its end: the request is reported
            pass
        return HttpResponse(head.body, status=head.status, content_type=head.content_type, headers=head.headers)


def relay_api(*endpoints: Endpoint) -> type[RelayApi]:
    """The view class of one route, serving each of `endpoints` on its method, named after the first
    (`EmbeddingsApi`) and described by each endpoint's schema on its method's handler."""
    first = endpoints[0]
    name = "".join(part.capitalize() for part in first.name.replace("_", ".").split(".")) + "Api"
    by_method = {endpoint.method: endpoint for endpoint in endpoints}
    attributes: dict = {
        "endpoint": by_method.get("POST", first),
        "endpoints": by_method,
        "http_method_names": [method.lower() for method in by_method],
        "__doc__": "; ".join(f"{endpoint.method} {', '.join(endpoint.paths)}" for endpoint in endpoints) + ".",
    }
    # Each endpoint's schema goes on its method's handler (on the class, drf-spectacular cannot take an
    # operation id).
    for endpoint in endpoints:
        handler_name = endpoint.method.lower()
        handler = getattr(RelayApi, handler_name)

        async def handle(self, request, *args, _handler=handler, **kwargs):
            return await _handler(self, request, *args, **kwargs)

        handle.__name__ = handler_name
        attributes[handler_name] = endpoint.schema(handle) if endpoint.schema is not None else handle
    return type(name, (RelayApi,), attributes)


def routes() -> dict[str, list[Endpoint]]:
    """Every declared route (a path) and the endpoints it serves, in declaration order."""
    found: dict[str, list[Endpoint]] = {}
    for endpoint in ENDPOINTS:
        for route in endpoint.paths:
            found.setdefault(route, []).append(endpoint)
    return found


RELAY_APIS = {route: relay_api(*endpoints) for route, endpoints in routes().items()}


@model_list_schema
class ModelListApi(AsyncAPIView):
    """GET /v1/models: the models this key may use, in OpenAI's list shape.

    With no upstream defined: a key with an allowlist (its own intersected with its team's) sees exactly that; a
    key without one sees the upstream's own list. With upstreams: what the enabled upstreams serve (their models
    and aliases, and the own list of each that serves every model), intersected with the key's allowlist.
    """

    authentication_classes = [BearerAPIKeyAuthentication]
    permission_classes = []

    async def get(self, request, *args, **kwargs):
        allowlist = request.auth.model_allowlist
        table = get_table()
        await table.current()
        if table.defined:
            return HttpResponse(orjson.dumps(await self.routed_models(allowlist)), content_type="application/json")
        if allowlist is not None:
            created = int(time.time())
            data = [
                {"id": model, "object": "model", "created": created, "owned_by": "tollgate"}
                for model in sorted(allowlist)
            ]
            return HttpResponse(orjson.dumps({"object": "list", "data": data}), content_type="application/json")
        return HttpResponse(await list_models(), content_type="application/json")

    async def routed_models(self, allowlist) -> dict:
        named, serve_all = await served_models()
        listed: dict[str, dict] = {}
        for target in serve_all:
            try:
                body = orjson.loads(await list_models(target))
            except (OpenAIError, orjson.JSONDecodeError):
                continue  # an upstream that cannot list its models lists nothing here
            for model in body.get("data", ()) if isinstance(body, dict) else ():
                if isinstance(model, dict) and isinstance(model.get("id"), str):
                    listed.setdefault(model["id"], model)
        created = int(time.time())
        for name in named:
            listed.setdefault(name, {"id": name, "object": "model", "created": created, "owned_by": "tollgate"})
        if allowlist is not None:
            listed = {name: model for name, model in listed.items() if name in allowlist}
        return {"object": "list", "data": [listed[name] for name in sorted(listed)]}
