from django.contrib import admin
from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.negotiation import DefaultContentNegotiation

from completions.apis import ChatCompletionCreateApi, ModelListApi
from core.health import healthz, readyz
from core.metrics import metrics_view

urlpatterns = [
    path("v1/chat/completions", ChatCompletionCreateApi.as_view(), name="chat-completions"),
    # The route of the original design; identical behaviour.
    path("api/route", ChatCompletionCreateApi.as_view(), name="api-route"),
    path("v1/models", ModelListApi.as_view(), name="models"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics_view, name="metrics"),
    # The project's API negotiation ignores Accept and ?format (core/negotiation.py); the schema view
    # needs DRF's own to answer JSON or YAML as asked.
    path(
        "api/schema/",
        SpectacularAPIView.as_view(content_negotiation_class=DefaultContentNegotiation),
        name="schema",
    ),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema", content_negotiation_class=DefaultContentNegotiation),
        name="docs",
    ),
    path("admin/", admin.site.urls),
]

handler400 = "core.errors.json_400"
handler403 = "core.errors.json_403"
handler404 = "core.errors.json_404"
handler500 = "core.errors.json_500"
