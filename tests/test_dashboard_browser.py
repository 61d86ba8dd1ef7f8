"""The usage pictures: the panel on a key's admin page and the admin usage dashboard.

Server-side checks use Django's test client; the browser test drives Debian's headless Chromium with Playwright
against a live gateway (the admin is served by the same ASGI app), checks that every chart was drawn by Chart.js
with real data points, and saves screenshots to `test-artifacts/`.
"""

import json
import random
import re
import time
import uuid
from datetime import UTC, timedelta
from decimal import Decimal

import openai
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tests.conftest import ARTIFACTS, CHROMIUM_ARGS
from usage.dashboard import key_usage_panel
from usage.models import UsageRecord
from usage.rollups import rollup_rebuild

# (input, output) USD per million tokens, for the seeded history.
PRICES = {
    "gpt-4o": (Decimal("2.50"), Decimal("10")),
    "gpt-4o-mini": (Decimal("0.15"), Decimal("0.60")),
    "text-embedding-3-small": (Decimal("0.02"), Decimal("0")),
}


def seed_history(keys_and_models, *, days=30, seed=5) -> int:
    """Plausible past usage for the last `days` days (today included): a few thousand records."""
    rng = random.Random(seed)
    now = timezone.now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    records = []
    for api_key, models, per_day in keys_and_models:
        for day in range(days):
            start = today - timedelta(days=days - 1 - day)
            weekday_factor = 0.45 if start.weekday() >= 5 else 1.0
            for _ in range(int(per_day * weekday_factor * rng.uniform(0.6, 1.3))):
                at = start + timedelta(seconds=rng.uniform(0, 86_399))
                if at > now:
                    continue
                model = rng.choice(models)
                roll = rng.random()
                status = 429 if roll < 0.03 else 502 if roll < 0.045 else 400 if roll < 0.055 else 200
                embedding = model.startswith("text-embedding")
                prompt = rng.randint(200, 2400) if status == 200 else 0
                completion = rng.randint(50, 900) if status == 200 and not embedding else 0
                price_in, price_out = PRICES[model]
                cost = (prompt * price_in + completion * price_out) / 1_000_000
                records.append(
                    UsageRecord(
                        request_id=f"req_{uuid.UUID(int=rng.getrandbits(128)).hex}",
                        api_key=api_key,
                        key_prefix=api_key.prefix,
                        key_name=api_key.name,
                        endpoint="embeddings" if embedding else "chat.completions",
                        model=model,
                        status=status,
                        error_type={429: "rate_limit_requests", 502: "upstream_error", 400: "invalid_request"}.get(
                            status, ""
                        ),
                        streamed=rng.random() < 0.5,
                        prompt_tokens=prompt,
                        completion_tokens=completion,
                        total_tokens=prompt + completion,
                        cost_usd=cost.quantize(Decimal("0.00000001")),
                        latency_ms=rng.uniform(300, 4000),
                        ttfb_ms=rng.uniform(80, 600),
                        created_at=at,
                    )
                )
    UsageRecord.objects.bulk_create(records, batch_size=2000)
    rollup_rebuild()  # records loaded without the writer: their rollups, as a backfill makes them
    return len(records)


@pytest.fixture
def staff_client(transactional_db):
    user = get_user_model().objects.create_superuser("usage-admin", "u@example.com", "pw-for-tests-only")
    client = Client()
    client.force_login(user)
    return client


# -- server side -----------------------------------------------------------------------------------------------


def test_dashboard_is_for_staff_with_the_view_permission(transactional_db, staff_client):
    url = reverse("admin:usage_usagerecord_dashboard")
    assert Client().get(url).status_code == 302  # anonymous: to the login page
    staff = get_user_model().objects.create_user("staff", "s@example.com", "pw-for-tests-only", is_staff=True)
    limited = Client()
    limited.force_login(staff)
    assert limited.get(url).status_code == 403
    staff.user_permissions.add(Permission.objects.get(codename="view_usagerecord"))
    assert limited.get(url).status_code == 200
    # The admin index links to it (for those who may see it).
    assert url in staff_client.get(reverse("admin:index")).content.decode()


def test_dashboard_embeds_its_data_and_loads_nothing_from_elsewhere(make_key, staff_client):
    # The dashboard counts every record: let the shared gateway's writer flush what earlier tests sent (it
    # writes every USAGE_FLUSH_SECONDS = 0.2 s), and start from an empty table.
    time.sleep(1.0)
    UsageRecord.objects.all().delete()
    api_key, _ = make_key(name="dash-key")
    seed_history([(api_key, ["gpt-4o-mini"], 20)], days=3)
    html = staff_client.get(reverse("admin:usage_usagerecord_dashboard")).content.decode()
    data = json.loads(
        re.search(r'<script id="usage-dashboard-data" type="application/json">(.*?)</script>', html).group(1)
    )
    records = UsageRecord.objects.filter(key_prefix=api_key.prefix)
    assert sum(data["daily"]["requests"]) == records.count()
    assert sum(data["daily"]["throttled"]) == records.filter(status=429).count()
    assert data["top_keys"]["labels"] == [f"dash-key ({api_key.prefix})"]
    sources = re.findall(r'<(?:script|link)[^>]+(?:src|href)="([^"]+)"', html)
    assert any(s.endswith("usage/vendor/chart.umd.min.js") for s in sources)
    assert not [s for s in sources if s.startswith(("http:", "https:", "//"))]


def test_key_panel_shows_spend_against_budget_and_renewal(make_key):
    api_key, _ = make_key(name="budgeted", budget_usd=Decimal("2"), budget_period="day")
    now = timezone.now()
    UsageRecord.objects.create(
        request_id="req_budget_1", api_key=api_key, key_prefix=api_key.prefix, key_name=api_key.name,
        model="gpt-4o", status=200, prompt_tokens=10, completion_tokens=5, total_tokens=15,
        cost_usd=Decimal("0.5"), created_at=now,
    )  # fmt: skip
    rollup_rebuild()
    html = str(key_usage_panel(api_key))
    tomorrow = (now.astimezone(UTC) + timedelta(days=1)).strftime("%b %-d, %Y")
    assert "$0.50 spent of $2.00 today (25.0 %)" in " ".join(html.split())
    assert f"renews {tomorrow}, 00:00 UTC" in html
    data = json.loads(re.search(r'type="application/json">(.*?)</script>', html).group(1))
    assert data["budget"] == {"budget": 2.0, "spent": 0.5, "period": "day", "renews_at": data["budget"]["renews_at"]}
    assert data["requests"][-1] == 1 and len(data["requests"]) == 30


# -- in the browser ------------------------------------------------------------------------------------------------


CHARTS_DRAWN = """
() => Array.from(document.querySelectorAll('canvas[data-usage-chart]')).map((canvas) => {
  const chart = window.Chart && window.Chart.getChart(canvas);
  const points = chart ? chart.data.datasets.reduce((n, d) => n + d.data.filter((v) => v > 0).length, 0) : 0;
  return {kind: canvas.dataset.usageChart, part: canvas.dataset.usagePart || '', width: canvas.width,
          height: canvas.height, drawn: !!chart, points};
})
"""


def assert_charts_drawn(page, expected: int) -> list[dict]:
    page.wait_for_function("() => window.Chart !== undefined", timeout=15_000)
    charts = page.evaluate(CHARTS_DRAWN)
    assert len(charts) == expected, charts
    for chart in charts:
        assert chart["drawn"] and chart["width"] > 0 and chart["height"] > 0, chart
        assert chart["points"] > 0, chart
    return charts


def live_traffic(gateway, raw_key, fake_upstream) -> None:
    """Today's requests through the gateway: plain, streamed, a failing upstream, a client that goes away."""
    client = gateway.client(raw_key)
    for i in range(6):
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": f"hi {i}"}])
    for chunk in client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "stream this"}], stream=True
    ):
        assert chunk is not None
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_body={"fake": {"status": 500}}
        )
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "long"}],
        stream=True,
        extra_body={"fake": {"chunks": 40, "chunk_delay_ms": 30}},
    )
    for n, _ in enumerate(stream):
        if n == 3:
            break
    stream.close()


@pytest.mark.browser
@pytest.mark.slow
def test_key_page_and_dashboard_render_their_charts(chromium, gateway, fake_upstream, make_key, staff_client):
    from playwright.sync_api import sync_playwright

    checkout, checkout_raw = make_key(name="checkout-service", budget_usd=Decimal("25"), budget_period="month")
    analytics, _ = make_key(name="analytics-batch")
    support, _ = make_key(name="support-bot", budget_usd=Decimal("3"), budget_period="day")
    sandbox, _ = make_key(name="dev-sandbox")
    seeded = seed_history(
        [
            (checkout, ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"], 140),
            (analytics, ["gpt-4o-mini"], 260),
            (support, ["gpt-4o"], 45),
            (sandbox, ["gpt-4o-mini", "gpt-4o"], 12),
        ]
    )
    live_traffic(gateway, checkout_raw, fake_upstream)
    deadline = time.monotonic() + 20
    while UsageRecord.objects.count() < seeded + 9 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert UsageRecord.objects.count() == seeded + 9

    session = staff_client.cookies["sessionid"].value
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": 1360, "height": 900}, device_scale_factor=1)
            context.add_cookies([{"name": "sessionid", "value": session, "url": gateway.url}])
            external = []
            context.route(
                re.compile(r"^(?!http://127\.0\.0\.1).*"),
                lambda route: (external.append(route.request.url), route.abort()),
            )
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))

            page.goto(f"{gateway.url}{reverse('admin:apikeys_apikey_change', args=[checkout.pk])}")
            assert page.locator(".tg-usage").count() == 1, page.content()[:2000]
            charts = assert_charts_drawn(page, expected=4)
            assert {c["kind"] for c in charts} == {"requests-tokens", "cost", "endpoints", "budget"}
            assert "renews" in page.locator(".tg-budget-text").inner_text()
            page.screenshot(path=str(ARTIFACTS / "key-change-page.png"), full_page=True)
            page.locator(".tg-usage").screenshot(path=str(ARTIFACTS / "key-usage-panel.png"))

            page.goto(f"{gateway.url}{reverse('admin:usage_usagerecord_key', args=[support.prefix])}")
            assert_charts_drawn(page, expected=4)
            page.screenshot(path=str(ARTIFACTS / "key-usage-page.png"), full_page=True)

            page.goto(f"{gateway.url}{reverse('admin:usage_usagerecord_dashboard')}")
            charts = assert_charts_drawn(page, expected=7)
            assert {(c["kind"], c["part"]) for c in charts} == {
                ("endpoints", "daily_by_endpoint"),
                ("requests-by-outcome", "daily"),
                ("cost-tokens", "daily"),
                ("rates", "daily"),
                ("rates", "hourly"),
                ("top", "top_keys"),
                ("top", "top_models"),
            }
            page.screenshot(path=str(ARTIFACTS / "usage-dashboard.png"), full_page=True)
            page.emulate_media(color_scheme="dark")  # the admin follows the system theme; so do the charts
            page.reload()
            assert_charts_drawn(page, expected=7)
            page.screenshot(path=str(ARTIFACTS / "usage-dashboard-dark.png"), full_page=True)
            page.emulate_media(color_scheme="light")

            page.goto(f"{gateway.url}{reverse('admin:index')}")
            page.screenshot(path=str(ARTIFACTS / "admin-index.png"))
            assert page.locator(".app-usage a", has_text="Usage dashboard").count() == 1
        finally:
            browser.close()
    assert errors == []
    assert external == []


def test_key_usage_page_and_filtered_records(make_key, staff_client):
    api_key, _ = make_key(name="paged")
    other, _ = make_key(name="other")
    seed_history([(api_key, ["gpt-4o-mini"], 8), (other, ["gpt-4o"], 8)], days=2)
    page = staff_client.get(reverse("admin:usage_usagerecord_key", args=[api_key.prefix]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "Usage of paged" in html and 'data-usage-chart="budget"' not in html  # no cap: no budget bar
    assert staff_client.get(reverse("admin:usage_usagerecord_key", args=["nosuchpx"])).status_code == 404
    listing = staff_client.get(reverse("admin:usage_usagerecord_changelist"), {"key_prefix": api_key.prefix})
    assert listing.status_code == 200
    shown = listing.context["cl"].result_list
    assert shown and {r.key_prefix for r in shown} == {api_key.prefix}
    # Read-only: no add, no change, no delete.
    record = UsageRecord.objects.filter(key_prefix=api_key.prefix).first()
    assert staff_client.get(reverse("admin:usage_usagerecord_add")).status_code == 403
    change = staff_client.post(reverse("admin:usage_usagerecord_change", args=[record.pk]), {"status": 500})
    assert change.status_code == 403
    record.refresh_from_db()
    assert record.status != 500


def test_model_prices_are_edited_in_the_admin(staff_client):
    from usage.models import ModelPrice

    price = ModelPrice.objects.create(
        model="gpt-test", input_per_million=Decimal("1"), output_per_million=Decimal("2"), max_output_tokens=1000
    )
    url = reverse("admin:usage_modelprice_change", args=[price.pk])
    form = staff_client.get(url)
    assert form.status_code == 200
    response = staff_client.post(
        url,
        {
            "model": "gpt-test",
            "input_per_million": "1.25",
            "output_per_million": "5",
            "max_output_tokens": "4096",
            "effective_from_0": price.effective_from.strftime("%Y-%m-%d"),
            "effective_from_1": price.effective_from.strftime("%H:%M:%S"),
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    price.refresh_from_db()
    assert (price.input_per_million, price.output_per_million, price.max_output_tokens) == (
        Decimal("1.25"), Decimal("5"), 4096,
    )  # fmt: skip
    assert staff_client.get(reverse("admin:usage_modelprice_changelist")).status_code == 200
