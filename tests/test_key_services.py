"""The key services (create, update, rotate, revoke, touch last used) and the status selectors: what they write,
what they refuse.

Each refused call is checked to change nothing: no key row, no audit entry, no KeyGeneration bump.
"""

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from apikeys.models import APIKey, AuditLogEntry, KeyGeneration
from apikeys.selectors import (
    KeyStatus,
    api_key_list,
    api_key_row,
    api_key_status,
    api_key_status_q,
    api_keys_due_for_rotation,
)
from apikeys.services import (
    KeyInputError,
    KeyLookupError,
    KeyStateError,
    api_key_create,
    api_key_find,
    api_key_revoke,
    api_key_rotate,
    api_key_touch_last_used,
    api_key_update,
)

pytestmark = pytest.mark.django_db


def generation() -> int:
    return KeyGeneration.objects.filter(pk=1).values_list("value", flat=True).first() or 0


def snapshot():
    """Everything a refused call must leave alone."""
    keys = list(APIKey.objects.order_by("prefix").values())
    return keys, AuditLogEntry.objects.count(), generation()


def make(name="svc", **fields):
    return api_key_create(name=name, actor="test", **fields)


# CREATE


def test_create_returns_the_raw_key_once_and_stores_only_its_hash():
    key, raw = make(rpm=10, allowed_models=["gpt-4o", " gpt-4o-mini ", "gpt-4o"], owner=" team-a ")
    assert raw.startswith(key.prefix + ".")
    assert key.is_valid(raw)
    stored = APIKey.objects.get(prefix=key.prefix)
    values = [str(v) for v in APIKey.objects.filter(prefix=key.prefix).values().first().values()]
    assert raw not in values and raw.partition(".")[2] not in " ".join(values)
    assert stored.allowed_models == ["gpt-4o", "gpt-4o-mini"]
    assert stored.owner == "team-a"


def test_the_primary_key_is_the_prefix_so_no_url_carries_a_hash():
    key, _ = make()
    assert key.pk == key.prefix
    assert APIKey.objects.get(pk=key.prefix).hashed_key.startswith("sha512$$")
    assert "$" not in key.pk


def test_create_writes_an_audit_entry_with_the_actor():
    key, _ = make(rpm=5, budget_usd=Decimal("12.5"), expires=timezone.now() + timedelta(days=3))
    entry = AuditLogEntry.objects.get(key_prefix=key.prefix)
    assert (entry.actor, entry.action, entry.key_name) == ("test", "create", "svc")
    assert entry.changes["rpm"] == [None, 5]
    assert entry.changes["budget_usd"] == [None, "12.5"]


def test_create_makes_a_naive_expiry_utc():
    naive = timezone.now().replace(tzinfo=None) + timedelta(days=1)
    key, _ = make(expires=naive)
    assert key.expiry_date.utcoffset() == timedelta(0)
    assert key.expiry_date.replace(tzinfo=None) == naive


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": "  "}, "name"),
        ({"name": "x" * 51}, "name"),
        ({"rpm": -1}, "rpm"),
        ({"tpm": "10"}, "tpm"),
        ({"max_concurrent": True}, "max_concurrent"),
        ({"budget_usd": Decimal("-1")}, "budget_usd"),
        ({"budget_usd": "abc"}, "budget_usd"),
        ({"budget_period": "week"}, "budget_period"),
        ({"allowed_models": "gpt-4o"}, "allowed_models"),
        ({"expires": "tomorrow"}, "expires"),
    ],
)
def test_create_refuses_bad_input_and_writes_nothing(fields, field):
    before = snapshot()
    with pytest.raises(KeyInputError) as error:
        api_key_create(**{"name": "ok", "actor": "test", **fields})
    assert error.value.field == field
    assert snapshot() == before


# FIND


def test_find_by_prefix_or_raw_key_and_refuse_a_wrong_secret():
    key, raw = make()
    assert api_key_find(key.prefix) == key
    assert api_key_find(raw) == key
    for wrong in (f"{key.prefix}.{'x' * 32}", "nosuchpx", "", "   "):
        with pytest.raises(KeyLookupError):
            api_key_find(wrong)


# UPDATE


def test_update_records_old_and_new_values_and_bumps_the_generation():
    key, _ = make(rpm=10, allowed_models=["a"])
    before = generation()
    expires = timezone.now() + timedelta(days=30)
    updated = api_key_update(
        api_key=key, actor="alice", rpm=20, allowed_models=["b", "a"], expires=expires, notes="moved to team b"
    )
    assert (updated.rpm, updated.allowed_models, updated.expiry_date) == (20, ["a", "b"], expires)
    assert generation() > before
    entry = AuditLogEntry.objects.filter(key_prefix=key.prefix, action="update").get()
    assert entry.actor == "alice"
    assert entry.changes == {
        "rpm": [10, 20],
        "allowed_models": [["a"], ["a", "b"]],
        "expires": [None, expires.isoformat()],
        "notes": ["", "moved to team b"],
    }


def test_update_that_changes_nothing_writes_nothing():
    key, _ = make(rpm=10, budget_usd=Decimal("5"))
    before = snapshot()
    api_key_update(api_key=key, actor="alice", rpm=10, budget_usd=Decimal("5.0000"), name=" svc ")
    assert snapshot() == before


def test_update_compares_with_the_stored_row_not_the_callers_copy():
    key, _ = make(rpm=10)
    stale = APIKey.objects.get(pk=key.pk)
    api_key_update(api_key=key, actor="a", rpm=20)
    api_key_update(api_key=stale, actor="b", rpm=30)
    assert AuditLogEntry.objects.filter(actor="b").get().changes == {"rpm": [20, 30]}


def test_update_refuses_unknown_fields_and_bad_values_and_changes_nothing():
    key, _ = make(rpm=10)
    before = snapshot()
    with pytest.raises(TypeError):
        api_key_update(api_key=key, actor="a", hashed_key="x")
    with pytest.raises(TypeError):
        api_key_update(api_key=key, actor="a", revoked=True)
    with pytest.raises(KeyInputError):
        api_key_update(api_key=key, actor="a", rpm=-5)
    assert snapshot() == before


def test_a_revoked_key_only_takes_notes_and_owner():
    key, _ = make(rpm=10)
    api_key_revoke(api_key=key, actor="a")
    before = snapshot()
    with pytest.raises(KeyStateError):
        api_key_update(api_key=key, actor="a", rpm=100, notes="x")
    assert snapshot() == before
    api_key_update(api_key=key, actor="a", notes="leaked in a public repo", owner="sec")
    key.refresh_from_db()
    assert (key.notes, key.owner, key.rpm) == ("leaked in a public repo", "sec", 10)


# ROTATE


def test_rotate_creates_a_successor_that_copies_everything_and_records_its_predecessor():
    expires = timezone.now() + timedelta(days=60)
    old, old_raw = make(
        name="billing",
        owner="team-b",
        notes="n",
        rpm=7,
        tpm=700,
        max_concurrent=3,
        allowed_models=["gpt-4o-mini"],
        budget_usd=Decimal("9.5"),
        budget_period="day",
        expires=expires,
    )
    before = generation()
    new, raw = api_key_rotate(api_key=old, grace=timedelta(minutes=5), actor="command:rotate_api_key")
    assert raw.startswith(new.prefix + ".") and raw != old_raw and new.prefix != old.prefix
    new.refresh_from_db()
    copied = ("name", "owner", "notes", "rpm", "tpm", "max_concurrent", "allowed_models", "budget_usd")
    assert {f: getattr(new, f) for f in copied} == {f: getattr(old, f) for f in copied}
    assert (new.budget_period, new.expiry_date) == ("day", expires)
    assert new.predecessor_id == old.pk and new.grace_until is None and not new.revoked
    old.refresh_from_db()
    assert old.successor == new
    assert timedelta(minutes=4) < old.grace_until - timezone.now() <= timedelta(minutes=5)
    assert api_key_status(old) == KeyStatus.IN_GRACE and api_key_status(new) == KeyStatus.ACTIVE
    assert generation() > before
    rotate = AuditLogEntry.objects.get(key_prefix=old.prefix, action="rotate")
    assert rotate.actor == "command:rotate_api_key"
    assert rotate.changes["successor"] == [None, new.prefix]
    assert rotate.changes["grace_until"] == [None, old.grace_until.isoformat()]
    created = AuditLogEntry.objects.get(key_prefix=new.prefix, action="create")
    assert created.changes == {"predecessor": [None, old.prefix]}


def test_rotate_with_zero_grace_ends_the_old_key_at_once():
    old, _ = make()
    api_key_rotate(api_key=old, grace=0, actor="t")
    old.refresh_from_db()
    assert old.grace_until <= timezone.now()
    assert not old.is_usable()
    assert api_key_status(old) == KeyStatus.EXPIRED


def test_the_old_key_stops_at_its_own_expiry_when_that_comes_before_the_grace_ends():
    expires = timezone.now() + timedelta(minutes=1)
    old, _ = make(expires=expires)
    api_key_rotate(api_key=old, grace=timedelta(hours=1), actor="t")
    old.refresh_from_db()
    assert old.valid_until() == expires


@pytest.mark.parametrize("state", ["revoked", "rotated", "expired"])
def test_rotate_refuses_a_key_that_cannot_be_rotated_and_changes_nothing(state):
    key, _ = make(expires=timezone.now() - timedelta(seconds=1) if state == "expired" else None)
    if state == "revoked":
        api_key_revoke(api_key=key, actor="t")
    elif state == "rotated":
        api_key_rotate(api_key=key, grace=60, actor="t")
    before = snapshot()
    with pytest.raises(KeyStateError):
        api_key_rotate(api_key=key, grace=60, actor="t")
    assert snapshot() == before


@pytest.mark.parametrize("grace", [-1, timedelta(seconds=-1), float("nan")])
def test_rotate_refuses_a_negative_grace_and_changes_nothing(grace):
    key, _ = make()
    before = snapshot()
    with pytest.raises(KeyInputError):
        api_key_rotate(api_key=key, grace=grace, actor="t")
    assert snapshot() == before


# REVOKE


def test_revoke_is_final_and_audited():
    key, _ = make()
    before = generation()
    api_key_revoke(api_key=key, actor="bob")
    key.refresh_from_db()
    assert key.revoked and key.revoked_at is not None
    assert generation() > before
    assert AuditLogEntry.objects.get(key_prefix=key.prefix, action="revoke").actor == "bob"
    state = snapshot()
    with pytest.raises(KeyStateError):
        api_key_revoke(api_key=key, actor="bob")
    assert snapshot() == state


# LAST USED


def test_touch_last_used_moves_forward_only_in_one_update_without_bumping_or_auditing(django_assert_num_queries):
    never, _ = make("never")
    older, _ = make("older")
    newer, _ = make("newer")
    now = timezone.now()
    APIKey.objects.filter(pk=older.pk).update(last_used_at=now - timedelta(minutes=5))
    APIKey.objects.filter(pk=newer.pk).update(last_used_at=now + timedelta(minutes=5))
    before_keys = {row["prefix"]: row for row in APIKey.objects.values()}
    before_generation, before_audit = generation(), AuditLogEntry.objects.count()

    with django_assert_num_queries(1):
        updated = api_key_touch_last_used(last_used={never.pk: now, older.pk: now, newer.pk: now, "nosuchk1": now})

    assert updated == 2
    after = {row["prefix"]: row for row in APIKey.objects.values()}
    assert after[never.prefix]["last_used_at"] == now
    assert after[older.prefix]["last_used_at"] == now
    assert after[newer.prefix]["last_used_at"] == now + timedelta(minutes=5)  # never backwards
    for prefix, row in after.items():  # nothing else changed, updated_at included
        assert {**row, "last_used_at": None} == {**before_keys[prefix], "last_used_at": None}
    assert (generation(), AuditLogEntry.objects.count()) == (before_generation, before_audit)
    assert api_key_touch_last_used(last_used={}) == 0


def test_audit_entries_are_append_only():
    key, _ = make()
    entry = AuditLogEntry.objects.get(key_prefix=key.prefix)
    entry.actor = "someone else"
    with pytest.raises(ValueError, match="append-only"):
        entry.save()
    with pytest.raises(ValueError, match="append-only"):
        entry.delete()


# STATUS AND LISTS


def test_each_status_and_its_filter_agree():
    now = timezone.now()
    active, soon, expired, revoked, rotated, ended = (
        make("active")[0],
        make("soon", expires=now + timedelta(days=2))[0],
        make("expired", expires=now - timedelta(seconds=1))[0],
        make("revoked")[0],
        make("rotated")[0],
        make("ended")[0],
    )
    api_key_revoke(api_key=revoked, actor="t")
    successor_1, _ = api_key_rotate(api_key=rotated, grace=3600, actor="t")
    successor_2, _ = api_key_rotate(api_key=ended, grace=0, actor="t")
    expected = {
        KeyStatus.ACTIVE: {active, successor_1, successor_2},
        KeyStatus.EXPIRING_SOON: {soon},
        KeyStatus.IN_GRACE: {rotated},
        KeyStatus.EXPIRED: {expired, ended},
        KeyStatus.REVOKED: {revoked},
    }
    for status, keys in expected.items():
        assert set(APIKey.objects.filter(api_key_status_q(status))) == keys, status
        for key in keys:
            assert api_key_status(APIKey.objects.get(pk=key.pk)) == status, key.name

    def names(status):
        return sorted(api_key_list(status=status).values_list("prefix", flat=True))

    usable = expected[KeyStatus.ACTIVE] | {soon, rotated}
    assert names("active") == sorted(k.prefix for k in usable)
    assert names("expired") == sorted([expired.prefix, ended.prefix])
    assert names("revoked") == [revoked.prefix]
    assert len(names("all")) == 8
    with pytest.raises(ValueError):
        api_key_list(status="bogus")


def test_keys_due_for_rotation_are_usable_old_and_not_yet_rotated():
    now = timezone.now()
    old, _ = make("old")
    make("young")
    rotated, _ = make("rotated")
    revoked, _ = make("revoked")
    expired, _ = make("expired", expires=now - timedelta(seconds=1))
    successor, _ = api_key_rotate(api_key=rotated, grace=3600, actor="t")
    api_key_revoke(api_key=revoked, actor="t")
    aged = [old.pk, rotated.pk, revoked.pk, expired.pk]
    APIKey.objects.filter(pk__in=aged).update(created=now - timedelta(days=100))
    due = list(api_keys_due_for_rotation(older_than=timedelta(days=90)))
    assert due == [old]
    assert successor in api_keys_due_for_rotation(older_than=timedelta(0), now=now + timedelta(seconds=1))


def test_a_key_row_shows_no_hash():
    key, raw = make(owner="o", allowed_models=["m"])
    new, _ = api_key_rotate(api_key=key, grace=10, actor="t")
    key.refresh_from_db()
    row = api_key_row(api_key_list().get(pk=key.pk))
    text = repr(row)
    assert key.hashed_key.split("$$")[1] not in text and raw not in text
    assert (row.prefix, row.successor, row.status) == (key.prefix, new.prefix, KeyStatus.IN_GRACE)
    assert api_key_row(api_key_list().get(pk=new.pk)).predecessor == key.prefix


@pytest.mark.parametrize(
    "fields", [{"tpm": 2**31}, {"rpm": 2**40}, {"max_concurrent": 2**31}, {"budget_usd": Decimal("1e8")}]
)
def test_values_the_columns_cannot_hold_are_refused(db, fields):
    with pytest.raises(KeyInputError):
        api_key_create(name="too-big", actor="test", **fields)
    assert not APIKey.objects.filter(name="too-big").exists()
