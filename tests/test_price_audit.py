"""Model prices change through `usage.services`, from the admin or code, and every change leaves an
append-only `PriceAuditEntry`: who, what, `{field: [old, new]}`."""

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse

from usage.models import ModelPrice, PriceAuditEntry
from usage.services import model_price_create, model_price_delete, model_price_update

FROM = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def staff_client(db) -> Client:
    user = get_user_model().objects.create_superuser("price-admin", "p@example.com", "pw-for-tests-only")
    client = Client()
    client.force_login(user)
    return client


def test_an_admin_edit_goes_through_the_service_and_is_audited(staff_client):
    price = model_price_create(
        actor="command:test", model="zz-model", input_per_million=Decimal("1"),
        output_per_million=Decimal("2"), max_output_tokens=1000, effective_from=FROM,
    )  # fmt: skip
    url = reverse("admin:usage_modelprice_change", args=[price.pk])
    response = staff_client.post(
        url,
        {
            "model": "zz-model",
            "input_per_million": "1.25",
            "cached_input_per_million": "0.125",
            "output_per_million": "2",
            "max_output_tokens": "1000",
            "effective_from_0": "2026-01-01",
            "effective_from_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    price.refresh_from_db()
    assert (price.input_per_million, price.cached_input_per_million) == (Decimal("1.25"), Decimal("0.125"))
    entry = PriceAuditEntry.objects.get(price_id=price.pk, action="update")
    assert entry.actor == "price-admin"
    assert entry.model == "zz-model"
    old_input, new_input = entry.changes.pop("input_per_million")
    assert Decimal(old_input) == 1 and Decimal(new_input) == Decimal("1.25")
    old_cached, new_cached = entry.changes.pop("cached_input_per_million")
    assert old_cached is None and Decimal(new_cached) == Decimal("0.125")
    assert entry.changes == {}  # nothing else changed, nothing else recorded
    # The price's page shows its trail; the audit log is read-only for everyone, superusers included.
    assert "price-admin, update" in staff_client.get(url).content.decode()
    log = staff_client.get(reverse("admin:usage_priceauditentry_changelist"))
    assert log.status_code == 200 and "zz-model" in log.content.decode()
    assert staff_client.get(reverse("admin:usage_priceauditentry_add")).status_code == 403
    delete = staff_client.post(reverse("admin:usage_priceauditentry_delete", args=[entry.pk]), {"post": "yes"})
    assert delete.status_code == 403
    assert PriceAuditEntry.objects.filter(pk=entry.pk).exists()


def test_admin_add_list_edit_and_delete_are_audited(staff_client):
    add = staff_client.post(
        reverse("admin:usage_modelprice_add"),
        {
            "model": "zz-added",
            "input_per_million": "3",
            "cached_input_per_million": "",
            "output_per_million": "6",
            "max_output_tokens": "100",
            "effective_from_0": "2026-01-01",
            "effective_from_1": "00:00:00",
        },
    )
    assert add.status_code == 302, add.content.decode()[:2000]
    price = ModelPrice.objects.get(model="zz-added")
    created = PriceAuditEntry.objects.get(price_id=price.pk, action="create")
    assert created.actor == "price-admin" and created.changes["model"] == [None, "zz-added"]
    assert created.changes["cached_input_per_million"] == [None, None]

    # The list's editable columns save through the service as well.
    listing = {
        "form-TOTAL_FORMS": "1", "form-INITIAL_FORMS": "1", "form-MIN_NUM_FORMS": "0", "form-MAX_NUM_FORMS": "1000",
        "form-0-id": str(price.pk), "form-0-input_per_million": "3", "form-0-cached_input_per_million": "1.5",
        "form-0-output_per_million": "6", "form-0-max_output_tokens": "100", "_save": "Save",
    }  # fmt: skip
    response = staff_client.post(reverse("admin:usage_modelprice_changelist") + "?q=zz-added", listing)
    assert response.status_code == 302, response.content.decode()[:2000]
    update = PriceAuditEntry.objects.get(price_id=price.pk, action="update")
    assert list(update.changes) == ["cached_input_per_million"]
    assert update.changes["cached_input_per_million"][0] is None
    assert Decimal(update.changes["cached_input_per_million"][1]) == Decimal("1.5")

    delete = staff_client.post(reverse("admin:usage_modelprice_delete", args=[price.pk]), {"post": "yes"})
    assert delete.status_code == 302
    assert not ModelPrice.objects.filter(pk=price.pk).exists()
    deleted = PriceAuditEntry.objects.get(price_id=price.pk, action="delete")
    assert deleted.changes["model"] == ["zz-added", None]


def test_the_services_validate_and_write_nothing_on_error(db):
    with pytest.raises(ValidationError):
        model_price_create(
            actor="command:test", model="zz-neg", input_per_million=Decimal("-1"), output_per_million=Decimal(1)
        )
    price = model_price_create(
        actor="command:test", model="zz-ok", input_per_million=Decimal(1), output_per_million=Decimal(1),
        effective_from=FROM,
    )  # fmt: skip
    with pytest.raises(ValidationError):  # the same model and effective_from twice
        model_price_create(
            actor="command:test", model="zz-ok", input_per_million=Decimal(2), output_per_million=Decimal(2),
            effective_from=FROM,
        )  # fmt: skip
    with pytest.raises(ValidationError):
        model_price_update(price=price, actor="command:test", cached_input_per_million=Decimal("-0.1"))
    with pytest.raises(TypeError):
        model_price_update(price=price, actor="command:test", id=5)  # type: ignore[call-arg]
    ours = PriceAuditEntry.objects.filter(actor="command:test")
    assert list(ours.values_list("model", "action")) == [("zz-ok", "create")]
    # No change, no entry.
    model_price_update(price=price, actor="command:test", input_per_million=Decimal("1.0"))
    assert ours.count() == 1
    model_price_delete(price=price, actor="command:test")
    assert ours.count() == 2


def test_audit_entries_are_append_only(db):
    model_price_create(actor="command:test", model="zz-x", input_per_million=Decimal(1), output_per_million=Decimal(1))
    entry = PriceAuditEntry.objects.get(model="zz-x")
    entry.actor = "someone else"
    with pytest.raises(ValueError, match="append-only"):
        entry.save()
    with pytest.raises(ValueError, match="append-only"):
        entry.delete()
