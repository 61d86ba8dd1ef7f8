from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.negotiation import DefaultContentNegotiation

from core.health import healthz, readyz
from core.metrics import metrics_view

urlpatterns = [
    # Every relayed endpoint (completions.endpoints) and the model list; any other /v1/ path is a JSON 404.
    path("", include("completions.urls")),
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
    # Keys, teams and usage for automation, authenticated by management tokens (manageapi/). Served by the web
    # handler (config/asgi.py): its sync views need Django's per-request database connection handling.
    path("api/manage/v1/", include("manageapi.urls")),
    path("admin/", admin.site.urls),
]

handler400 = "core.errors.json_400"
handler403 = "core.errors.json_403"
handler404 = "core.errors.json_404"
handler500 = "core.errors.json_500"
