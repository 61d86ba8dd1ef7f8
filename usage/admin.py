"""Admin for usage and prices: usage records are read-only, model prices are edited here.

The usage dashboard and the per-key usage page hang off the usage-record admin's URLs
(`/admin/usage/usagerecord/dashboard/`, `/admin/usage/usagerecord/key/<prefix>/`), wrapped in
`admin_site.admin_view`: staff only, and the user also needs the "view usage record" permission.
"""

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404
from django.urls import path

from apikeys.models import APIKey

from .dashboard import format_usd, key_usage_page, usage_dashboard_page
from .models import ModelPrice, UsageRecord

# The admin index links to the usage dashboard (an app's `admin/index.html` would lose to the admin's own, which
# comes first in INSTALLED_APPS).
admin.site.index_template = "admin/usage/index.html"


@admin.register(UsageRecord)
class UsageRecordAdmin(admin.ModelAdmin):
    """Records are written by the gateway only (usage/writer.py): nobody adds, edits or deletes them here."""

    list_display = (
        "created_at",
        "key_name",
        "key_prefix",
        "model",
        "status",
        "error_type",
        "streamed",
        "prompt_tokens",
        "completion_tokens",
        "cost",
        "latency",
        "usage_estimated",
    )
    list_filter = ("streamed", "usage_estimated", "status", "model")
    search_fields = ("=request_id", "=upstream_request_id", "=key_prefix", "key_name", "model")
    date_hierarchy = "created_at"
    # Counting every row of a large table on each page load is slow; the paginator's count is enough.
    show_full_result_count = False
    list_per_page = 100
    fieldsets = (
        (None, {"fields": ("created_at", "request_id", "upstream_request_id", "key_name", "key_prefix", "api_key")}),
        ("Request", {"fields": ("model", "streamed", "status", "error_type", "latency_ms", "ttfb_ms")}),
        (
            "Usage",
            {"fields": ("prompt_tokens", "completion_tokens", "total_tokens", "usage_estimated", "cost_usd")},
        ),
    )

    @admin.display(description="cost", ordering="cost_usd")
    def cost(self, obj):
        return format_usd(obj.cost_usd)

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj):
        return f"{obj.latency_ms:,.0f} ms"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        view = self.admin_site.admin_view
        own = [
            path("dashboard/", view(self.dashboard_view), name="usage_usagerecord_dashboard"),
            path("key/<str:prefix>/", view(self.key_view), name="usage_usagerecord_key"),
        ]
        return own + super().get_urls()

    def dashboard_view(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return usage_dashboard_page(request, admin_site=self.admin_site)

    def key_view(self, request, prefix):
        if not self.has_view_permission(request):
            raise PermissionDenied
        api_key = get_object_or_404(APIKey, prefix=prefix)
        return key_usage_page(request, api_key=api_key, admin_site=self.admin_site)


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """USD per million tokens. A price change is a new row with a later `effective_from`: each record's cost is
    computed when the request finishes, from the price then in force, and stored with the record."""

    list_display = ("model", "input_per_million", "output_per_million", "max_output_tokens", "effective_from")
    list_editable = ("input_per_million", "output_per_million", "max_output_tokens")
    search_fields = ("model",)
    ordering = ("model", "-effective_from")
    fieldsets = (
        (
            None,
            {
                "fields": ("model", "input_per_million", "output_per_million", "max_output_tokens", "effective_from"),
                "description": (
                    "Prices in USD per million tokens. <code>model</code> matches a request's model exactly or as "
                    "a prefix (the longest match wins). To change a price from a date on, add a row with that "
                    "<code>effective_from</code> rather than editing the current one: records already written keep "
                    "the cost they were charged."
                ),
            },
        ),
    )
