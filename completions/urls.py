"""The relay's routes: every declared endpoint's paths, and the model list. Nothing else under /v1/ exists."""

from django.urls import path

from .apis import RELAY_APIS, ModelListApi
from .endpoints import ENDPOINTS

urlpatterns = [
    *(
        path(
            route, RELAY_APIS[endpoint.name].as_view(), name=endpoint.name if index == 0 else f"{endpoint.name}.{index}"
        )
        for endpoint in ENDPOINTS
        for index, route in enumerate(endpoint.paths)
    ),
    path("v1/models", ModelListApi.as_view(), name="models"),
]
