"""The counters of the database limit store (used when no Redis is configured)."""

from django.db import models


class LimitCounter(models.Model):
    """A named counter for the database rate-limit and budget path (used when REDIS_URL is not set).

    Rows (see `metering.database_store`): `rpm:<prefix>` / `tpm:<prefix>` (a fixed window's count and
    its end), `budget:<prefix>:<period>` (spend in 10⁻⁸ USD), `inflight:<prefix>` (a lock row) and one
    `inflight:<prefix>:<request id>` per request in flight, grouped by `scope`, holding its budget reservation.
    """

    name = models.CharField(max_length=200, unique=True)
    scope = models.CharField(max_length=100, blank=True, db_index=True, help_text="Groups in-flight rows by key.")
    value = models.BigIntegerField(default=0)
    window_end = models.FloatField(default=0, help_text="Epoch seconds at which this window's count resets.")
