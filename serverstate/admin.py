from django.contrib import admin

from .models import BackgroundResponse, OwnedObject


@admin.register(OwnedObject)
class OwnedObjectAdmin(admin.ModelAdmin):
    """Read-only: ownership is recorded by the relay."""

    list_display = ("kind", "object_id", "lineage", "key_prefix", "created_at", "input_tokens", "output_tokens")
    list_filter = ("kind",)
    search_fields = ("object_id", "lineage", "key_prefix")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(BackgroundResponse)
class BackgroundResponseAdmin(admin.ModelAdmin):
    """Read-only: background responses are followed and settled by the gateway."""

    list_display = ("response_id", "key_prefix", "model", "created_at", "polls", "settled_at", "final_status")
    search_fields = ("response_id", "key_prefix", "request_id")
    exclude = ("admission",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
