from django.contrib import admin
from django.urls import path

from completions.apis import ChatCompletionCreateApi, ModelListApi
from completions.health import healthz, readyz

urlpatterns = [
    path("v1/chat/completions", ChatCompletionCreateApi.as_view(), name="chat-completions"),
    # The route of the original design; identical behaviour.
    path("api/route", ChatCompletionCreateApi.as_view(), name="api-route"),
    path("v1/models", ModelListApi.as_view(), name="models"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
]

handler400 = "completions.errors.json_400"
handler403 = "completions.errors.json_403"
handler404 = "completions.errors.json_404"
handler500 = "completions.errors.json_500"
