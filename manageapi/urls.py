"""The management API's routes, under `/api/manage/v1/` (config/urls.py)."""

from django.urls import path

from .apis import KeyDetailApi, KeyListCreateApi, KeyRevokeApi, KeyRotateApi, TeamDetailApi, TeamListCreateApi, UsageApi

urlpatterns = [
    path("keys", KeyListCreateApi.as_view(), name="manage-keys"),
    path("keys/<str:prefix>", KeyDetailApi.as_view(), name="manage-key"),
    path("keys/<str:prefix>/rotate", KeyRotateApi.as_view(), name="manage-key-rotate"),
    path("keys/<str:prefix>/revoke", KeyRevokeApi.as_view(), name="manage-key-revoke"),
    path("teams", TeamListCreateApi.as_view(), name="manage-teams"),
    path("teams/<str:name>", TeamDetailApi.as_view(), name="manage-team"),
    path("usage", UsageApi.as_view(), name="manage-usage"),
]
