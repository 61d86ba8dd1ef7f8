"""The admin UI for keys: list, create (raw key shown once), edit, rotate, revoke; and the read-only audit trail.

Every write is a call into `apikeys.services`, so the admin and `manage.py` can never disagree. A key's primary
key is its prefix (apikeys.models.TollgateAPIKeyManager), so URLs, checkboxes and Django's own admin log carry
the prefix, and no page ever shows a hash.
"""

from datetime import UTC, timedelta
from urllib.parse import urlencode

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.decorators import method_decorator
from django.utils.html import format_html, format_html_join
from django.views.decorators.cache import never_cache
from rest_framework_api_key.models import APIKey as PackageAPIKey

from .models import APIKey, AuditLogEntry, Team
from .reveal import reveal_stash, reveal_take
from .selectors import KeyStatus, api_key_status, api_key_status_q, teams_administered
from .services import (
    DEFAULT_ROTATION_GRACE,
    TEAM_FIELDS,
    KeyInputError,
    KeyStateError,
    api_key_clean_fields,
    api_key_create,
    api_key_revoke,
    api_key_rotate,
    api_key_rotation_check,
    api_key_update,
)

# The package registers an admin for its own concrete APIKey model, which Tollgate does not use.
if admin.site.is_registered(PackageAPIKey):
    admin.site.unregister(PackageAPIKey)

# Form field -> service argument (services name the expiry `expires`, the model `expiry_date`).
FORM_TO_SERVICE = {
    "name": "name",
    "owner": "owner",
    "notes": "notes",
    "rpm": "rpm",
    "tpm": "tpm",
    "max_concurrent": "max_concurrent",
    "allowed_models": "allowed_models",
    "hosted_tools": "hosted_tools",
    "expiry_date": "expires",
    "budget_usd": "budget_usd",
    "budget_period": "budget_period",
    "team": "team",
    "alert_thresholds": "alert_thresholds",
}
SERVICE_TO_FORM = {v: k for k, v in FORM_TO_SERVICE.items()}

STATUS_COLOURS = {
    KeyStatus.ACTIVE: "#1b7f3b",
    KeyStatus.EXPIRING_SOON: "#a65e00",
    KeyStatus.IN_GRACE: "#1f5fa8",
    KeyStatus.EXPIRED: "#666666",
    KeyStatus.REVOKED: "#b3261e",
}
MAX_GRACE_SECONDS = 366 * 86400


def _actor(request) -> str:
    return request.user.get_username()


def admin_teams(request):
    """The teams the request's user administers (None: not limited to teams), once per request."""
    if not hasattr(request, "_tollgate_teams"):
        request._tollgate_teams = teams_administered(request.user)
    return request._tollgate_teams


def team_admin_allows(request, team_id) -> bool | None:
    """For a team admin: whether an object of team `team_id` is theirs (None: the user is not a team admin, Django's
    model permissions decide)."""
    teams = admin_teams(request)
    if teams is None:
        return None
    return team_id is not None and teams.filter(pk=team_id).exists()


def _models_text(models) -> str:
    return ", ".join(models or ()) or "all"


class ModelListField(forms.CharField):
    """A list of model ids, edited as text: separated by commas or new lines."""

    widget = forms.Textarea(attrs={"rows": 2, "cols": 60})

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value) -> list[str]:
        text = super().to_python(value) or ""
        return [model.strip() for line in text.splitlines() for model in line.split(",") if model.strip()]

    def has_changed(self, initial, data) -> bool:
        return sorted(set(initial or ())) != sorted(set(self.to_python(data)))


class APIKeyForm(forms.ModelForm):
    """The editable fields of a key. Validation is the services' own (`api_key_clean_fields`)."""

    allowed_models = ModelListField(
        required=False, help_text="Model ids this key may use, separated by commas or new lines. Empty: every model."
    )
    hosted_tools = ModelListField(
        required=False,
        help_text="Hosted tool types this key may use (web_search, file_search, code_interpreter, image_generation, "
        "mcp, ...), separated by commas or new lines. Empty: every hosted tool. Function tools are always allowed.",
    )

    class Meta:
        model = APIKey
        fields = tuple(FORM_TO_SERVICE)

    def clean(self):
        cleaned = super().clean()
        values = {FORM_TO_SERVICE[f]: cleaned[f] for f in FORM_TO_SERVICE if f in cleaned and f in self.fields}
        try:
            api_key_clean_fields(**values)
        except KeyInputError as exc:
            self.add_error(SERVICE_TO_FORM.get(exc.field), str(exc))
        return cleaned


class StatusListFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [
            ("usable", "working (active, expiring soon, in grace)"),
            *((status, label) for status, label in KeyStatus.LABELS.items()),
        ]

    def queryset(self, request, queryset):
        if self.value() is None:
            return queryset
        try:
            return queryset.filter(api_key_status_q(self.value()))
        except ValueError:
            return queryset.none()


class RotateForm(forms.Form):
    grace = forms.IntegerField(
        label="Grace period (seconds)",
        min_value=0,
        max_value=MAX_GRACE_SECONDS,
        initial=int(DEFAULT_ROTATION_GRACE.total_seconds()),
        help_text="How long the old key keeps working after the rotation. 0 stops it at once.",
    )


@admin.register(APIKey)
class APIKeyAdmin(admin.ModelAdmin):
    form = APIKeyForm
    change_form_template = "admin/apikeys/apikey/change_form.html"
    list_display = (
        "name",
        "prefix",
        "team",
        "owner_notes",
        "status_badge",
        "rpm_column",
        "tpm_column",
        "concurrent_column",
        "models",
        "budget",
        "created_column",
        "expires_column",
        "last_used_column",
    )
    list_display_links = ("name", "prefix")
    search_fields = ("name", "prefix", "owner")
    list_filter = (StatusListFilter, "team")
    actions = ("rotate_keys", "revoke_keys")
    ordering = ("-created",)
    add_fieldsets = (
        (None, {"fields": ("name", "team", "owner", "notes")}),
        ("Limits", {"fields": ("rpm", "tpm", "max_concurrent", "allowed_models", "hosted_tools")}),
        ("Budget", {"fields": ("budget_usd", "budget_period", "alert_thresholds")}),
        ("Expiry", {"fields": ("expiry_date",)}),
    )
    change_fieldsets = (
        (None, {"fields": ("name", "prefix", "team", "status_badge", "owner", "notes")}),
        ("Limits", {"fields": ("rpm", "tpm", "max_concurrent", "allowed_models", "hosted_tools")}),
        ("Budget", {"fields": ("budget_usd", "budget_period", "alert_thresholds")}),
        (
            "Lifecycle",
            {
                "fields": (
                    "expiry_date",
                    "created",
                    "grace_until",
                    "revoked_at",
                    "last_used_at",
                    "predecessor_link",
                    "successor_link",
                )
            },
        ),
        ("Usage", {"fields": ("usage_panel",)}),
        ("Audit trail", {"fields": ("audit_trail",)}),
    )
    base_readonly_fields = (
        "prefix",
        "status_badge",
        "created",
        "grace_until",
        "revoked_at",
        "last_used_at",
        "predecessor_link",
        "successor_link",
        "usage_panel",
        "audit_trail",
    )

    # LIST COLUMNS

    @admin.display(description="owner / notes", ordering="owner")
    def owner_notes(self, obj):
        notes = (obj.notes or "").strip()
        if len(notes) > 60:
            notes = notes[:57] + "…"
        if not notes:
            return obj.owner or "-"
        return format_html("{}<br><small style='color:#666'>{}</small>", obj.owner or "", notes)

    @admin.display(description="status")
    def status_badge(self, obj):
        status = api_key_status(obj)
        until = obj.valid_until()
        return format_html(
            '<span class="key-status key-status-{}" title="{}" style="display:inline-block;padding:1px 8px;'
            'border-radius:9px;color:#fff;background:{};font-size:11px;white-space:nowrap">{}</span>',
            status,
            f"works until {_short_time(until)} UTC" if until and status in KeyStatus.USABLE else "",
            STATUS_COLOURS[status],
            KeyStatus.LABELS[status],
        )

    @admin.display(description="rpm", ordering="rpm")
    def rpm_column(self, obj):
        return obj.rpm if obj.rpm is not None else "-"

    @admin.display(description="tpm", ordering="tpm")
    def tpm_column(self, obj):
        return obj.tpm if obj.tpm is not None else "-"

    @admin.display(description="concurrent", ordering="max_concurrent")
    def concurrent_column(self, obj):
        return obj.max_concurrent if obj.max_concurrent is not None else "-"

    @admin.display(description="created", ordering="created")
    def created_column(self, obj):
        return _short_time(obj.created)

    @admin.display(description="expires", ordering="expiry_date")
    def expires_column(self, obj):
        return _short_time(obj.expiry_date)

    @admin.display(description="last used", ordering="last_used_at")
    def last_used_column(self, obj):
        return _short_time(obj.last_used_at, empty="never")

    @admin.display(description="models")
    def models(self, obj):
        return _models_text(obj.allowed_models)

    @admin.display(description="budget", ordering="budget_usd")
    def budget(self, obj):
        if obj.budget_usd is None:
            return "-"
        return f"${obj.budget_usd.normalize():f} / {obj.budget_period}"

    # CHANGE PAGE FIELDS

    @admin.display(description="predecessor")
    def predecessor_link(self, obj):
        return self._key_link(obj.predecessor) if obj.predecessor_id else "-"

    @admin.display(description="successor")
    def successor_link(self, obj):
        successor = APIKey.objects.filter(predecessor_id=obj.pk).first()
        return self._key_link(successor) if successor else "-"

    @admin.display(description="usage (last 30 days)")
    def usage_panel(self, obj):
        from usage.dashboard import key_usage_panel

        return key_usage_panel(obj) or "-"

    @admin.display(description="audit trail")
    def audit_trail(self, obj):
        entries = AuditLogEntry.objects.filter(key_prefix=obj.prefix)[:50]
        if not entries:
            return "-"
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            (
                (e.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S"), e.actor, e.action, _changes(e))
                for e in entries
            ),
        )
        return format_html(
            "<table><thead><tr><th>when (UTC)</th><th>actor</th><th>action</th><th>changes</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            rows,
        )

    def _key_link(self, key):
        url = reverse("admin:apikeys_apikey_change", args=[key.pk])
        return format_html('<a href="{}">{} ({})</a>', url, key.prefix, key.name)

    # FORM LAYOUT AND PERMISSIONS
    # A team admin (a staff user in some team's `admins`) sees, creates, edits, rotates and revokes only their
    # teams' keys, whatever their model permissions; superusers see everything; other staff keep Django's model
    # permissions over every key.

    def get_queryset(self, request):
        keys = super().get_queryset(request).select_related("team")
        teams = admin_teams(request)
        return keys if teams is None else keys.filter(team__in=teams)

    def has_module_permission(self, request):
        return admin_teams(request) is not None or super().has_module_permission(request)

    def has_view_permission(self, request, obj=None):
        if admin_teams(request) is None:
            return super().has_view_permission(request, obj)
        return obj is None or bool(team_admin_allows(request, obj.team_id))

    def has_change_permission(self, request, obj=None):
        if admin_teams(request) is None:
            return super().has_change_permission(request, obj)
        return obj is None or bool(team_admin_allows(request, obj.team_id))

    def has_add_permission(self, request):
        return admin_teams(request) is not None or super().has_add_permission(request)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        teams = admin_teams(request)
        if db_field.name == "team" and teams is not None:
            kwargs["queryset"] = teams
            kwargs["required"] = True
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_fieldsets(self, request, obj=None):
        return self.change_fieldsets if obj is not None else self.add_fieldsets

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        if obj.revoked:
            # A revoked key is final: only what describes it can still change (services.EDITABLE_WHEN_REVOKED).
            editable = {"owner", "notes"}
            return (*self.base_readonly_fields, *(f for f in FORM_TO_SERVICE if f not in editable))
        return self.base_readonly_fields

    def has_delete_permission(self, request, obj=None):
        # Keys are revoked, never deleted: usage records and the audit trail keep pointing at them.
        return False

    # WRITES: every one is a service call

    def save_model(self, request, obj, form, change):
        try:
            if change:
                values = {FORM_TO_SERVICE[f]: form.cleaned_data[f] for f in form.changed_data if f in FORM_TO_SERVICE}
                saved = api_key_update(api_key=obj, actor=_actor(request), **values)
            else:
                values = {FORM_TO_SERVICE[f]: form.cleaned_data[f] for f in FORM_TO_SERVICE if f in form.cleaned_data}
                saved, raw = api_key_create(actor=_actor(request), **values)
                request._tollgate_reveal = [
                    {"raw": raw, "prefix": saved.prefix, "name": saved.name, "event": "created"}
                ]
        except (KeyStateError, KeyInputError) as exc:
            # Only a race gets here (the form validated with the same rules): say so and change nothing.
            request._tollgate_error = str(exc)
            return
        for field in APIKey._meta.concrete_fields:
            setattr(obj, field.attname, getattr(saved, field.attname))
        obj._state.adding = False
        obj._state.db = saved._state.db

    def log_addition(self, request, obj, message):
        if not getattr(request, "_tollgate_error", None):
            super().log_addition(request, obj, message)

    def log_change(self, request, obj, message):
        if not getattr(request, "_tollgate_error", None):
            super().log_change(request, obj, message)

    def response_add(self, request, obj, post_url_continue=None):
        if getattr(request, "_tollgate_error", None):
            self.message_user(request, request._tollgate_error, messages.ERROR)
            return HttpResponseRedirect(reverse("admin:apikeys_apikey_changelist"))
        return self._redirect_to_reveal(request, request._tollgate_reveal)

    def response_change(self, request, obj):
        if getattr(request, "_tollgate_error", None):
            self.message_user(request, request._tollgate_error, messages.ERROR)
            return HttpResponseRedirect(request.path)
        return super().response_change(request, obj)

    def _redirect_to_reveal(self, request, items):
        return HttpResponseRedirect(f"{reverse('admin:apikeys_apikey_reveal')}?{reveal_stash(request, items)}")

    # ACTIONS: both lead to a confirmation page

    @admin.action(description="Rotate selected keys…", permissions=["change"])
    def rotate_keys(self, request, queryset):
        return self._to_confirmation(request, "admin:apikeys_apikey_rotate", queryset)

    @admin.action(description="Revoke selected keys…", permissions=["change"])
    def revoke_keys(self, request, queryset):
        return self._to_confirmation(request, "admin:apikeys_apikey_revoke", queryset)

    def _to_confirmation(self, request, url_name, queryset):
        prefixes = ",".join(queryset.values_list("prefix", flat=True))
        return HttpResponseRedirect(f"{reverse(url_name)}?{urlencode({'keys': prefixes})}")

    def get_urls(self):
        own = [
            path("reveal/", self.admin_site.admin_view(self.reveal_view), name="apikeys_apikey_reveal"),
            path("rotate/", self.admin_site.admin_view(self.rotate_view), name="apikeys_apikey_rotate"),
            path("revoke/", self.admin_site.admin_view(self.revoke_view), name="apikeys_apikey_revoke"),
        ]
        return own + super().get_urls()

    def _selected_keys(self, request):
        source = request.POST if request.method == "POST" else request.GET
        prefixes = [p for p in source.get("keys", "").split(",") if p]
        keys = list(self.get_queryset(request).filter(prefix__in=prefixes).order_by("created"))
        for key in keys:
            key.status_label = KeyStatus.LABELS[api_key_status(key)]
        return keys

    def _page(self, request, template, **context):
        return TemplateResponse(
            request,
            template,
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": context.pop("title"),
                **context,
            },
        )

    def _action_page(self, request, action: str, *, keys, eligible, refused, **context):
        """The rotate/revoke page for the keys that can take the step; back to the list (saying why) if none can."""
        if not eligible:
            for _key, reason in refused:
                self.message_user(request, reason, messages.ERROR)
            if not keys:
                self.message_user(request, "No such key.", messages.ERROR)
            return HttpResponseRedirect(reverse("admin:apikeys_apikey_changelist"))
        return self._page(
            request,
            f"admin/apikeys/apikey/{action}.html",
            title=f"{action.capitalize()} API key{'s' if len(eligible) > 1 else ''}",
            keys=eligible,
            refused=refused,
            prefixes=",".join(k.prefix for k in eligible),
            **context,
        )

    def rotate_view(self, request):
        """GET: the keys and a grace-period form. POST: rotate each key, then show the new keys once."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        keys = self._selected_keys(request)
        rotatable, refused = [], []
        for key in keys:
            try:
                api_key_rotation_check(api_key=key, grace=0)
                rotatable.append(key)
            except (KeyStateError, KeyInputError) as exc:
                refused.append((key, str(exc)))
        form = RotateForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and rotatable and form.is_valid():
            grace = timedelta(seconds=form.cleaned_data["grace"])
            items = []
            for key in rotatable:
                try:
                    successor, raw = api_key_rotate(api_key=key, grace=grace, actor=_actor(request))
                except (KeyStateError, KeyInputError) as exc:
                    self.message_user(request, str(exc), messages.ERROR)
                    continue
                items.append(
                    {
                        "raw": raw,
                        "prefix": successor.prefix,
                        "name": successor.name,
                        "event": "rotated",
                        "old_prefix": key.prefix,
                        "old_valid_until": successor.predecessor.valid_until()
                        .astimezone(UTC)
                        .strftime("%Y-%m-%d %H:%M:%S UTC"),
                    }
                )
            if items:
                return self._redirect_to_reveal(request, items)
            return HttpResponseRedirect(reverse("admin:apikeys_apikey_changelist"))
        return self._action_page(request, "rotate", keys=keys, eligible=rotatable, refused=refused, form=form)

    def revoke_view(self, request):
        """GET: a confirmation page. POST: revoke each key."""
        if not self.has_change_permission(request):
            raise PermissionDenied
        keys = self._selected_keys(request)
        revocable = [k for k in keys if not k.revoked]
        refused = [(k, f"Key {k.prefix} is already revoked.") for k in keys if k.revoked]
        if request.method == "POST" and revocable:
            done = []
            for key in revocable:
                try:
                    api_key_revoke(api_key=key, actor=_actor(request))
                    done.append(key.prefix)
                except KeyStateError as exc:
                    self.message_user(request, str(exc), messages.ERROR)
            if done:
                message = f"Revoked {', '.join(done)}. Every instance refuses revoked keys within a second."
                self.message_user(request, message, messages.SUCCESS)
            return HttpResponseRedirect(reverse("admin:apikeys_apikey_changelist"))
        return self._action_page(request, "revoke", keys=keys, eligible=revocable, refused=refused)

    @method_decorator(never_cache)
    def reveal_view(self, request):
        """The raw keys just created or rotated, once. Not cached; a reload shows that they are gone."""
        items = reveal_take(request)
        response = self._page(
            request,
            "admin/apikeys/apikey/reveal.html",
            title="Your new API key" if items and len(items) == 1 else "Your new API keys",
            items=items or [],
            gone=items is None,
        )
        if items is None:
            response.status_code = 410
        response["Referrer-Policy"] = "no-referrer"
        return response


def _short_time(moment, empty: str = "-") -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if moment else empty


def _audit_value(value) -> str:
    if value is None or value == "":
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or "[]"
    return str(value)


def _changes(entry: AuditLogEntry) -> str:
    """An audit entry's `{field: [old, new]}` as one readable line."""
    parts = []
    for field, value in (entry.changes or {}).items():
        if isinstance(value, list) and len(value) == 2:
            parts.append(f"{field}: {_audit_value(value[0])} → {_audit_value(value[1])}")
        else:
            parts.append(f"{field}: {_audit_value(value)}")
    return "; ".join(parts)


@admin.register(AuditLogEntry)
class AuditLogEntryAdmin(admin.ModelAdmin):
    """The audit trail: append-only, so nobody can add, change or delete an entry here."""

    list_display = ("when", "actor", "action", "key_prefix", "key_name", "what_changed")
    list_filter = ("action",)
    search_fields = ("key_prefix", "key_name", "actor")
    date_hierarchy = "created_at"
    fields = ("created_at", "actor", "action", "key_prefix", "key_name", "what_changed")
    readonly_fields = fields

    @admin.display(description="when (UTC)", ordering="created_at")
    def when(self, obj):
        return obj.created_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")

    @admin.display(description="what changed")
    def what_changed(self, obj):
        return _changes(obj)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    """Teams: superusers (and staff with the team permissions) create and edit them, through the services; their
    admins are chosen here."""

    list_display = ("name", "rpm", "tpm", "max_concurrent", "budget", "key_count")
    search_fields = ("name",)
    filter_horizontal = ("admins",)
    fields = (*TEAM_FIELDS, "admins")

    @admin.display(description="budget")
    def budget(self, obj):
        return f"${obj.budget_usd.normalize():f} / {obj.budget_period}" if obj.budget_usd is not None else "-"

    @admin.display(description="keys")
    def key_count(self, obj):
        return obj.keys.count()

    def has_delete_permission(self, request, obj=None):
        return False  # keys point at it; empty its key list instead

    def save_model(self, request, obj, form, change):
        from .services import team_create, team_update

        values = {f: form.cleaned_data[f] for f in TEAM_FIELDS if f in form.cleaned_data}
        try:
            if change:
                changed = {f: v for f, v in values.items() if f in form.changed_data}
                saved = team_update(team=Team.objects.get(pk=obj.pk), actor=_actor(request), **changed)
            else:
                saved = team_create(actor=_actor(request), **values)
        except KeyInputError as exc:
            raise PermissionDenied(str(exc)) from None
        obj.pk = saved.pk
        obj.refresh_from_db()
