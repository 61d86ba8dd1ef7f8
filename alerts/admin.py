"""Alerts in the admin: claims and their deliveries (attempts, errors), read-only; superusers only."""

from django.contrib import admin

from .models import AlertClaim, AlertDelivery


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class AlertDeliveryInline(admin.TabularInline):
    model = AlertDelivery
    extra = 0
    can_delete = False
    fields = ("channel", "target", "status", "attempts", "last_status_code", "last_error", "sent_at", "next_attempt_at")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(AlertClaim)
class AlertClaimAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "event", "scope", "name", "threshold", "period")
    list_filter = ("event", "scope")
    search_fields = ("subject", "payload")
    fields = ("created_at", "event", "scope", "subject", "period", "threshold", "payload")
    readonly_fields = fields
    inlines = [AlertDeliveryInline]

    @admin.display(description="name")
    def name(self, obj):
        return obj.payload.get("name", obj.subject)


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "claim", "channel", "status", "attempts", "last_status_code", "sent_at")
    list_filter = ("status", "channel")
    fields = (
        "claim",
        "channel",
        "target",
        "status",
        "attempts",
        "last_status_code",
        "last_error",
        "next_attempt_at",
        "sent_at",
        "created_at",
    )
    readonly_fields = fields
