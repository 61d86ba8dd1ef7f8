"""Every change to a key bumps KeyGeneration in the same transaction, whatever made it (service, admin, shell)."""

from django.db.models import F
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import APIKey, KeyGeneration


def key_generation_bump() -> None:
    if not KeyGeneration.objects.filter(pk=1).update(value=F("value") + 1):
        KeyGeneration.objects.get_or_create(pk=1, defaults={"value": 1})


@receiver(post_save, sender=APIKey, dispatch_uid="apikeys.bump_on_save")
@receiver(post_delete, sender=APIKey, dispatch_uid="apikeys.bump_on_delete")
def _bump_on_change(**kwargs) -> None:
    key_generation_bump()
