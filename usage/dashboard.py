"""Usage pictures for the admin: the panel on a key's admin page, and the usage dashboard. Both split usage by
endpoint (a table and a chart with one series per endpoint).

Charts are drawn in the browser by Chart.js, vendored under `usage/static/usage/vendor/` (no CDN):
the server renders HTML with the numbers embedded as JSON (`json_script`) and `usage/usage_charts.js`
turns each `<canvas data-usage-chart=KIND data-usage-data=ID>` into a chart. Every number shown also appears as
text, so the page reads without JavaScript. The queries are in `usage/selectors.py`.
"""

from datetime import datetime
from decimal import Decimal

from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.safestring import SafeString, mark_safe

from .selectors import (
    usage_budget_status,
    usage_daily_series,
    usage_daily_series_by_endpoint,
    usage_dashboard,
    usage_totals_by_endpoint,
)

PANEL_DAYS = 30


def format_usd(value) -> str:
    """`$1,234.57`; amounts under a cent keep four decimals (`$0.0042`), so that small spend stays visible."""
    value = Decimal(value or 0)
    if value and abs(value) < Decimal("0.01"):
        return f"${value:,.4f}"
    return f"${value:,.2f}"


def format_count(value) -> str:
    value = int(value or 0)
    if value >= 10_000_000:
        return f"{value / 1_000_000:,.1f} M"
    return f"{value:,}"


def format_rate(value: float) -> str:
    return f"{value * 100:.1f} %"


def _day_label(moment: datetime) -> str:
    return moment.strftime("%b %d")


def _series_payload(series: list[dict], *, hourly: bool = False) -> dict:
    return {
        "labels": [row["bucket"].strftime("%H:00") if hourly else _day_label(row["bucket"]) for row in series],
        "dates": [row["bucket"].isoformat() for row in series],
        "requests": [row["requests"] for row in series],
        "ok": [row["requests"] - row["errors"] for row in series],
        "errors": [row["errors"] - row["throttled"] for row in series],
        "throttled": [row["throttled"] for row in series],
        "prompt_tokens": [row["prompt_tokens"] for row in series],
        "completion_tokens": [row["completion_tokens"] for row in series],
        "tokens": [row["total_tokens"] for row in series],
        "cost": [float(row["cost_usd"]) for row in series],
        "error_rate": [round(row["error_rate"] * 100, 2) for row in series],
        "throttle_rate": [round(row["throttle_rate"] * 100, 2) for row in series],
    }


def _endpoint_series_payload(by_endpoint: dict[str, list[dict]]) -> dict:
    """Per-endpoint daily series for the `endpoints` chart: one entry per endpoint, in display order."""
    any_series = next(iter(by_endpoint.values()), [])
    return {
        "labels": [_day_label(row["bucket"]) for row in any_series],
        "series": [
            {
                "name": name,
                "requests": [row["requests"] for row in series],
                "tokens": [row["total_tokens"] for row in series],
                "cost": [float(row["cost_usd"]) for row in series],
            }
            for name, series in by_endpoint.items()
        ],
    }


def _endpoint_rows(rows: list[dict]) -> list[dict]:
    """Totals per endpoint (`usage_totals_by_endpoint`), with display strings for the endpoint tables."""
    return [
        {
            **row,
            "requests_display": f"{row['requests']:,}",
            "prompt_display": f"{row['prompt_tokens']:,}",
            "cached_display": f"{row['cached_tokens']:,}",
            "completion_display": f"{row['completion_tokens']:,}",
            "cost_display": format_usd(row["cost_usd"]),
            "error_rate_display": format_rate(row["error_rate"]) if row["requests"] else "-",
        }
        for row in rows
    ]


def _admin_url(name: str, *args) -> str | None:
    try:
        return reverse(name, args=args)
    except NoReverseMatch:
        return None


def key_usage_context(api_key, *, now: datetime | None = None, on_usage_page: bool = False) -> dict:
    """Template context for a key's usage panel (see `key_usage_panel`)."""
    now = now or timezone.now()
    series = usage_daily_series(key_prefix=api_key.prefix, days=PANEL_DAYS, now=now)
    by_endpoint = usage_daily_series_by_endpoint(key_prefix=api_key.prefix, days=PANEL_DAYS, now=now)
    endpoint_totals = usage_totals_by_endpoint(key_prefix=api_key.prefix, since=series[0]["bucket"])
    budget = usage_budget_status(api_key=api_key, now=now)
    totals = {
        "requests": sum(row["requests"] for row in series),
        "tokens": sum(row["total_tokens"] for row in series),
        "cost": sum((row["cost_usd"] for row in series), Decimal(0)),
        "errors": sum(row["errors"] for row in series),
    }
    last_used = getattr(api_key, "last_used_at", None)
    used_fraction = budget["used_fraction"]
    payload = {
        **_series_payload(series),
        "endpoints": _endpoint_series_payload(by_endpoint),
        "budget": {
            "budget": float(budget["budget_usd"]) if budget["budget_usd"] is not None else None,
            "spent": float(budget["spent_usd"]),
            "period": budget["period"],
            "renews_at": budget["renews_at"].isoformat() if budget["renews_at"] else None,
        },
    }
    return {
        "api_key": api_key,
        "dom_id": f"usage-{api_key.prefix}",
        "json_id": f"usage-{api_key.prefix}-data",
        "days": PANEL_DAYS,
        "payload": payload,
        "totals": {
            "requests": format_count(totals["requests"]),
            "tokens": format_count(totals["tokens"]),
            "cost": format_usd(totals["cost"]),
            "error_rate": format_rate(totals["errors"] / totals["requests"]) if totals["requests"] else "-",
        },
        "last_used_at": last_used,
        "endpoints": _endpoint_rows(endpoint_totals),
        "budget": {
            **budget,
            "budget_display": format_usd(budget["budget_usd"]) if budget["budget_usd"] is not None else None,
            "spent_display": format_usd(budget["spent_usd"]),
            "remaining_display": format_usd(budget["remaining_usd"]) if budget["remaining_usd"] is not None else None,
            "percent": None if used_fraction is None else round(used_fraction * 100, 1),
            "exhausted": used_fraction is not None and used_fraction >= 1,
        },
        "usage_page_url": None if on_usage_page else _admin_url("admin:usage_usagerecord_key", api_key.prefix),
        "records_url": _admin_url("admin:usage_usagerecord_changelist"),
    }


def key_usage_panel(api_key, *, on_usage_page: bool = False) -> SafeString:
    """HTML for a key's admin page: last 30 days of requests, tokens and cost, and spend against budget.

    Self-contained: it loads Chart.js and the chart script itself (deferred), so any admin page can embed it.
    """
    from django.template.loader import render_to_string

    if api_key is None or api_key.pk is None:  # the add form: nothing to show yet
        return mark_safe("")
    context = key_usage_context(api_key, on_usage_page=on_usage_page)
    return render_to_string("usage/key_usage_panel.html", context)


def key_usage_page(request, *, api_key, admin_site) -> TemplateResponse:
    """The admin page of one key's usage: the panel, on its own, with a link to the key."""
    context = {
        **admin_site.each_context(request),
        "title": f"Usage of {api_key.name} ({api_key.prefix})",
        "api_key": api_key,
        "panel": key_usage_panel(api_key, on_usage_page=True),
        "key_change_url": _admin_url("admin:apikeys_apikey_change", api_key.pk),
        "dashboard_url": _admin_url("admin:usage_usagerecord_dashboard"),
    }
    return TemplateResponse(request, "admin/usage/key_usage.html", context)


def dashboard_context(*, now: datetime | None = None, key_prefixes=None) -> dict:
    """Template context of the usage dashboard (see `usage_dashboard_page`); `key_prefixes` limits it to those
    keys."""
    data = usage_dashboard(now=now, key_prefixes=key_prefixes)
    today, period = data["today"], data["period"]

    def key_row(row):
        return {
            **row,
            "cost_display": format_usd(row["cost_usd"]),
            "requests_display": f"{row['requests']:,}",
            "tokens_display": f"{row['total_tokens']:,}",
            "error_rate_display": format_rate(row["errors"] / row["requests"]) if row["requests"] else "-",
            "usage_url": _admin_url("admin:usage_usagerecord_key", row.get("key_prefix", "")),
        }

    top_keys = [key_row(row) for row in data["top_keys"]]
    top_models = [key_row(row) for row in data["top_models"]]
    payload = {
        "daily": _series_payload(data["daily"]),
        "hourly": _series_payload(data["hourly"], hourly=True),
        "top_keys": {
            "labels": [f"{row['key_name']} ({row['key_prefix']})" for row in top_keys],
            "cost": [float(row["cost_usd"]) for row in top_keys],
            "requests": [row["requests"] for row in top_keys],
        },
        "top_models": {
            "labels": [row["model"] or "(none)" for row in top_models],
            "cost": [float(row["cost_usd"]) for row in top_models],
            "requests": [row["requests"] for row in top_models],
        },
        "daily_by_endpoint": _endpoint_series_payload(data["daily_by_endpoint"]),
    }
    cards = [
        ("Requests", format_count(today["requests"]), format_count(period["requests"])),
        ("Tokens", format_count(today["total_tokens"]), format_count(period["total_tokens"])),
        ("Cost", format_usd(today["cost_usd"]), format_usd(period["cost_usd"])),
        ("Error rate", format_rate(today["error_rate"]), format_rate(period["error_rate"])),
        ("Throttled", format_rate(today["throttle_rate"]), format_rate(period["throttle_rate"])),
    ]
    return {
        "days": data["days"],
        "now": data["now"],
        "cards": [{"label": label, "today": t, "period": p} for label, t, p in cards],
        "top_keys": top_keys,
        "top_models": top_models,
        "endpoints": _endpoint_rows(data["endpoints"]),
        "payload": payload,
        "has_data": period["requests"] > 0,
    }


def usage_dashboard_page(request, *, admin_site, key_prefixes=None) -> TemplateResponse:
    """The admin usage dashboard: totals, top keys and models, error and throttle rates over time (of
    `key_prefixes` only, when given: a team admin's)."""
    context = {
        **admin_site.each_context(request),
        "title": "Usage dashboard",
        "records_url": _admin_url("admin:usage_usagerecord_changelist"),
        **dashboard_context(key_prefixes=key_prefixes),
    }
    return TemplateResponse(request, "admin/usage/usage_dashboard.html", context)
