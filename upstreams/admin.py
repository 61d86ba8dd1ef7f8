"""The admin for upstreams: list (with each one's state: resting or not, and its last errors), create, edit
(the key is write-only: never shown, replaced only when a new one is typed), enable/disable, delete; and the
read-only audit trail. Every write is a call into `upstreams.services`, as the commands' are."""

import time
from datetime import UTC, datetime

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.utils.html import format_html, format_html_join

from .crypto import KeyEncryptionError
from .models import Upstream, UpstreamAuditEntry
from .services import (
    AUDITED,
    UpstreamInvalid,
    upstream_clean_fields,
    upstream_create,
    upstream_delete,
    upstream_set_enabled,
    upstream_update,
)
from .store import get_route_store


def _actor(request) -> str:
    return request.user.get_username()


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class UpstreamForm(forms.ModelForm):
    base_url = forms.URLField(
        max_length=500, assume_scheme="https", help_text=Upstream._meta.get_field("base_url").help_text
    )
    api_key = forms.CharField(
        required=False,
        strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "off"}),
        help_text="Stored encrypted and never shown again. Leave empty to keep the current key.",
    )

    class Meta:
        model = Upstream
        fields = ("name", "kind", "base_url", "api_key", *[f for f in AUDITED if f not in ("kind", "base_url")])

    def clean(self):
        cleaned = super().clean() or {}
        if self.instance.pk is None and not cleaned.get("api_key"):
            self.add_error("api_key", "An API key is required.")
        values = {field: cleaned[field] for field in (*AUDITED, "name") if cleaned.get(field) is not None}
        try:
            upstream_clean_fields(values)
        except UpstreamInvalid as exc:
            raise ValidationError(str(exc)) from None
        if cleaned.get("api_version") and cleaned.get("kind") != "azure":
            self.add_error("api_version", "An API version is for azure upstreams only.")
        return cleaned


@admin.register(Upstream)
class UpstreamAdmin(admin.ModelAdmin):
    form = UpstreamForm
    list_display = (
        "name",
        "kind",
        "base_url",
        "priority",
        "weight",
        "served",
        "caps",
        "enabled",
        "state",
        "last_error",
    )
    list_filter = ("kind", "enabled")
    search_fields = ("name", "base_url")
    readonly_fields = ("state", "last_errors")
    actions = ("enable", "disable")

    def get_readonly_fields(self, request, obj=None):
        # The name is what usage records and stored objects point at: fixed once created.
        return ("name", *self.readonly_fields) if obj is not None else self.readonly_fields

    @admin.display(description="models")
    def served(self, obj: Upstream) -> str:
        served = list(obj.models) + [f"{public}→{target}" for public, target in obj.aliases.items()]
        return ", ".join(served) or "all"

    @admin.display(description="rpm / tpm")
    def caps(self, obj: Upstream) -> str:
        return f"{obj.rpm or '-'} / {obj.tpm or '-'}"

    @admin.display(description="state")
    def state(self, obj: Upstream) -> str:
        if not obj.enabled:
            return "disabled"
        until = get_route_store().resting_now([obj.name]).get(obj.name)
        if until:
            return f"resting until {_when(until)} ({until - time.time():.0f} s)"
        return "serving"

    @admin.display(description="last error")
    def last_error(self, obj: Upstream) -> str:
        errors = get_route_store().last_errors(obj.name)
        if not errors:
            return "-"
        error = errors[0]
        return f"{_when(error.get('at', 0))}: {error.get('reason', '')}"

    @admin.display(description="last errors")
    def last_errors(self, obj: Upstream):
        errors = get_route_store().last_errors(obj.name) if obj.pk else []
        if not errors:
            return "none"
        return format_html(
            "<ul>{}</ul>",
            format_html_join(
                "",
                "<li>{}: {} — {}</li>",
                ((_when(e.get("at", 0)), e.get("reason", ""), e.get("message", "")) for e in errors),
            ),
        )

    def save_model(self, request, obj, form, change):
        values = {field: form.cleaned_data[field] for field in AUDITED if field in form.cleaned_data}
        key = form.cleaned_data.get("api_key") or None
        try:
            if change:
                saved = upstream_update(
                    upstream=Upstream.objects.get(pk=obj.pk), actor=_actor(request), api_key=key, **values
                )
            else:
                saved = upstream_create(
                    name=form.cleaned_data["name"], api_key=key or "", actor=_actor(request), **values
                )
        except (UpstreamInvalid, KeyEncryptionError) as exc:
            # Checked in the form already; a key that cannot be sealed (no encryption key set) is the rest.
            self.message_user(request, str(exc), messages.ERROR)
            return
        obj.pk = saved.pk

    def delete_model(self, request, obj):
        upstream_delete(upstream=obj, actor=_actor(request))

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            upstream_delete(upstream=obj, actor=_actor(request))

    @admin.action(description="Enable the selected upstreams")
    def enable(self, request, queryset):
        for obj in queryset:
            upstream_set_enabled(upstream=obj, enabled=True, actor=_actor(request))

    @admin.action(description="Disable the selected upstreams")
    def disable(self, request, queryset):
        for obj in queryset:
            upstream_set_enabled(upstream=obj, enabled=False, actor=_actor(request))


@admin.register(UpstreamAuditEntry)
class UpstreamAuditEntryAdmin(admin.ModelAdmin):
    list_display = ("created_at", "actor", "action", "upstream_name", "changes")
    list_filter = ("action",)
    search_fields = ("upstream_name", "actor")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
