"""The key commands: rotate_api_key (single and scheduled), list_api_keys, and create/revoke details.

Most tests call the commands in process (`call_command`); the ones about exit codes and what lands on stdout
versus stderr run `manage.py` as a real subprocess against the test database.
"""

import json
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from apikeys.models import APIKey, AuditLogEntry
from apikeys.services import api_key_create, api_key_revoke, api_key_rotate
from tests.conftest import manage_py


def run(*args) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command(*args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


manage = manage_py


def make(name="cmd", **fields):
    return api_key_create(name=name, actor="test", **fields)


def state():
    return list(APIKey.objects.order_by("prefix").values()), AuditLogEntry.objects.count()


def parse_utc(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1]).replace(tzinfo=UTC)


# ROTATE: ONE KEY


@pytest.mark.django_db
def test_rotate_prints_a_json_line_then_the_raw_key_as_the_last_line():
    old, old_raw = make(name="svc-a", rpm=9, allowed_models=["gpt-4o-mini"], owner="ops")
    out, err = run("rotate_api_key", old.prefix, "--grace", "120")
    lines = out.splitlines()
    assert len(lines) == 2
    line = json.loads(lines[0])
    new_raw = lines[-1]
    assert set(line) == {"name", "old_prefix", "new_key", "old_key_valid_until"}
    assert (line["name"], line["old_prefix"], line["new_key"]) == ("svc-a", old.prefix, new_raw)
    valid_until = parse_utc(line["old_key_valid_until"])
    assert timedelta(seconds=110) < valid_until - timezone.now() <= timedelta(seconds=120)
    new = APIKey.objects.get(prefix=new_raw.partition(".")[0])
    assert new.is_valid(new_raw) and new.predecessor_id == old.pk
    assert (new.rpm, new.allowed_models, new.owner) == (9, ["gpt-4o-mini"], "ops")
    assert old_raw not in out + err and new_raw not in err
    assert "Store the new key now" in err
    assert AuditLogEntry.objects.get(key_prefix=old.prefix, action="rotate").actor == "command:rotate_api_key"


@pytest.mark.django_db
def test_rotate_accepts_the_raw_key_and_grace_zero_stops_the_old_key_at_once():
    old, raw = make()
    out, _ = run("rotate_api_key", raw, "--grace", "0")
    old.refresh_from_db()
    assert not old.is_usable()
    assert parse_utc(json.loads(out.splitlines()[0])["old_key_valid_until"]) <= timezone.now()


@pytest.mark.django_db
def test_rotate_default_grace_is_one_hour_and_durations_are_accepted():
    first, _ = make("first")
    second, _ = make("second")
    run("rotate_api_key", first.prefix)
    run("rotate_api_key", second.prefix, "--grace", "2h")
    first.refresh_from_db()
    second.refresh_from_db()
    assert timedelta(minutes=59) < first.grace_until - timezone.now() <= timedelta(hours=1)
    assert timedelta(minutes=119) < second.grace_until - timezone.now() <= timedelta(hours=2)


@pytest.mark.django_db
def test_rotate_dry_run_for_one_key_changes_nothing():
    key, _ = make()
    before = state()
    out, err = run("rotate_api_key", key.prefix, "--grace", "60", "--dry-run")
    assert state() == before
    line = json.loads(out.strip())
    assert line["new_key"] is None and line["old_prefix"] == key.prefix
    assert "would rotate" in err


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", ["nosuchpx"], "No API key matches"),
        ("none", ["{prefix}.wrongsecretwrongsecretwrongsecre"], "No API key matches"),
        ("revoked", ["{prefix}"], "revoked"),
        ("rotated", ["{prefix}"], "already rotated"),
        ("expired", ["{prefix}"], "expired"),
        ("none", ["{prefix}", "--grace", "-5"], "must not be negative"),
        ("none", ["{prefix}", "--grace", "soon"], "grace period"),
        ("none", ["{prefix}", "--older-than", "1d"], "not both"),
        ("none", [], "either a key"),
    ],
)
def test_rotate_refusals_change_nothing(setup, args, message):
    key, _ = make(expires=timezone.now() - timedelta(seconds=1) if setup == "expired" else None)
    if setup == "revoked":
        api_key_revoke(api_key=key, actor="t")
    elif setup == "rotated":
        api_key_rotate(api_key=key, grace=60, actor="t")
    before = state()
    with pytest.raises(CommandError, match=message):
        run("rotate_api_key", *[a.format(prefix=key.prefix) for a in args])
    assert state() == before


# ROTATE: SCHEDULED


def age(*keys, days: int) -> None:
    APIKey.objects.filter(pk__in=[k.pk for k in keys]).update(created=timezone.now() - timedelta(days=days))


@pytest.mark.django_db
def test_older_than_rotates_every_usable_old_key_with_one_json_line_each():
    old_a, _ = make("old-a")
    old_b, _ = make("old-b")
    young, _ = make("young")
    revoked, _ = make("old-revoked")
    api_key_revoke(api_key=revoked, actor="t")
    age(old_a, old_b, revoked, days=91)
    out, err = run("rotate_api_key", "--older-than", "90d", "--grace", "300")
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(line["old_prefix"] for line in lines) == sorted([old_a.prefix, old_b.prefix])
    for line in lines:
        new = APIKey.objects.get(prefix=line["new_key"].partition(".")[0])
        assert new.is_valid(line["new_key"]) and new.predecessor.prefix == line["old_prefix"]
        assert new.name == line["name"]
        assert timedelta(seconds=290) < parse_utc(line["old_key_valid_until"]) - timezone.now()
    young.refresh_from_db()
    assert young.grace_until is None
    assert "Rotated 2 of 2" in err
    # The successors are young and the old keys have successors: a second run finds nothing.
    before = state()
    out, err = run("rotate_api_key", "--older-than", "90d")
    assert out == "" and "No usable key" in err and state() == before


@pytest.mark.django_db
@pytest.mark.parametrize(("spec", "days"), [("2d", 2), ("36h", 1.5), ("90m", 1 / 16), ("100s", 100 / 86400)])
def test_older_than_units(spec, days):
    key, _ = make()
    APIKey.objects.filter(pk=key.pk).update(created=timezone.now() - timedelta(days=days, seconds=5))
    fresh, _ = make("fresh")
    APIKey.objects.filter(pk=fresh.pk).update(created=timezone.now() - timedelta(days=days, seconds=-60))
    out, _ = run("rotate_api_key", "--older-than", spec, "--dry-run")
    assert [json.loads(line)["old_prefix"] for line in out.splitlines()] == [key.prefix]


@pytest.mark.django_db
def test_older_than_dry_run_changes_nothing():
    key, _ = make()
    age(key, days=100)
    before = state()
    out, err = run("rotate_api_key", "--older-than", "90d", "--grace", "60", "--dry-run")
    assert state() == before
    assert json.loads(out)["new_key"] is None
    assert "Would rotate 1 of 1" in err


@pytest.mark.django_db
@pytest.mark.parametrize("spec", ["90", "d", "-1d", "1w", "1.5d", ""])
def test_older_than_refuses_bad_durations(spec):
    with pytest.raises(CommandError, match="duration"):
        run("rotate_api_key", f"--older-than={spec}")


# LIST


@pytest.mark.django_db
def test_list_json_statuses_and_no_hash():
    active, active_raw = make("active", rpm=5, allowed_models=["gpt-4o"], owner="team")
    soon, _ = make("soon", expires=timezone.now() + timedelta(days=1))
    expired, _ = make("expired", expires=timezone.now() - timedelta(days=1))
    revoked, _ = make("revoked")
    api_key_revoke(api_key=revoked, actor="t")
    rotated, _ = make("rotated")
    successor, _ = api_key_rotate(api_key=rotated, grace=600, actor="t")

    def listed(status):
        out, _ = run("list_api_keys", "--status", status, "--json")
        return {row["prefix"]: row for row in json.loads(out)}

    everything = listed("all")
    assert set(everything) == {k.prefix for k in (active, soon, expired, revoked, rotated, successor)}
    assert {p: r["status"] for p, r in everything.items()} == {
        active.prefix: "active",
        soon.prefix: "expiring_soon",
        expired.prefix: "expired",
        revoked.prefix: "revoked",
        rotated.prefix: "in_grace",
        successor.prefix: "active",
    }
    assert set(listed("active")) == {active.prefix, soon.prefix, rotated.prefix, successor.prefix}
    assert set(listed("expired")) == {expired.prefix}
    assert set(listed("revoked")) == {revoked.prefix}
    row = everything[active.prefix]
    assert (row["rpm"], row["allowed_models"], row["owner"]) == (5, ["gpt-4o"], "team")
    assert everything[rotated.prefix]["successor"] == successor.prefix
    assert everything[successor.prefix]["predecessor"] == rotated.prefix
    out, _ = run("list_api_keys", "--json")
    for key in APIKey.objects.all():
        assert key.hashed_key.split("$$")[1] not in out
    assert active_raw not in out


@pytest.mark.django_db
def test_list_table_is_readable():
    make("alpha", rpm=60, tpm=1000, allowed_models=["gpt-4o", "gpt-4o-mini"])
    revoked, _ = make("beta")
    api_key_revoke(api_key=revoked, actor="t")
    out, _ = run("list_api_keys")
    header, *rows = out.splitlines()
    assert header.split()[:4] == ["PREFIX", "NAME", "OWNER", "STATUS"]
    alpha = next(r for r in rows if "alpha" in r)
    assert "active" in alpha and "60" in alpha and "gpt-4o,gpt-4o-mini" in alpha
    assert "revoked" in next(r for r in rows if "beta" in r)
    out, _ = run("list_api_keys", "--status", "revoked")
    assert "beta" in out and "alpha" not in out


@pytest.mark.django_db
def test_list_refuses_an_unknown_status():
    with pytest.raises(CommandError):
        run("list_api_keys", "--status", "bogus")


# CREATE AND REVOKE DETAILS


@pytest.mark.django_db
def test_create_takes_notes_and_a_relative_expiry():
    out, _ = run("create_api_key", "ci", "--expires", "30d", "--notes", "for the CI runner", "--owner", "infra")
    key = APIKey.objects.get(prefix=out.strip().partition(".")[0])
    assert key.notes == "for the CI runner" and key.owner == "infra"
    assert timedelta(days=29, hours=23) < key.expiry_date - timezone.now() <= timedelta(days=30)
    assert AuditLogEntry.objects.get(key_prefix=key.prefix).actor == "command:create_api_key"


@pytest.mark.django_db
def test_create_with_a_naive_iso_expiry_means_utc():
    out, _ = run("create_api_key", "ci", "--expires", "2031-01-02T03:04:05")
    key = APIKey.objects.get(prefix=out.strip().partition(".")[0])
    assert key.expiry_date == datetime(2031, 1, 2, 3, 4, 5, tzinfo=UTC)


# REAL PROCESSES: exit codes and streams


def test_manage_py_rotate_last_line_is_the_raw_key_and_errors_exit_non_zero(transactional_db):
    key, _ = make("proc")
    done = manage("rotate_api_key", key.prefix, "--grace", "30")
    assert done.returncode == 0, done.stderr
    raw = done.stdout.splitlines()[-1]
    assert APIKey.objects.get(prefix=raw.partition(".")[0]).is_valid(raw)
    assert json.loads(done.stdout.splitlines()[0])["new_key"] == raw
    assert raw not in done.stderr

    before = state()
    for args in (
        [key.prefix],  # already rotated
        ["nosuchpx"],
        [raw, "--grace", "-1"],
        ["--older-than", "ninety"],
    ):
        failed = manage("rotate_api_key", *args)
        assert failed.returncode != 0, (args, failed.stdout)
        assert failed.stdout == "", args
        # One line (log records from app start-up, which carry a timestamp, aside).
        assert len([line for line in failed.stderr.splitlines() if not line[:4].isdigit()]) == 1, failed.stderr
    assert state() == before


def test_manage_py_revoke_then_list(transactional_db):
    key, _ = make("proc-revoke")
    done = manage("revoke_api_key", key.prefix)
    assert done.returncode == 0, done.stderr
    again = manage("revoke_api_key", key.prefix)
    assert again.returncode != 0 and "already revoked" in again.stderr
    listed = manage("list_api_keys", "--status", "revoked", "--json")
    assert [row["prefix"] for row in json.loads(listed.stdout)] == [key.prefix]
