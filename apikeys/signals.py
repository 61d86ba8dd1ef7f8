"""Every change to a key or a team bumps KeyGeneration in the same transaction, whatever made it (service, admin,
shell)."""

import time

from django.db.models import F
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from .models import APIKey, KeyGeneration, Team


def key_generation_bump() -> None:
    if not KeyGeneration.objects.filter(pk=1).update(value=F("value") + 1):
        # A new row (first key ever, or the table was emptied: a restore, a test flush) starts at the clock in
        # nanoseconds, not 1, so that it cannot equal a value some worker saw before and keep its stale cache.
        KeyGeneration.objects.get_or_create(pk=1, defaults={"value": time.time_ns()})


@receiver(post_save, sender=APIKey, dispatch_uid="apikeys.bump_on_save")
@receiver(post_delete, sender=APIKey, dispatch_uid="apikeys.bump_on_delete")
# A key's snapshot carries its team's limits, budget and allowlist: a team change is a change to its keys.
@receiver(post_save, sender=Team, dispatch_uid="apikeys.bump_on_team_save")
@receiver(post_delete, sender=Team, dispatch_uid="apikeys.bump_on_team_delete")
def _bump_on_change(**kwargs) -> None:
    key_generation_bump()
