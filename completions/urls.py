"""The relay's routes: every declared endpoint's paths, and the model list. Nothing else under /v1/ exists."""

from django.urls import path, register_converter

from .apis import RELAY_APIS, ModelListApi, routes


class ObjectIdConverter:
    """An upstream object id in a path (`resp_…`, `conv_…`, `msg_…`): letters, digits, `_` and `-` only, so that
    nothing a client puts there can change the upstream path it is placed into."""

    regex = r"[A-Za-z0-9_-]{1,200}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(ObjectIdConverter, "oid")


def _route_name(endpoint, route: str) -> str:
    index = endpoint.paths.index(route)
    return endpoint.name if index == 0 else f"{endpoint.name}.{index}"


urlpatterns = [
    *(
        path(route, RELAY_APIS[route].as_view(), name=_route_name(endpoints[0], route))
        for route, endpoints in routes().items()
    ),
    path("v1/models", ModelListApi.as_view(), name="models"),
]
