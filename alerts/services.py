"""Raising alerts (scan) and delivering them (webhook, email). Both run in every gateway worker's alert thread
(`alerts.runner`); the database makes them exactly-once: a unique claim per crossing, a lease per delivery.

* `alert_scan(now)`: for every budgeted key lineage and team, the SETTLED spend of its current period (the hourly
  usage rollups, in a fixed handful of queries whatever the number of keys: `usage_budgets_spent`; real costs, so
  a reservation later refunded alerts nobody) against each of its thresholds; and every
  working key expiring within `KEY_EXPIRING_SOON_DAYS`. Each new crossing is claimed (`AlertClaim`, unique) and
  gets its deliveries.
* `alert_deliver_due(now)`: sends the deliveries that are due, each taken under a lease by one worker; a failure
  is retried with exponential backoff up to `ALERT_MAX_ATTEMPTS`, then marked failed. All visible in the admin.
"""

import logging
from datetime import timedelta

import httpx
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apikeys.models import APIKey, Team
from apikeys.selectors import api_key_status_q, expiring_soon_window
from metering.base import BudgetWindow
from usage.selectors import usage_budgets_spent

from . import rules
from .models import AlertClaim, AlertDelivery, DeliveryStatus

logger = logging.getLogger("tollgate.alerts")

LEASE_SECONDS = 60


def alert_scan(*, now=None) -> list[AlertClaim]:
    """Claim every alert due now that no worker claimed yet; return the claims this call made."""
    now = now or timezone.now()
    made = []
    heads = APIKey.objects.filter(api_key_status_q("usable", now=now), successor__isnull=True)
    keys = list(heads.filter(budget_usd__isnull=False).select_related("team"))
    teams = list(Team.objects.filter(budget_usd__isnull=False).prefetch_related("admins"))
    key_spent, team_spent = usage_budgets_spent(keys=keys, teams=teams, now=now)
    for key in keys:
        assert key.budget_usd is not None  # filtered
        status = {"spent_usd": key_spent[key.pk], "period_start": BudgetWindow.at(key.budget_period, now).start}
        for threshold in rules.thresholds_crossed(
            spent=status["spent_usd"], budget=key.budget_usd, thresholds=key.alert_thresholds or []
        ):
            payload = rules.budget_payload(
                scope="key",
                name=key.name,
                prefix=key.prefix,
                threshold=threshold,
                spent=status["spent_usd"],
                budget=key.budget_usd,
                period=key.budget_period,
                period_start=status["period_start"],
            )
            made += _claim(payload, subject=key.lineage or key.prefix, period=_label(status), recipients=_owner(key))
    for team in teams:
        assert team.budget_usd is not None  # filtered
        status = {"spent_usd": team_spent[team.pk], "period_start": BudgetWindow.at(team.budget_period, now).start}
        for threshold in rules.thresholds_crossed(
            spent=status["spent_usd"], budget=team.budget_usd, thresholds=team.alert_thresholds or []
        ):
            payload = rules.budget_payload(
                scope="team",
                name=team.name,
                prefix=None,
                threshold=threshold,
                spent=status["spent_usd"],
                budget=team.budget_usd,
                period=team.budget_period,
                period_start=status["period_start"],
            )
            admins = [user.email for user in team.admins.all() if user.email]
            made += _claim(payload, subject=str(team.pk), period=_label(status), recipients=admins)
    soon = heads.filter(expiry_date__isnull=False, expiry_date__lte=now + expiring_soon_window(), grace_until=None)
    for key in soon:
        assert key.expiry_date is not None  # filtered
        payload = rules.expiry_payload(name=key.name, prefix=key.prefix, expires=key.expiry_date)
        made += _claim(payload, subject=key.prefix, period=payload["expires"], recipients=_owner(key))
    return made


def _label(status: dict) -> str:
    start = status["period_start"]
    return "total" if start is None else start.strftime("%Y-%m-%d")


def _owner(key: APIKey) -> list[str]:
    owner = (key.owner or "").strip()
    return [owner] if "@" in owner and " " not in owner else []


def _claim(payload: dict, *, subject: str, period: str, recipients: list[str]) -> list[AlertClaim]:
    """Insert the claim (once ever) with its deliveries; [] when another worker or an earlier scan has it."""
    if AlertClaim.objects.filter(
        event=payload["event"],
        scope=payload["scope"],
        subject=subject,
        period=period,
        threshold=payload.get("threshold", 0),
    ).exists():
        return []
    try:
        with transaction.atomic():
            claim = AlertClaim.objects.create(
                event=payload["event"],
                scope=payload["scope"],
                subject=subject,
                period=period,
                threshold=payload.get("threshold", 0),
                payload=payload,
            )
            if settings.ALERT_WEBHOOK_URL:
                AlertDelivery.objects.create(claim=claim, channel="webhook", target=settings.ALERT_WEBHOOK_URL)
            if recipients:
                AlertDelivery.objects.create(claim=claim, channel="email", target=",".join(sorted(set(recipients))))
    except IntegrityError:
        return []  # another worker claimed it between the check and the insert
    logger.info("alert raised: %s", rules.subject_line(payload))
    return [claim]


def alert_deliver_due(*, now=None, client: httpx.Client | None = None) -> int:
    """Send every due delivery this worker can lease; return how many were sent successfully."""
    now = now or timezone.now()
    due = AlertDelivery.objects.filter(
        Q(lease_until__isnull=True) | Q(lease_until__lt=now),
        status=DeliveryStatus.PENDING,
        next_attempt_at__lte=now,
    ).values_list("pk", flat=True)[:50]
    sent = 0
    for pk in list(due):
        # The lease: only the worker whose conditional update matched sends it.
        taken = AlertDelivery.objects.filter(
            Q(lease_until__isnull=True) | Q(lease_until__lt=now), pk=pk, status=DeliveryStatus.PENDING
        ).update(lease_until=now + timedelta(seconds=LEASE_SECONDS))
        if not taken:
            continue
        delivery = AlertDelivery.objects.select_related("claim").get(pk=pk)
        sent += _attempt(delivery, client)
    return sent


def _attempt(delivery: AlertDelivery, client: httpx.Client | None) -> bool:
    payload = delivery.claim.payload
    error, code = "", None
    try:
        if delivery.channel == "webhook":
            body = rules.body_bytes(payload)
            headers = {"Content-Type": "application/json", "User-Agent": "Tollgate-Alerts"}
            if settings.ALERT_WEBHOOK_SECRET:
                headers[rules.SIGNATURE_HEADER] = rules.signature(body, settings.ALERT_WEBHOOK_SECRET)
            poster = client or httpx
            response = poster.post(delivery.target, content=body, headers=headers, timeout=10)
            code = response.status_code
            if not 200 <= code < 300:
                error = f"HTTP {code}: {response.text[:200]}"
        else:
            text = "\n".join(f"{name}: {value}" for name, value in payload.items())
            send_mail(rules.subject_line(payload), text, None, delivery.target.split(","))
    except Exception as exc:  # any transport or mail failure is retried later
        error = f"{exc.__class__.__name__}: {exc}"
    now = timezone.now()
    delivery.attempts += 1
    delivery.last_status_code = code
    delivery.lease_until = None
    if not error:
        delivery.status = DeliveryStatus.SENT
        delivery.sent_at = now
        delivery.last_error = ""
    else:
        delivery.last_error = error
        if delivery.attempts >= settings.ALERT_MAX_ATTEMPTS:
            delivery.status = DeliveryStatus.FAILED
            logger.error("alert delivery %s gave up after %d attempts: %s", delivery.pk, delivery.attempts, error)
        else:
            delivery.next_attempt_at = now + timedelta(seconds=rules.retry_delay(delivery.attempts))
            logger.warning("alert delivery %s failed (attempt %d): %s", delivery.pk, delivery.attempts, error)
    delivery.save(
        update_fields=[
            "attempts",
            "last_status_code",
            "lease_until",
            "status",
            "sent_at",
            "last_error",
            "next_attempt_at",
        ]
    )
    return not error
