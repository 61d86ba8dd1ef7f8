"""Every write to server-side state (see `serverstate.models`): the relay and the background follower call these."""

from datetime import timedelta

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .models import BackgroundResponse, ObjectKind, OwnedObject


@transaction.atomic
def owned_object_record(
    *,
    kind: str,
    object_id: str,
    lineage: str,
    key_prefix: str,
    request_id: str = "",
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    conversation_id: str = "",
    upstream: str = "",
    background: BackgroundResponse | None = None,
) -> OwnedObject:
    """Record that `lineage` owns the object (and, for a background response, its held admission), in one
    transaction. An id recorded already keeps its first owner (ids are the upstream's, unique)."""
    owned, _ = OwnedObject.objects.get_or_create(
        kind=kind,
        object_id=object_id,
        defaults={
            "lineage": lineage,
            "key_prefix": key_prefix,
            "request_id": request_id,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "conversation_id": conversation_id,
            "upstream": upstream,
        },
    )
    if background is not None:
        background.save()
    if input_tokens is not None and conversation_id:
        _conversation_context(lineage, conversation_id, input_tokens + (output_tokens or 0))
    return owned


@transaction.atomic
def owned_response_usage(*, response_id: str, input_tokens: int, output_tokens: int) -> None:
    """Record a response's usage once known (a stream's end, a background response's settlement): the size of
    the chain a follow-up continues, and of the conversation it is part of."""
    owned = OwnedObject.objects.filter(kind=ObjectKind.RESPONSE, object_id=response_id).first()
    if owned is None:
        return
    OwnedObject.objects.filter(pk=owned.pk).update(input_tokens=input_tokens, output_tokens=output_tokens)
    if owned.conversation_id:
        _conversation_context(owned.lineage, owned.conversation_id, input_tokens + output_tokens)


def _conversation_context(lineage: str, conversation_id: str, tokens: int) -> None:
    OwnedObject.objects.filter(kind=ObjectKind.CONVERSATION, object_id=conversation_id, lineage=lineage).update(
        context_tokens=tokens
    )


LEASE_SECONDS = 30


@transaction.atomic
def background_responses_claim(*, limit: int, lease_seconds: float = LEASE_SECONDS) -> list[BackgroundResponse]:
    """Claim up to `limit` unsettled background responses due for a poll: their `next_poll_at` moves a lease
    ahead, so no other follower polls them meanwhile. SKIP LOCKED on PostgreSQL (rows another follower is
    claiming are passed over); SQLite serialises the transaction instead."""
    now = timezone.now()
    rows = list(
        BackgroundResponse.objects.select_for_update(skip_locked=True)
        .filter(settled_at__isnull=True, next_poll_at__lte=now)
        .order_by("next_poll_at")[:limit]
    )
    if rows:
        BackgroundResponse.objects.filter(pk__in=[row.pk for row in rows]).update(
            next_poll_at=now + timedelta(seconds=lease_seconds)
        )
    return rows


def background_response_later(*, row: BackgroundResponse, seconds: float) -> None:
    """The response is still running: poll it again in `seconds`."""
    BackgroundResponse.objects.filter(pk=row.pk, settled_at__isnull=True).update(
        next_poll_at=timezone.now() + timedelta(seconds=seconds), polls=row.polls + 1
    )


def background_response_finish(*, row: BackgroundResponse, status: str) -> bool:
    """Mark the response settled; True for exactly one caller across every follower (a conditional UPDATE)."""
    return (
        BackgroundResponse.objects.filter(Q(pk=row.pk) & Q(settled_at__isnull=True)).update(
            settled_at=timezone.now(), final_status=status[:20]
        )
        == 1
    )
