"""The key admin through Django's test client: every write goes through the services, the raw key is shown once,
no page shows a hash, the audit trail is read-only. (tests/test_admin_browser.py drives the same pages in a real
browser against a live server.)
"""

import re
from datetime import timedelta

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apikeys.models import APIKey, AuditLogEntry
from apikeys.services import api_key_create, api_key_revoke, api_key_rotate

pytestmark = pytest.mark.django_db

ADD = reverse("admin:apikeys_apikey_add")
CHANGELIST = reverse("admin:apikeys_apikey_changelist")
ROTATE = reverse("admin:apikeys_apikey_rotate")
REVOKE = reverse("admin:apikeys_apikey_revoke")

ADD_FORM = {
    "name": "web-app",
    "owner": "team-web",
    "notes": "",
    "rpm": "60",
    "tpm": "",
    "max_concurrent": "",
    "allowed_models": "gpt-4o-mini, gpt-4o",
    "expiry_date_0": "",
    "expiry_date_1": "",
    "budget_usd": "",
    "budget_period": "month",
}


@pytest.fixture
def admin_client():
    """A logged-in superuser (conftest's `client` is the openai SDK, so pytest-django's fixture cannot be used)."""
    user = get_user_model().objects.create_superuser("root", "root@example.com", "pw-for-tests-only")
    client = Client()
    client.force_login(user)
    return client


def raw_keys_in(html: str) -> list[str]:
    return re.findall(r'value="([A-Za-z0-9]{8}\.[A-Za-z0-9]{32})"[^>]*data-raw-key', html)


def assert_no_hash(html: str) -> None:
    assert "sha512$$" not in html
    for hashed in APIKey.objects.values_list("hashed_key", flat=True):
        assert hashed.split("$$")[1] not in html


def change_url(key) -> str:
    return reverse("admin:apikeys_apikey_change", args=[key.pk])


def test_the_package_admin_is_replaced_by_ours():
    from django.contrib import admin
    from rest_framework_api_key.models import APIKey as PackageAPIKey

    assert not admin.site.is_registered(PackageAPIKey)
    assert admin.site.is_registered(APIKey)


def test_add_shows_the_raw_key_once_on_an_uncached_page(admin_client):
    response = admin_client.post(ADD, ADD_FORM)
    assert response.status_code == 302
    reveal_url = response["Location"]
    assert reveal_url.startswith(reverse("admin:apikeys_apikey_reveal"))
    key = APIKey.objects.get(name="web-app")
    assert (key.rpm, key.allowed_models, key.owner) == (60, ["gpt-4o", "gpt-4o-mini"], "team-web")
    # The raw key is neither in the redirect URL nor in the session store.
    page = admin_client.get(reveal_url)
    assert page.status_code == 200
    assert "no-store" in page["Cache-Control"]
    (raw,) = raw_keys_in(page.content.decode())
    assert key.is_valid(raw)
    assert raw not in reveal_url and raw.partition(".")[2] not in reveal_url
    for session in Session.objects.all():
        assert raw.partition(".")[2] not in str(session.get_decoded())
    assert_no_hash(page.content.decode())
    again = admin_client.get(reveal_url)
    assert again.status_code == 410
    assert raw_keys_in(again.content.decode()) == [] and raw not in again.content.decode()
    entry = AuditLogEntry.objects.get(key_prefix=key.prefix)
    assert (entry.actor, entry.action) == ("root", "create")


def test_a_reveal_link_in_another_session_shows_nothing(admin_client):
    response = admin_client.post(ADD, ADD_FORM)
    other = get_user_model().objects.create_superuser("other", "o@example.com", "pw-for-tests-only")
    thief = Client()
    thief.force_login(other)
    page = thief.get(response["Location"])
    assert page.status_code == 410 and raw_keys_in(page.content.decode()) == []


def test_add_refuses_what_the_service_refuses(admin_client):
    response = admin_client.post(ADD, {**ADD_FORM, "name": "   ", "budget_usd": "-3"})
    assert response.status_code == 200
    assert not APIKey.objects.exists() and not AuditLogEntry.objects.exists()
    errors = response.context["adminform"].form.errors
    assert "name" in errors and "budget_usd" in errors


def test_the_list_shows_status_limits_and_no_hash(admin_client):
    key, raw = api_key_create(name="listed", actor="t", rpm=11, tpm=2222, allowed_models=["gpt-4o"], owner="zed-team")
    api_key_create(name="soon", actor="t", expires=timezone.now() + timedelta(days=1))
    gone, _ = api_key_create(name="gone", actor="t")
    api_key_revoke(api_key=gone, actor="t")
    rotated, _ = api_key_create(name="rotated", actor="t")
    api_key_rotate(api_key=rotated, grace=600, actor="t")
    page = admin_client.get(CHANGELIST).content.decode()
    assert_no_hash(page)
    assert raw not in page
    for status in ("key-status-active", "key-status-expiring_soon", "key-status-revoked", "key-status-in_grace"):
        assert status in page
    assert "2222" in page and "gpt-4o" in page
    assert f'value="{key.prefix}"' in page  # the action checkbox carries the prefix

    def listed(**query):
        return sorted(k.name for k in admin_client.get(CHANGELIST, query).context["cl"].result_list)

    assert listed(status="revoked") == ["gone"]
    assert listed(status="in_grace") == ["rotated"]
    assert listed(status="usable") == ["listed", "rotated", "rotated", "soon"]
    assert listed(q=key.prefix) == ["listed"]
    assert listed(q="zed-team") == ["listed"]  # owner


def test_edit_goes_through_the_service_with_old_and_new_values(admin_client):
    key, _ = api_key_create(name="edit-me", actor="t", rpm=5, allowed_models=["a"])
    page = admin_client.get(change_url(key))
    assert page.status_code == 200
    assert_no_hash(page.content.decode())
    form = {**ADD_FORM, "name": "edit-me", "owner": "", "rpm": "50", "allowed_models": "a\nb"}
    form.update({"expiry_date_0": "2031-01-01", "expiry_date_1": "00:00:00"})
    response = admin_client.post(change_url(key), form)
    assert response.status_code == 302, response.content.decode()[:2000]
    key.refresh_from_db()
    assert (key.rpm, key.allowed_models, key.expiry_date.year) == (50, ["a", "b"], 2031)
    entry = AuditLogEntry.objects.get(key_prefix=key.prefix, action="update")
    assert entry.actor == "root"
    assert entry.changes["rpm"] == [5, 50] and entry.changes["allowed_models"] == [["a"], ["a", "b"]]
    assert set(entry.changes) == {"rpm", "allowed_models", "expires"}
    # Django's own admin log points at the prefix, not at a hash.
    assert LogEntry.objects.get(object_repr="edit-me").object_id == key.prefix


def test_rotate_from_the_admin_shows_the_new_key_once_and_keeps_the_old_one_in_grace(admin_client):
    key, _ = api_key_create(name="rot", actor="t", rpm=3, allowed_models=["m"])
    form = admin_client.get(ROTATE, {"keys": key.prefix})
    assert form.status_code == 200 and b'name="grace"' in form.content
    response = admin_client.post(ROTATE, {"keys": key.prefix, "grace": "90"})
    assert response.status_code == 302
    page = admin_client.get(response["Location"])
    (raw,) = raw_keys_in(page.content.decode())
    new = APIKey.objects.get(prefix=raw.partition(".")[0])
    assert new.is_valid(raw) and new.predecessor_id == key.pk and (new.rpm, new.allowed_models) == (3, ["m"])
    key.refresh_from_db()
    assert timedelta(seconds=80) < key.grace_until - timezone.now() <= timedelta(seconds=90)
    assert AuditLogEntry.objects.get(key_prefix=key.prefix, action="rotate").actor == "root"
    assert admin_client.get(response["Location"]).status_code == 410


def test_rotate_action_from_the_list_leads_to_the_grace_form(admin_client):
    key, _ = api_key_create(name="act", actor="t")
    response = admin_client.post(CHANGELIST, {"action": "rotate_keys", "_selected_action": [key.prefix], "index": "0"})
    assert response.status_code == 302 and response["Location"].startswith(ROTATE)
    assert admin_client.get(response["Location"]).status_code == 200


@pytest.mark.parametrize("grace", ["-1", "abc", ""])
def test_rotate_refuses_a_bad_grace_and_changes_nothing(admin_client, grace):
    key, _ = api_key_create(name="rot", actor="t")
    response = admin_client.post(ROTATE, {"keys": key.prefix, "grace": grace})
    assert response.status_code == 200 and response.context["form"].errors
    assert APIKey.objects.count() == 1 and AuditLogEntry.objects.count() == 1


def test_rotating_a_revoked_key_is_an_error_and_changes_nothing(admin_client):
    key, _ = api_key_create(name="rev", actor="t")
    api_key_revoke(api_key=key, actor="t")
    before = (APIKey.objects.count(), AuditLogEntry.objects.count())
    response = admin_client.post(ROTATE, {"keys": key.prefix, "grace": "60"}, follow=True)
    assert "revoked" in " ".join(str(m) for m in response.context["messages"])
    assert (APIKey.objects.count(), AuditLogEntry.objects.count()) == before


def test_revoke_needs_confirmation(admin_client):
    key, _ = api_key_create(name="rev", actor="t")
    confirm = admin_client.get(REVOKE, {"keys": key.prefix})
    assert confirm.status_code == 200 and b"Yes, revoke" in confirm.content
    key.refresh_from_db()
    assert not key.revoked
    admin_client.post(REVOKE, {"keys": key.prefix})
    key.refresh_from_db()
    assert key.revoked
    assert AuditLogEntry.objects.get(key_prefix=key.prefix, action="revoke").actor == "root"
    page = admin_client.get(change_url(key)).content.decode()
    assert "Rotate…" not in page and "Revoke…" not in page


def test_keys_cannot_be_deleted_and_audit_entries_are_read_only(admin_client):
    key, _ = api_key_create(name="keep", actor="t")
    assert admin_client.get(reverse("admin:apikeys_apikey_delete", args=[key.pk])).status_code == 403
    entry = AuditLogEntry.objects.get()
    assert admin_client.get(reverse("admin:apikeys_auditlogentry_add")).status_code == 403
    view = admin_client.get(reverse("admin:apikeys_auditlogentry_change", args=[entry.pk]))
    assert view.status_code == 200 and b'type="submit"' not in view.content.split(b'id="content-main"')[1]
    assert admin_client.post(reverse("admin:apikeys_auditlogentry_change", args=[entry.pk]), {}).status_code == 403
    assert admin_client.get(reverse("admin:apikeys_auditlogentry_delete", args=[entry.pk])).status_code == 403
    listing = admin_client.get(reverse("admin:apikeys_auditlogentry_changelist")).content.decode()
    assert key.prefix in listing and "delete_selected" not in listing


@pytest.mark.parametrize("url", [ROTATE, REVOKE])
def test_an_unknown_prefix_is_an_error_message(admin_client, url):
    response = admin_client.post(url, {"keys": "nosuchpx", "grace": "60"}, follow=True)
    assert "No such key" in " ".join(str(m) for m in response.context["messages"])
    assert not AuditLogEntry.objects.exists()


def test_a_revoked_keys_page_edits_only_notes_and_owner(admin_client):
    key, _ = api_key_create(name="done", actor="t", rpm=5)
    api_key_revoke(api_key=key, actor="t")
    form = admin_client.get(change_url(key)).context["adminform"].form
    assert set(form.fields) == {"owner", "notes"}
    response = admin_client.post(change_url(key), {"owner": "security", "notes": "leaked", "rpm": "500"})
    assert response.status_code == 302
    key.refresh_from_db()
    assert (key.owner, key.notes, key.rpm) == ("security", "leaked", 5)
    entry = AuditLogEntry.objects.get(key_prefix=key.prefix, action="update")
    assert entry.changes == {"owner": ["", "security"], "notes": ["", "leaked"]}
