"""Server-side state the upstream keeps for Tollgate's keys: who owns which stored response and conversation, and
the background responses still running.

Behind one company key every stored response and conversation of every Tollgate user lives in one OpenAI project,
so ownership is Tollgate's: each object created through Tollgate belongs to the creating key's lineage
(`APIKey.lineage`: a rotated key keeps its history). Rows are written by `serverstate.services`, read by
`serverstate.selectors`.
"""

from django.db import models
from django.utils import timezone


class ObjectKind(models.TextChoices):
    RESPONSE = "response"
    CONVERSATION = "conversation"


class OwnedObject(models.Model):
    """An upstream object (a response, a conversation) created through Tollgate, and the key lineage owning it.

    For a response, `input_tokens` and `output_tokens` are its usage once known (the recorded size of the chain a
    follow-up continues), and `conversation_id` the conversation it was part of. For a conversation,
    `context_tokens` is the size of its latest response (input + output): what the next response in it carries.
    """

    kind = models.CharField(max_length=16, choices=ObjectKind.choices)
    object_id = models.CharField(max_length=200)
    lineage = models.CharField(max_length=8, db_index=True)
    key_prefix = models.CharField(max_length=8, help_text="The key that created it.")
    request_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    context_tokens = models.PositiveIntegerField(default=0)
    conversation_id = models.CharField(max_length=200, blank=True)
    # The upstream that holds it (`upstreams.Upstream.name`): every request about it goes there. "" for objects
    # of the default upstream, or recorded before upstreams were data.
    upstream = models.CharField(max_length=64, blank=True, default="")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "object_id"], name="uniq_owned_object")]

    def __str__(self) -> str:
        return f"{self.kind} {self.object_id} ({self.lineage})"

    @property
    def chain_tokens(self) -> int:
        """What continuing this object carries upstream as input: a response's input and output, a
        conversation's latest response's."""
        if self.kind == ObjectKind.CONVERSATION:
            return self.context_tokens
        return (self.input_tokens or 0) + (self.output_tokens or 0)


class BackgroundResponse(models.Model):
    """A background response whose admission (concurrency slot, token and budget reservations) is held until it
    ends. `completions.background` polls it and settles it exactly once: the first follower to set `settled_at`
    (a conditional UPDATE) settles; `next_poll_at` is a lease, claimed with SELECT … FOR UPDATE SKIP LOCKED.

    `admission` is the serialised `metering.throttling.Admission` (its ticket, admission result and demand);
    the other fields are what the usage record of the creating request needs.
    """

    response_id = models.CharField(max_length=200, unique=True)
    request_id = models.CharField(max_length=64)
    api_key_id = models.CharField(max_length=150, blank=True)
    key_prefix = models.CharField(max_length=8)
    key_name = models.CharField(max_length=50, blank=True)
    lineage = models.CharField(max_length=8)
    endpoint = models.CharField(max_length=40)
    model = models.CharField(max_length=100, blank=True)
    upstream = models.CharField(max_length=64, blank=True, default="")  # the upstream holding it
    streamed = models.BooleanField(default=False)
    input_estimate = models.PositiveIntegerField(default=0)
    admission = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)
    next_poll_at = models.DateTimeField(default=timezone.now, db_index=True)
    polls = models.PositiveIntegerField(default=0)
    settled_at = models.DateTimeField(null=True, blank=True, db_index=True)
    final_status = models.CharField(max_length=20, blank=True)

    def __str__(self) -> str:
        return self.response_id
