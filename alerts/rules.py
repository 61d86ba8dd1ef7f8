"""The pure rules of alerts: which thresholds a spend has crossed, the webhook's body and signature, the backoff.

No database, no settings: the scanner and the sender (and the unit tests) call these.
"""

import hashlib
import hmac
from datetime import datetime
from decimal import Decimal

import orjson

SIGNATURE_HEADER = "X-Tollgate-Signature"
BUDGET_EVENT = "budget.threshold"
EXPIRY_EVENT = "key.expiring"


def thresholds_crossed(*, spent: Decimal, budget: Decimal, thresholds) -> list[int]:
    """The thresholds (whole percentages) that `spent` has reached: spend at or above a threshold has crossed it.

    A budget of 0 has no meaningful percentages: nothing is crossed.
    """
    if budget <= 0:
        return []
    return sorted(t for t in set(thresholds) if spent * 100 >= budget * t)


def usd(value: Decimal) -> str:
    """An amount as the alerts write it: a decimal string, trailing zeros dropped (`"12.5"`, `"0.0012"`)."""
    text = f"{Decimal(value).normalize():f}"
    return text


def budget_payload(
    *,
    scope: str,
    name: str,
    prefix: str | None,
    threshold: int,
    spent: Decimal,
    budget: Decimal,
    period: str,
    period_start: datetime | None,
) -> dict:
    """The JSON body of a `budget.threshold` alert. `prefix` only for keys."""
    payload: dict[str, object] = {"event": BUDGET_EVENT, "scope": scope, "name": name}
    if scope == "key":
        payload["prefix"] = prefix
    payload.update(
        {
            "threshold": int(threshold),
            "spent_usd": usd(spent),
            "budget_usd": usd(budget),
            "period": period,
            "period_start": period_start.isoformat().replace("+00:00", "Z") if period_start else None,
        }
    )
    return payload


def expiry_payload(*, name: str, prefix: str, expires: datetime) -> dict:
    """The JSON body of a `key.expiring` alert."""
    return {
        "event": EXPIRY_EVENT,
        "scope": "key",
        "name": name,
        "prefix": prefix,
        "expires": expires.isoformat().replace("+00:00", "Z"),
    }


def body_bytes(payload: dict) -> bytes:
    """The exact bytes sent (and signed)."""
    return orjson.dumps(payload)


def signature(body: bytes, secret: str) -> str:
    """`sha256=<hex HMAC-SHA256 of the raw body>`, the value of X-Tollgate-Signature."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def signature_valid(body: bytes, secret: str, header: str) -> bool:
    """What a receiver checks (constant-time)."""
    return hmac.compare_digest(signature(body, secret), header or "")


def retry_delay(attempts: int, *, base: float = 2.0, cap: float = 600.0) -> float:
    """Seconds before the next try after `attempts` failed ones: 2, 4, 8, … up to `cap`."""
    return min(base ** max(attempts, 1), cap)


def subject_line(payload: dict) -> str:
    """An email subject for an alert."""
    who = f"{payload['scope']} {payload['name']}"
    if payload["event"] == EXPIRY_EVENT:
        return f"[Tollgate] API key {payload['name']} ({payload['prefix']}) expires {payload['expires'][:10]}"
    return f"[Tollgate] {who} has used {payload['threshold']}% of its budget"
