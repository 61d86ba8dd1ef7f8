"""Team admins in the Django admin, over HTTP (Django's test client): a staff user who administers a team sees,
creates, edits, rotates and revokes only that team's keys, and sees only its usage and dashboard; another team's
key is refused on every page; a superuser sees everything."""

from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from apikeys.models import APIKey
from apikeys.services import api_key_create, team_create
from usage.models import UsageRecord
from usage.rollups import rollup_rebuild

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:apikeys_apikey_changelist")
ADD = reverse("admin:apikeys_apikey_add")
ROTATE = reverse("admin:apikeys_apikey_rotate")
REVOKE = reverse("admin:apikeys_apikey_revoke")
USAGE = reverse("admin:usage_usagerecord_changelist")
DASHBOARD = reverse("admin:usage_usagerecord_dashboard")
ADD_FORM = {
    "name": "made-by-lead",
    "owner": "",
    "notes": "",
    "rpm": "",
    "tpm": "",
    "max_concurrent": "",
    "allowed_models": "",
    "expiry_date_0": "",
    "expiry_date_1": "",
    "budget_usd": "",
    "budget_period": "month",
    "alert_thresholds": "[50, 80, 100]",
}


@pytest.fixture
def world():
    ours = team_create(name="research", actor="test")
    theirs = team_create(name="payments", actor="test")
    lead = get_user_model().objects.create_user("lead", "lead@example.com", "pw", is_staff=True)
    ours.admins.add(lead)
    mine, _ = api_key_create(name="research-bot", actor="test", team=ours)
    other, _ = api_key_create(name="payments-bot", actor="test", team=theirs)
    loose, _ = api_key_create(name="no-team-bot", actor="test")
    for key in (mine, other, loose):
        UsageRecord.objects.create(
            request_id=f"req_{key.prefix}",
            api_key=key,
            key_prefix=key.prefix,
            key_name=key.name,
            model="gpt-4o-mini",
            status=200,
            prompt_tokens=10,
            completion_tokens=5,
            total_tokens=15,
            cost_usd=Decimal("0.01"),
            created_at=timezone.now(),
        )
    rollup_rebuild()  # records made without the writer: their rollups, as a backfill makes them
    client = Client()
    client.force_login(lead)
    return {"ours": ours, "theirs": theirs, "mine": mine, "other": other, "loose": loose, "lead": client}


def test_a_team_admin_lists_only_their_teams_keys(world):
    page = world["lead"].get(CHANGELIST)
    assert page.status_code == 200
    html = page.content.decode()
    assert world["mine"].prefix in html
    assert world["other"].prefix not in html and world["loose"].prefix not in html


def test_another_teams_key_is_refused_on_every_page(world):
    lead, other = world["lead"], world["other"]
    change = world["lead"].get(reverse("admin:apikeys_apikey_change", args=[other.pk]))
    assert change.status_code == 302 and other.prefix not in change.content.decode()
    post = lead.post(reverse("admin:apikeys_apikey_change", args=[other.pk]), {**ADD_FORM, "name": "hijacked"})
    assert post.status_code in (302, 403)
    rotate = lead.post(ROTATE, {"keys": other.prefix, "grace": "0"}, follow=True)
    assert "No such key." in rotate.content.decode()
    revoke = lead.post(REVOKE, {"keys": other.prefix}, follow=True)
    assert "No such key." in revoke.content.decode()
    action = lead.post(CHANGELIST, {"action": "revoke_keys", "_selected_action": [other.prefix], "index": "0"})
    assert other.prefix not in action.get("Location", "")
    other.refresh_from_db()
    assert other.name == "payments-bot" and not other.revoked and not APIKey.objects.filter(predecessor=other).exists()
    assert lead.get(reverse("admin:usage_usagerecord_key", args=[other.prefix])).status_code == 404


def test_a_team_admin_creates_edits_rotates_and_revokes_their_own_keys(world):
    lead, ours, theirs, mine = world["lead"], world["ours"], world["theirs"], world["mine"]
    refused = lead.post(ADD, {**ADD_FORM, "team": str(theirs.pk)})
    assert refused.status_code == 200 and not APIKey.objects.filter(name="made-by-lead").exists()
    assert lead.post(ADD, {**ADD_FORM}).status_code == 200  # a team is required of a team admin
    assert not APIKey.objects.filter(name="made-by-lead").exists()
    created = lead.post(ADD, {**ADD_FORM, "team": str(ours.pk)})
    assert created.status_code == 302, created.content.decode()[:2000]
    assert APIKey.objects.get(name="made-by-lead").team == ours

    form = {**ADD_FORM, "name": mine.name, "team": str(ours.pk), "rpm": "42"}
    edited = lead.post(reverse("admin:apikeys_apikey_change", args=[mine.pk]), form)
    assert edited.status_code == 302
    mine.refresh_from_db()
    assert mine.rpm == 42

    assert lead.post(ROTATE, {"keys": mine.prefix, "grace": "0"}).status_code == 302
    successor = APIKey.objects.get(predecessor=mine)
    assert successor.team == ours
    lead.post(REVOKE, {"keys": successor.prefix})
    successor.refresh_from_db()
    assert successor.revoked


def test_a_team_admin_sees_only_their_teams_usage_and_dashboard(world):
    lead = world["lead"]
    records = lead.get(USAGE).content.decode()
    assert world["mine"].prefix in records and world["other"].prefix not in records
    dashboard = lead.get(DASHBOARD)
    assert dashboard.status_code == 200
    html = dashboard.content.decode()
    assert "research-bot" in html and "payments-bot" not in html and "no-team-bot" not in html
    assert lead.get(reverse("admin:usage_usagerecord_key", args=[world["mine"].prefix])).status_code == 200


def test_a_superuser_sees_everything(world):
    root = get_user_model().objects.create_superuser("root", "root@example.com", "pw")
    client = Client()
    client.force_login(root)
    html = client.get(CHANGELIST).content.decode()
    assert all(world[name].prefix in html for name in ("mine", "other", "loose"))
    dashboard = client.get(DASHBOARD).content.decode()
    assert "payments-bot" in dashboard and "research-bot" in dashboard
    teams = client.get(reverse("admin:apikeys_team_changelist")).content.decode()
    assert "research" in teams and "payments" in teams


def test_staff_without_a_team_cannot_reach_keys_without_permissions(world):
    staff = get_user_model().objects.create_user("intern", "intern@example.com", "pw", is_staff=True)
    client = Client()
    client.force_login(staff)
    assert client.get(CHANGELIST).status_code == 403
    assert client.get(DASHBOARD).status_code == 403


def test_the_login_page_still_renders_for_anonymous_visitors(world):
    page = Client().get(reverse("admin:login"))
    assert page.status_code == 200 and b"csrfmiddlewaretoken" in page.content
