"""Read queries over usage: totals per key and model, daily and hourly series, dashboard aggregates, budget spend.

They read the rollups (`UsageRollup` per hour, `UsageDailyRollup` per day, written with the records by the usage
writer), never the records, so their cost grows with keys x models x days (or hours), not with requests: spans of
whole UTC days (the 30-day pictures, report days, budget periods) read the daily ones. Bounds (`since`,
`until`) must therefore be whole UTC hours (days, budget periods and report days all are); anything else raises
ValueError.

Every function takes aware datetimes (UTC) and returns plain dicts and lists, ready for a report, a template or
`json_script`. Days and hours are UTC buckets. Costs are `Decimal`s with 8 decimal places (the records'
precision; rollups hold exact integers of 10⁻⁸ USD).
"""

from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Max, Q, QuerySet, Sum
from django.db.models.functions import TruncDay, TruncHour
from django.utils import timezone

from apikeys.models import APIKey
from metering.base import BudgetWindow

from .endpoint_names import known_endpoints
from .models import Outcome, UsageDailyRollup, UsageRecord, UsageRollup
from .pricing import units_to_usd

ZERO = Decimal("0")


def _aggregates() -> dict:
    # The two that read the `requests` column come first: once the `requests` sum is named, F("requests") means it.
    return {
        "errors": Sum("requests", filter=~Q(outcome=Outcome.OK)),
        "throttled": Sum("requests", filter=Q(outcome=Outcome.THROTTLED)),
        "requests": Sum("requests"),
        "prompt_tokens": Sum("prompt_tokens"),
        "cached_tokens": Sum("cached_tokens"),
        "completion_tokens": Sum("completion_tokens"),
        "total_tokens": Sum("total_tokens"),
        "cost_units": Sum("cost_units"),
    }


_COUNTS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "total_tokens", "errors", "throttled")


def _clean(row: dict) -> dict:
    """Sums over no rows are None: make them zero; `cost_units` becomes `cost_usd` (a Decimal)."""
    for name in _COUNTS:
        if name in row:
            row[name] = int(row[name] or 0)
    if "cost_units" in row:
        row["cost_usd"] = units_to_usd(int(row.pop("cost_units") or 0))
    return row


def _whole_hour(moment: datetime | None, name: str) -> None:
    if moment is not None and (moment.minute or moment.second or moment.microsecond or moment.utcoffset() is None):
        raise ValueError(f"usage totals are hourly: {name} must be an aware datetime on a whole hour, got {moment}")


def _whole_day(moment: datetime | None) -> bool:
    return moment is None or moment.astimezone(UTC).hour == 0


def usage_rollups(
    *,
    key_prefix: str | None = None,
    key_prefixes: Iterable[str] | QuerySet | None = None,
    endpoint: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    hourly: bool = False,
) -> QuerySet:
    """The rollups of one key (by prefix), of several keys (`key_prefixes`: a list or a `values("prefix")`
    subquery) or all, of one endpoint or all, for `since <= hour < until` (either bound optional; both whole
    hours): the daily ones when both bounds are whole UTC days (or absent) and `hourly` is not asked for, else the
    hourly ones. Both have the same fields (`hour` is a day's midnight in the daily ones)."""
    _whole_hour(since, "since")
    _whole_hour(until, "until")
    daily = not hourly and _whole_day(since) and _whole_day(until)
    model = UsageDailyRollup if daily else UsageRollup
    return _narrowed(model.objects.all(), "hour", key_prefix, key_prefixes, endpoint, since, until)


def usage_records(
    *,
    key_prefix: str | None = None,
    key_prefixes: Iterable[str] | QuerySet | None = None,
    endpoint: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> QuerySet:
    """Records of one key (by prefix), of several keys (`key_prefixes`: a list or a `values("prefix")` subquery)
    or all, of one endpoint or all, with `since <= created_at < until` (either bound optional). The records
    themselves (the admin's list, exports); totals come from `usage_rollups`."""
    return _narrowed(UsageRecord.objects.all(), "created_at", key_prefix, key_prefixes, endpoint, since, until)


def usage_totals_by_key_model(
    *,
    key_prefix: str | None = None,
    key_prefixes: Iterable[str] | QuerySet | None = None,
    endpoint: str | None = None,
    by_endpoint: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict]:
    """One row per (key, model) of one key, of `key_prefixes` (e.g. `team_key_prefixes(team)`) or of all:
    `key_name, key_prefix, model, requests, prompt_tokens, cached_tokens,
    completion_tokens, total_tokens, cost_usd`, ordered by key name, prefix and model. `endpoint` keeps that
    endpoint's records only; `by_endpoint` makes it one row per (key, model, endpoint), with an `endpoint` key,
    ordered by endpoint last.

    A key is identified by its prefix; its name is the latest one recorded (a key renamed mid-period stays one
    row).
    """
    group = ("key_prefix", "model", "endpoint") if by_endpoint else ("key_prefix", "model")
    rows = (
        usage_rollups(key_prefix=key_prefix, key_prefixes=key_prefixes, endpoint=endpoint, since=since, until=until)
        .order_by()
        .values(*group)
        .annotate(
            key_name=Max("key_name"),
            requests=Sum("requests"),
            prompt_tokens=Sum("prompt_tokens"),
            cached_tokens=Sum("cached_tokens"),
            completion_tokens=Sum("completion_tokens"),
            total_tokens=Sum("total_tokens"),
            cost_units=Sum("cost_units"),
        )
    )
    out = [_clean(dict(row)) for row in rows]
    out.sort(key=lambda row: (row["key_name"].lower(), row["key_prefix"], row["model"], row.get("endpoint", "")))
    return out


def team_key_prefixes(team) -> QuerySet:
    """The prefixes of the keys now in `team` (a subquery for `key_prefixes=`)."""
    return APIKey.objects.filter(team=team).values("prefix")


def usage_endpoint_known(endpoint: str) -> bool:
    """True for an endpoint the relay serves or that some usage record names."""
    return endpoint in known_endpoints() or UsageDailyRollup.objects.filter(endpoint=endpoint).exists()


def endpoint_order(names: Iterable[str]) -> list[str]:
    """Endpoint names in a stable display order: the known ones as listed, then any others by name."""
    names = set(names)
    known = known_endpoints()
    return [name for name in known if name in names] + sorted(names - set(known))


def usage_totals_by_endpoint(
    *,
    key_prefix: str | None = None,
    key_prefixes=None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict]:
    """One row per endpoint with usage: `endpoint, requests, prompt_tokens, cached_tokens, completion_tokens,
    total_tokens, cost_usd, errors, throttled, error_rate`, in `endpoint_order`."""
    rows = {
        row["endpoint"]: _clean(dict(row))
        for row in usage_rollups(key_prefix=key_prefix, key_prefixes=key_prefixes, since=since, until=until)
        .order_by()
        .values("endpoint")
        .annotate(**_aggregates())
    }
    out = []
    for name in endpoint_order(rows):
        row = rows[name]
        row["error_rate"] = row["errors"] / row["requests"] if row["requests"] else 0.0
        out.append(row)
    return out


def usage_key_prefix_known(key_prefix: str) -> bool:
    """True when some usage of that key prefix is recorded (its rollups outlive purged records)."""
    return UsageRollup.objects.filter(key_prefix=key_prefix).exists()


def _day_start(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)


def _series(records: QuerySet, *, trunc: Any, start: datetime, step: timedelta, count: int) -> list[dict]:
    found = {}
    for row in records.order_by().annotate(bucket=trunc("hour", tzinfo=UTC)).values("bucket").annotate(**_aggregates()):
        found[row["bucket"].astimezone(UTC)] = _clean(row)
    return _fill(found, start=start, step=step, count=count)


def _fill(found: dict[datetime, dict], *, start: datetime, step: timedelta, count: int) -> list[dict]:
    """`count` buckets from `start`, zeros where `found` has none, with their error and throttle rates."""
    series = []
    for i in range(count):
        bucket = start + step * i
        row = found.get(bucket) or _clean({name: None for name in _aggregates()})
        row["bucket"] = bucket
        row["error_rate"] = row["errors"] / row["requests"] if row["requests"] else 0.0
        row["throttle_rate"] = row["throttled"] / row["requests"] if row["requests"] else 0.0
        series.append(row)
    return series


def usage_daily_series_by_endpoint(
    *, key_prefix: str | None = None, key_prefixes=None, days: int = 30, now: datetime | None = None
) -> dict[str, list[dict]]:
    """Like `usage_daily_series`, one series per endpoint that has records in the span (in `endpoint_order`;
    `{}` when there are none). Each day's row is that endpoint's alone."""
    start = _day_start(now or timezone.now()) - timedelta(days=days - 1)
    records = usage_rollups(key_prefix=key_prefix, key_prefixes=key_prefixes, since=start)
    found: dict[str, dict[datetime, dict]] = {}
    for row in (
        records.order_by()
        .annotate(bucket=TruncDay("hour", tzinfo=UTC))
        .values("endpoint", "bucket")
        .annotate(**_aggregates())
    ):
        found.setdefault(row["endpoint"], {})[row["bucket"].astimezone(UTC)] = _clean(row)
    out = {}
    for name in endpoint_order(found):
        out[name] = _fill(found[name], start=start, step=timedelta(days=1), count=days)
    return out


def usage_daily_series(
    *, key_prefix: str | None = None, key_prefixes=None, days: int = 30, now: datetime | None = None
) -> list[dict]:
    """The last `days` UTC days up to today, oldest first, zeros included: per day `bucket` (midnight UTC),
    `requests, prompt_tokens, completion_tokens, total_tokens, cost_usd, errors, throttled, error_rate,
    throttle_rate` (rates are shares of the day's requests: status >= 400, status 429)."""
    start = _day_start(now or timezone.now()) - timedelta(days=days - 1)
    records = usage_rollups(key_prefix=key_prefix, key_prefixes=key_prefixes, since=start)
    return _series(records, trunc=TruncDay, start=start, step=timedelta(days=1), count=days)


def usage_hourly_series(
    *, key_prefix: str | None = None, key_prefixes=None, hours: int = 24, now: datetime | None = None
) -> list[dict]:
    """Like `usage_daily_series`, per UTC hour over the last `hours` hours (the current hour included)."""
    current = (now or timezone.now()).astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    start = current - timedelta(hours=hours - 1)
    records = usage_rollups(key_prefix=key_prefix, key_prefixes=key_prefixes, since=start, hourly=True)
    return _series(records, trunc=TruncHour, start=start, step=timedelta(hours=1), count=hours)


def usage_totals(
    *,
    key_prefix: str | None = None,
    key_prefixes: Iterable[str] | QuerySet | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict:
    """Totals over a span, of one key, several, or all: `requests, prompt_tokens, cached_tokens,
    completion_tokens, total_tokens, cost_usd, errors, throttled, error_rate, throttle_rate`."""
    records = usage_rollups(key_prefix=key_prefix, key_prefixes=key_prefixes, since=since, until=until)
    row = _clean(records.aggregate(**_aggregates()))
    row["error_rate"] = row["errors"] / row["requests"] if row["requests"] else 0.0
    row["throttle_rate"] = row["throttled"] / row["requests"] if row["requests"] else 0.0
    return row


def usage_top_keys(*, since: datetime, limit: int = 10, key_prefixes=None) -> list[dict]:
    """The keys that spent most since `since` (then most requests): `key_prefix, key_name, requests,
    total_tokens, cost_usd, errors, throttled`."""
    rows = (
        usage_rollups(since=since, key_prefixes=key_prefixes)
        .order_by()
        .values("key_prefix")
        .annotate(key_name=Max("key_name"), **_aggregates())
        .order_by("-cost_units", "-requests", "key_prefix")[:limit]
    )
    return [_clean(dict(row)) for row in rows]


def usage_top_models(*, since: datetime, limit: int = 10, key_prefixes=None) -> list[dict]:
    """The models that cost most since `since` (then most requests): `model, requests, total_tokens,
    cost_usd, errors, throttled`."""
    rows = (
        usage_rollups(since=since, key_prefixes=key_prefixes)
        .order_by()
        .values("model")
        .annotate(**_aggregates())
        .order_by("-cost_units", "-requests", "model")[:limit]
    )
    return [_clean(dict(row)) for row in rows]


def usage_lineage_prefixes(api_key: APIKey) -> list[str]:
    """The prefixes of every key of `api_key`'s rotation lineage (`APIKey.lineage`), itself included."""
    lineage = api_key.lineage or api_key.prefix
    prefixes = set(APIKey.objects.filter(lineage=lineage).values_list("prefix", flat=True))
    prefixes.add(api_key.prefix)
    return sorted(prefixes)


def usage_budget_status(*, api_key: APIKey, now: datetime | None = None) -> dict:
    """Spend of `api_key`'s rotation lineage in its current budget period against its cap: `budget_usd` (None =
    no cap), `period`, `period_start`, `renews_at` (None for `total`), `spent_usd`, `remaining_usd`,
    `used_fraction`, `lineage_keys` (how many keys' spend is counted: 1 for a key never rotated).

    Spend counts every key of the lineage, as budget enforcement does (metering.base.budget_spent_in_database):
    a successor starts with its predecessors' spend, so the panel and a 429 agree.
    """
    # The same period boundaries as budget enforcement (metering/), so the panel and a 429 agree.
    window = BudgetWindow.at(api_key.budget_period, now or timezone.now())
    start, renews = window.start, window.renews_at
    prefixes = usage_lineage_prefixes(api_key)
    spent = usage_totals(key_prefixes=prefixes, since=start, until=renews)["cost_usd"]
    budget = api_key.budget_usd
    remaining = None if budget is None else max(budget - spent, ZERO)
    fraction = None if not budget else float(spent / budget)
    return {
        "budget_usd": budget,
        "period": api_key.budget_period,
        "period_start": start,
        "renews_at": renews,
        "spent_usd": spent,
        "remaining_usd": remaining,
        "used_fraction": fraction,
        "lineage_keys": len(prefixes),
    }


def usage_team_budget_status(*, team, now: datetime | None = None) -> dict:
    """Spend of the keys now in `team` in the team's current budget period: `budget_usd`, `period`,
    `period_start`, `renews_at`, `spent_usd` (as enforcement counts it: metering.base.budget_spent_in_database)."""
    window = BudgetWindow.at(team.budget_period, now or timezone.now())
    spent = usage_totals(key_prefixes=team_key_prefixes(team), since=window.start, until=window.renews_at)["cost_usd"]
    return {
        "budget_usd": team.budget_usd,
        "period": team.budget_period,
        "period_start": window.start,
        "renews_at": window.renews_at,
        "spent_usd": spent,
    }


def usage_budgets_spent(*, keys: Iterable[APIKey] = (), teams: Iterable = (), now: datetime | None = None) -> tuple:
    """The spend in its current budget period of each of `keys`' lineages and of each of `teams`, as
    `usage_budget_status` and `usage_team_budget_status` count it, in two queries whatever their number (the
    keys of those lineages and teams, then one pass over their rollups with a sum per period): `({key pk:
    Decimal}, {team pk: Decimal})`. What the budget-alert scanner runs every few seconds in every worker."""
    now = now or timezone.now()
    keys, teams = list(keys), list(teams)
    windows = {period: BudgetWindow.at(period, now) for period in ("day", "month")}
    lineages = {key.lineage or key.prefix for key in keys}
    members = list(
        APIKey.objects.filter(Q(lineage__in=lineages) | Q(team__in=[team.pk for team in teams])).values_list(
            "prefix", "lineage", "team_id"
        )
    )
    prefixes = {prefix for prefix, _, _ in members} | {key.prefix for key in keys}
    sums = {
        name: Sum("cost_units", filter=Q(hour__gte=window.start, hour__lt=window.renews_at))
        for name, window in windows.items()
    }
    spent: dict[str, dict[str, int]] = {
        row["key_prefix"]: row
        # Budget periods are whole UTC days: the daily rollups.
        for row in UsageDailyRollup.objects.filter(key_prefix__in=prefixes)
        .order_by()
        .values("key_prefix")
        .annotate(total=Sum("cost_units"), **sums)
    }

    def total(of_prefixes: Iterable[str], period: str) -> Decimal:
        column = period if period in windows else "total"
        return units_to_usd(sum(int(spent.get(prefix, {}).get(column) or 0) for prefix in set(of_prefixes)))

    by_key = {}
    for key in keys:
        lineage = key.lineage or key.prefix
        lineage_prefixes = [prefix for prefix, of, _ in members if of == lineage] + [key.prefix]
        by_key[key.pk] = total(lineage_prefixes, key.budget_period)
    by_team = {team.pk: total([p for p, _, of in members if of == team.pk], team.budget_period) for team in teams}
    return by_key, by_team


def usage_dashboard(*, now: datetime | None = None, days: int = 30, top: int = 10, key_prefixes=None) -> dict:
    """Everything the admin dashboard shows: `today` and `period` totals, `daily` (last `days` days) and
    `hourly` (last 24 h) series, `top_keys` and `top_models` over the period, `endpoints` (totals per endpoint
    over the period, `usage_totals_by_endpoint`) and `daily_by_endpoint` (`usage_daily_series_by_endpoint`).
    `key_prefixes` (a list or a subquery) limits all of it to those keys (a team admin's dashboard)."""
    now = now or timezone.now()
    today = _day_start(now)
    since = today - timedelta(days=days - 1)
    return {
        "now": now,
        "days": days,
        "today": usage_totals(since=today, key_prefixes=key_prefixes),
        "period": usage_totals(since=since, key_prefixes=key_prefixes),
        "daily": usage_daily_series(days=days, now=now, key_prefixes=key_prefixes),
        "hourly": usage_hourly_series(hours=24, now=now, key_prefixes=key_prefixes),
        "top_keys": usage_top_keys(since=since, limit=top, key_prefixes=key_prefixes),
        "top_models": usage_top_models(since=since, limit=top, key_prefixes=key_prefixes),
        "endpoints": usage_totals_by_endpoint(since=since, key_prefixes=key_prefixes),
        "daily_by_endpoint": usage_daily_series_by_endpoint(days=days, now=now, key_prefixes=key_prefixes),
    }


def day_bounds(first: date | None, last: date | None) -> tuple[datetime | None, datetime | None]:
    """[since, until) datetimes for the UTC days `first` .. `last`, both inclusive (either may be None)."""
    since = datetime(first.year, first.month, first.day, tzinfo=UTC) if first else None
    until = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1) if last else None
    return since, until


REPORT_COLUMNS = ("key_name", "key_prefix", "model", "requests", "prompt_tokens", "completion_tokens", "cost_usd")
REPORT_COLUMNS_BY_ENDPOINT = ("key_name", "key_prefix", "model", "endpoint", *REPORT_COLUMNS[3:])
COST_QUANTUM = Decimal("0.00000001")


def format_cost(value) -> str:
    """A cost as reports write it: a string with exactly 8 decimals (the stored precision)."""
    return f"{Decimal(value or 0).quantize(COST_QUANTUM):f}"


def usage_report_rows(
    *,
    key_prefix: str | None = None,
    key_prefixes: Iterable[str] | QuerySet | None = None,
    endpoint: str | None = None,
    by_endpoint: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[dict]:
    """The rows of `usage_report` (and of the management API's usage): exactly REPORT_COLUMNS (or
    REPORT_COLUMNS_BY_ENDPOINT), `cost_usd` formatted by `format_cost`."""
    columns = REPORT_COLUMNS_BY_ENDPOINT if by_endpoint else REPORT_COLUMNS
    totals = usage_totals_by_key_model(
        key_prefix=key_prefix,
        key_prefixes=key_prefixes,
        endpoint=endpoint,
        by_endpoint=by_endpoint,
        since=since,
        until=until,
    )
    rows = [{name: row[name] for name in columns} for row in totals]
    for row in rows:
        row["cost_usd"] = format_cost(row["cost_usd"])
    return rows


def _narrowed(queryset: QuerySet, time_field: str, key_prefix, key_prefixes, endpoint, since, until) -> QuerySet:
    """`queryset` filtered by each criterion that is given (None: any), `time_field` in [since, until)."""
    criteria = {
        "key_prefix": key_prefix,
        "key_prefix__in": key_prefixes,
        "endpoint": endpoint,
        f"{time_field}__gte": since,
        f"{time_field}__lt": until,
    }
    return queryset.filter(**{lookup: value for lookup, value in criteria.items() if value is not None})
