"""Admin for usage and prices: usage records are read-only, model prices are edited here (through
`usage.services`, which audits every change), and the price audit log is read-only.

The usage dashboard and the per-key usage page hang off the usage-record admin's URLs
(`/admin/usage/usagerecord/dashboard/`, `/admin/usage/usagerecord/key/<prefix>/`), wrapped in
`admin_site.admin_view`: staff only, and the user also needs the "view usage record" permission.
"""

from datetime import UTC
from typing import Any

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from apikeys.admin import admin_teams
from apikeys.models import APIKey

from .dashboard import format_usd, key_usage_page, usage_dashboard_page
from .models import ModelPrice, PriceAuditEntry, ToolPrice, UsageRecord
from .services import (
    PRICE_FIELDS,
    TOOL_PRICE_FIELDS,
    model_price_create,
    model_price_delete,
    model_price_update,
    tool_price_create,
    tool_price_delete,
    tool_price_update,
)

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
        "endpoint",
        "model",
        "status",
        "error_type",
        "streamed",
        "prompt_tokens",
        "cached_tokens",
        "completion_tokens",
        "cost",
        "latency",
        "usage_estimated",
    )
    list_filter = ("endpoint", "streamed", "usage_estimated", "status", "model")
    search_fields = ("=request_id", "=upstream_request_id", "=key_prefix", "key_name", "model")
    date_hierarchy = "created_at"
    # Counting every row of a large table on each page load is slow; the paginator's count is enough.
    show_full_result_count = False
    list_per_page = 100
    fieldsets = (
        (None, {"fields": ("created_at", "request_id", "upstream_request_id", "key_name", "key_prefix", "api_key")}),
        ("Request", {"fields": ("endpoint", "model", "streamed", "status", "error_type", "latency_ms", "ttfb_ms")}),
        (
            "Usage",
            {
                "fields": (
                    "prompt_tokens",
                    "cached_tokens",
                    "completion_tokens",
                    "reasoning_tokens",
                    "hosted_tool_calls",
                    "hosted_tools",
                    "total_tokens",
                    "usage_estimated",
                    "cost_usd",
                )
            },
        ),
    )

    @admin.display(description="cost", ordering="cost_usd")
    def cost(self, obj: UsageRecord) -> str:
        return format_usd(obj.cost_usd)

    @admin.display(description="latency", ordering="latency_ms")
    def latency(self, obj: UsageRecord) -> str:
        return f"{obj.latency_ms:,.0f} ms"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        return False

    # A team admin sees the records, the dashboard and the key pages of their teams' keys only (apikeys.admin).

    def team_key_prefixes(self, request: HttpRequest) -> QuerySet | None:
        teams = admin_teams(request)
        return None if teams is None else APIKey.objects.filter(team__in=teams).values("prefix")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        records = super().get_queryset(request)
        prefixes = self.team_key_prefixes(request)
        return records if prefixes is None else records.filter(key_prefix__in=prefixes)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return admin_teams(request) is not None or super().has_module_permission(request)

    def has_view_permission(self, request: HttpRequest, obj: UsageRecord | None = None) -> bool:
        prefixes = self.team_key_prefixes(request)
        if prefixes is None:
            return super().has_view_permission(request, obj)
        return obj is None or prefixes.filter(prefix=obj.key_prefix).exists()

    def get_urls(self) -> list[URLPattern]:
        view = self.admin_site.admin_view
        own = [
            path("dashboard/", view(self.dashboard_view), name="usage_usagerecord_dashboard"),
            path("key/<str:prefix>/", view(self.key_view), name="usage_usagerecord_key"),
        ]
        return own + super().get_urls()

    def dashboard_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        return usage_dashboard_page(request, admin_site=self.admin_site, key_prefixes=self.team_key_prefixes(request))

    def key_view(self, request: HttpRequest, prefix: str) -> HttpResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        teams = admin_teams(request)
        keys = APIKey.objects.all() if teams is None else APIKey.objects.filter(team__in=teams)
        api_key = get_object_or_404(keys, prefix=prefix)
        return key_usage_page(request, api_key=api_key, admin_site=self.admin_site)


def _audit_value(value: Any) -> str:
    return "—" if value is None or value == "" else str(value)


def _changes(entry: PriceAuditEntry) -> str:
    """An audit entry's `{field: [old, new]}` as one readable line."""
    parts = []
    for field, value in (entry.changes or {}).items():
        if isinstance(value, list) and len(value) == 2:
            parts.append(f"{field}: {_audit_value(value[0])} → {_audit_value(value[1])}")
        else:
            parts.append(f"{field}: {_audit_value(value)}")
    return "; ".join(parts)


def _actor(request: HttpRequest) -> str:
    return request.user.get_username()


class AuditedPriceAdmin(admin.ModelAdmin):
    """A price table's admin whose every add, edit and delete goes through its `usage.services` functions, which
    write the price audit log; the page shows the row's own audit trail. Subclasses name the table and services."""

    audit_table = ""
    price_fields: tuple = ()
    create_service: Any = None
    update_service: Any = None
    delete_service: Any = None

    @admin.display(description="changes")
    def audit_trail(self, obj: Any) -> str:
        if obj is None or obj.pk is None:
            return "—"
        entries = PriceAuditEntry.objects.filter(table=self.audit_table, price_id=obj.pk)[:50]
        lines = [
            f"{entry.created_at.astimezone(UTC):%Y-%m-%d %H:%M} UTC, {entry.actor}, {entry.action}: {_changes(entry)}"
            for entry in entries
        ]
        return format_html_join(mark_safe("<br>"), "{}", ((line,) for line in lines)) if lines else "—"

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        fields = {name: getattr(obj, name) for name in self.price_fields}
        if change:
            # `obj` already holds the form's values; the service reads the old ones from the database.
            saved = self.update_service(
                price=obj, actor=_actor(request), **{name: fields[name] for name in form.changed_data if name in fields}
            )
        else:
            saved = self.create_service(actor=_actor(request), **fields)
        obj.pk = saved.pk
        obj.refresh_from_db()

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        self.delete_service(price=obj, actor=_actor(request))

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet) -> None:
        for price in queryset:
            self.delete_service(price=price, actor=_actor(request))


@admin.register(ModelPrice)
class ModelPriceAdmin(AuditedPriceAdmin):
    """USD per million tokens. A price change is a new row with a later `effective_from`: each record's cost is
    computed when the request finishes, from the price then in force, and stored with the record.

    Every add, edit (the change form and the list's editable columns) and delete goes through `usage.services`,
    which writes the price audit log; the model form's own validation runs first, as for any admin form.
    """

    list_display = (
        "model",
        "input_per_million",
        "cached_input_per_million",
        "output_per_million",
        "max_output_tokens",
        "effective_from",
        "upstream",
    )
    list_editable = ("input_per_million", "cached_input_per_million", "output_per_million", "max_output_tokens")
    search_fields = ("model",)
    ordering = ("model", "-effective_from")
    readonly_fields = ("audit_trail",)
    fieldsets = (
        (
            None,
            {
                "fields": (
                    "model",
                    "input_per_million",
                    "cached_input_per_million",
                    "output_per_million",
                    "max_output_tokens",
                    "effective_from",
                    "upstream",
                ),
                "description": (
                    "Prices in USD per million tokens. Input tokens the upstream served from its prompt cache are "
                    "charged the <em>cached input</em> rate (empty: the input rate). <code>model</code> matches a "
                    "request's model exactly or as a prefix (the longest match wins). To change a price from a date "
                    "on, add a row with that <code>effective_from</code> rather than editing the current one: "
                    "records already written keep the cost they were charged. A row naming an <em>upstream</em> "
                    "prices that upstream's requests only (a self-hosted model can cost 0); it wins over a row for "
                    "every upstream. Every change is kept in the <em>price audit log</em>."
                ),
            },
        ),
        ("Audit trail", {"fields": ("audit_trail",)}),
    )

    audit_table = "model"
    price_fields = PRICE_FIELDS
    create_service = staticmethod(model_price_create)
    update_service = staticmethod(model_price_update)
    delete_service = staticmethod(model_price_delete)


@admin.register(ToolPrice)
class ToolPriceAdmin(AuditedPriceAdmin):
    """USD per call of a hosted tool, by the output item type of its calls. Every change goes through
    `usage.services` and is kept in the price audit log (`table` = `tool`)."""

    list_display = ("tool", "per_call_usd", "effective_from")
    list_editable = ("per_call_usd",)
    search_fields = ("tool",)
    ordering = ("tool", "-effective_from")
    readonly_fields = ("audit_trail",)
    fieldsets = (
        (
            None,
            {
                "fields": ("tool", "per_call_usd", "effective_from"),
                "description": (
                    "USD per call of a hosted tool, named by the output item type of its calls "
                    "(<code>web_search_call</code>, <code>file_search_call</code>, <code>code_interpreter_call</code>, "
                    "<code>image_generation_call</code>, ...). Each such item in a response's output adds this "
                    "price to the request's cost. A tool without a row costs nothing per call."
                ),
            },
        ),
        ("Audit trail", {"fields": ("audit_trail",)}),
    )

    audit_table = "tool"
    price_fields = TOOL_PRICE_FIELDS
    create_service = staticmethod(tool_price_create)
    update_service = staticmethod(tool_price_update)
    delete_service = staticmethod(tool_price_delete)


@admin.register(PriceAuditEntry)
class PriceAuditEntryAdmin(admin.ModelAdmin):
    """The price audit trail: append-only, so nobody can add, change or delete an entry here."""

    list_display = ("when", "actor", "action", "table", "model", "what_changed")
    list_filter = ("action", "table")
    search_fields = ("model", "actor")
    date_hierarchy = "created_at"
    fields = ("created_at", "actor", "action", "table", "model", "price_id", "what_changed")
    readonly_fields = fields

    @admin.display(description="when (UTC)", ordering="created_at")
    def when(self, obj: PriceAuditEntry) -> str:
        return obj.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="what changed")
    def what_changed(self, obj: PriceAuditEntry) -> str:
        return _changes(obj)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: PriceAuditEntry | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: PriceAuditEntry | None = None) -> bool:
        return False
