"""Pure parts of teams and alerts, without servers: thresholds crossed, the webhook's body and signature, the retry
backoff, a key's allowlist intersected with its team's, and the limiter headers of a key in a team."""

import hashlib
import hmac
from datetime import UTC, datetime
from decimal import Decimal

from alerts.rules import (
    body_bytes,
    budget_payload,
    retry_delay,
    signature,
    signature_valid,
    thresholds_crossed,
)
from apikeys.keycache import KeySnapshot, TeamSnapshot
from metering.base import AdmitResult, LimitTicket
from metering.throttling import rate_limit_headers


def test_spend_at_or_above_a_threshold_has_crossed_it():
    crossed = thresholds_crossed(spent=Decimal("8"), budget=Decimal("10"), thresholds=[100, 50, 80, 80])
    assert crossed == [50, 80]
    assert thresholds_crossed(spent=Decimal("4.99"), budget=Decimal("10"), thresholds=[50]) == []
    assert thresholds_crossed(spent=Decimal("10"), budget=Decimal("10"), thresholds=[50, 100]) == [50, 100]
    assert thresholds_crossed(spent=Decimal("1"), budget=Decimal("0"), thresholds=[50]) == []


def test_the_signature_is_the_hex_hmac_sha256_of_the_raw_body():
    payload = budget_payload(
        scope="team",
        name="research",
        prefix="ignored1",
        threshold=80,
        spent=Decimal("80.50000000"),
        budget=Decimal("100.0000"),
        period="month",
        period_start=datetime(2026, 3, 1, tzinfo=UTC),
    )
    assert list(payload) == [
        "event",
        "scope",
        "name",
        "threshold",
        "spent_usd",
        "budget_usd",
        "period",
        "period_start",
    ]
    assert payload["spent_usd"] == "80.5" and payload["budget_usd"] == "100"
    assert payload["period_start"] == "2026-03-01T00:00:00Z"
    body = body_bytes(payload)
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert signature(body, "s3cret") == expected
    assert signature_valid(body, "s3cret", expected)
    assert not signature_valid(body + b" ", "s3cret", expected)
    assert not signature_valid(body, "other", expected)
    key_payload = budget_payload(
        scope="key", name="k", prefix="abcd1234", threshold=50, spent=Decimal(1), budget=Decimal(2), period="total",
        period_start=None,
    )  # fmt: skip
    assert key_payload["prefix"] == "abcd1234" and key_payload["period_start"] is None


def test_retries_back_off_exponentially_up_to_a_cap():
    assert [retry_delay(n) for n in (1, 2, 3, 4)] == [2, 4, 8, 16]
    assert retry_delay(30) == 600


def _key(models=(), team=None):
    return KeySnapshot(
        id="k", prefix="k", name="k", rpm=None, tpm=None, max_concurrent=None, allowed_models=frozenset(models),
        expiry=None, grace_until=None, revoked=False, budget_usd=None, budget_period="month", team=team,
    )  # fmt: skip


def test_a_keys_allowlist_is_intersected_with_its_teams():
    team = TeamSnapshot(id=1, name="t", allowed_models=frozenset({"a", "b"}))
    assert _key(("b", "c"), team).model_allowlist == {"b"}
    assert _key((), team).model_allowlist == {"a", "b"}
    assert _key(("c",), team).model_allowlist == frozenset()  # disjoint: nothing at all, not everything
    assert not _key(("c",), team).allows_model("c")
    assert _key(("c",), None).model_allowlist == {"c"}
    assert _key((), None).model_allowlist is None and _key((), None).allows_model("anything")


def test_headers_of_a_key_in_a_team_show_the_tighter_limit():
    ticket = LimitTicket(key_prefix="k", request_id="r", rpm=100, tpm=50)
    ticket.team = LimitTicket(key_prefix="k", request_id="r", scope="team:1", rpm=10)
    result = AdmitResult(status=0, rpm_count=3, rpm_reset_ms=100, tpm_used=20, tpm_reset_ms=200)
    result.team = AdmitResult(status=0, rpm_count=9, rpm_reset_ms=5000)
    headers = rate_limit_headers(ticket, result)
    assert headers["x-ratelimit-limit-requests"] == "10" and headers["x-ratelimit-remaining-requests"] == "1"
    assert headers["x-ratelimit-limit-tokens"] == "50" and headers["x-ratelimit-remaining-tokens"] == "30"
    assert ticket.parts() == [ticket, ticket.team] and ticket.team.subject == "key k"
