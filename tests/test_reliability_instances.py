"""Two Tollgate instances (two workers each) on different ports, sharing one database and one Redis,
with the load spread over both:

* every limit is exact across both: requests/min under sustained load, tokens/min, concurrent requests and a
  budget under bursts (the combined number of admitted requests is exactly what the limit allows; the recorded
  spend never passes the cap). On Redis (when REDIS_URL is set) and on the database store (`REDIS_URL=""`),
  which the two-instance tests of `test_rate_limits.py` do not cover;
* a key revoked through one instance's admin (staff login, CSRF token, the revoke page: the same service call
  every writer uses) is refused by both instances within a second while both are under load from that key.

The figures are printed (`pytest -s`).
"""

import asyncio
import os
import time
import uuid
from collections import Counter
from decimal import Decimal

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.db.models import Sum

from apikeys.models import APIKey
from completions.tokens import estimate_prompt_tokens
from tests.conftest import Gateway, SteadyLoad, admin_login, seconds_until_steady, server_password_hash
from usage.models import UsageRecord

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("REDIS_URL", "")
# A model no ModelPrice row matches, priced by the instances' fallback at 1,000 USD per million tokens: one token
# costs exactly 0.001 USD.
PRICED_MODEL = "reliability-priced-model"
TOKEN_USD = Decimal("0.001")
PRICING = {
    "PRICE_FALLBACK_INPUT_PER_MILLION": "1000",
    "PRICE_FALLBACK_OUTPUT_PER_MILLION": "1000",
    "USAGE_FLUSH_SECONDS": "0.1",
}
MESSAGES = [{"role": "user", "content": "shared between two instances"}]
PROMPT_ESTIMATE = estimate_prompt_tokens(MESSAGES)
REVOCATION_PROMISE = 1.0


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("redis", marks=pytest.mark.skipif(not REDIS_URL, reason="REDIS_URL is not set")),
        pytest.param("database"),
    ],
)
def pair(request, django_db_setup, django_db_blocker, fake_upstream, server_logs):
    """Two instances on one database and one limit store (Redis, or the database with `REDIS_URL=""`)."""
    env = dict(PRICING)
    if request.param == "database":
        env["REDIS_URL"] = ""
    started = []
    try:
        with django_db_blocker.unblock():
            for name in ("a", "b"):
                log = server_logs / f"pair-{request.param}-{name}.log"
                started.append(Gateway(upstream_url=fake_upstream.url, log_path=log, workers=2, env=env))
        yield tuple(started)
    finally:
        for server in started:
            server.stop()


def burst(targets, raw: str, n_each: int, **extra) -> Counter:
    """`n_each` requests to each gateway, all at once; a Counter of (status, error code)."""

    async def run():
        clients = [
            httpx.AsyncClient(
                base_url=gateway.url,
                headers={"Authorization": f"Bearer {raw}"},
                timeout=60,
                limits=httpx.Limits(max_connections=n_each),
            )
            for gateway in targets
        ]

        async def one(client):
            payload = {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}
            response = await client.post("/v1/chat/completions", json=payload)
            if response.status_code == 200:
                return (200, None)
            return (response.status_code, response.json()["error"]["code"])

        try:
            results = await asyncio.gather(*[one(client) for client in clients for _ in range(n_each)])
        finally:
            for client in clients:
                await client.aclose()
        return Counter(results)

    return asyncio.run(run())


# -- limits, exact across both instances ---------------------------------------------------------------------------


def test_requests_per_minute_exact_across_both_under_sustained_load(pair, make_key):
    _, raw = make_key(name="rpm-shared", rpm=30)
    load = SteadyLoad([g.url for g in pair], raw, threads=6, stream_every=3, pause=0.01, fresh_connections=False)
    load.start()
    time.sleep(4)
    sent = load.stop()
    by_status = Counter((s.status, s.code) for s in sent)
    by_instance = Counter(s.target for s in sent if s.status == 200)
    print(f"\nrpm=30 under sustained load on two instances: {dict(by_status)}, admitted per instance {by_instance}")
    assert not [s for s in sent if s.problem], [s for s in sent if s.problem][:3]
    assert by_status[(200, "")] == 30
    assert set(by_status) == {(200, ""), (429, "rate_limit_exceeded")}
    assert len(by_instance) == 2  # both instances admitted some: the count really was shared


def test_tokens_per_minute_exact_across_both(pair, make_key):
    max_tokens = 20
    per_request = PROMPT_ESTIMATE + max_tokens  # reserved, and (steered usage) really spent
    _, raw = make_key(name="tpm-shared", tpm=per_request * 12 + per_request // 2)
    usage = {"prompt_tokens": PROMPT_ESTIMATE, "completion_tokens": max_tokens}
    counts = burst(pair, raw, 30, max_tokens=max_tokens, fake={"usage": usage})
    print(f"\ntpm for 12.5 requests, 60 at once on two instances: {dict(counts)}")
    assert counts == Counter({(200, None): 12, (429, "rate_limit_exceeded"): 48})


def test_concurrent_requests_exact_across_both(pair, make_key, fake_upstream):
    _, raw = make_key(name="concurrency-shared", max_concurrent=4)
    marker = uuid.uuid4().hex
    started = time.monotonic()
    counts = burst(pair, raw, 15, user=marker, fake={"delay_ms": 4000})
    elapsed = time.monotonic() - started
    print(f"\nmax_concurrent=4, 30 slow requests at once on two instances: {dict(counts)} in {elapsed:.1f} s")
    assert counts == Counter({(200, None): 4, (429, "rate_limit_exceeded"): 26})
    assert elapsed < 8, "the burst took too long to be simultaneous; the count would not prove anything"
    assert len([r for r in fake_upstream.requests() if (r.get("json") or {}).get("user") == marker]) == 4


def test_budget_never_overspent_across_both(pair, make_key):
    max_tokens = 20
    worst_case = (PROMPT_ESTIMATE + max_tokens) * TOKEN_USD
    cap = worst_case * 10
    key, raw = make_key(name="budget-shared", budget_usd=cap, budget_period="day")
    # Each request really costs its worst case, so exactly ten fit, whichever instance they reach.
    usage = {"prompt_tokens": PROMPT_ESTIMATE, "completion_tokens": max_tokens}
    counts = burst(pair, raw, 30, model=PRICED_MODEL, max_tokens=max_tokens, fake={"usage": usage, "delay_ms": 300})
    assert counts == Counter({(200, None): 10, (429, "insufficient_quota"): 50}), dict(counts)

    deadline = time.monotonic() + 10
    while UsageRecord.objects.filter(api_key=key, status=200).count() < 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    spent = UsageRecord.objects.filter(api_key=key).aggregate(total=Sum("cost_usd"))["total"]
    print(f"\nbudget for 10, 60 at once on two instances: {dict(counts)}; spent {spent} USD of a {cap} USD cap")
    assert spent == cap  # ten requests at their worst case: at the cap, never past it


# -- revocation through one instance's admin, under load on both ---------------------------------------------------


def test_a_key_revoked_in_one_instances_admin_is_refused_by_both_within_a_second(pair, make_key, transactional_db):
    first, second = pair
    password = "reliability-admin-password"
    staff = get_user_model().objects.create_superuser("reliability-admin", "admin@example.com", None)
    staff.password = server_password_hash(password)
    staff.save(update_fields=["password"])
    key, raw = make_key(name="revoke-under-load")

    session, login = admin_login(first.url, staff.username, password)
    try:
        assert login.status_code == 302 and login.headers["location"] == "/admin/", login.text[:500]
        # Each request on a new connection: the load reaches both workers of both instances.
        load = SteadyLoad([first.url, second.url], raw, threads=6, stream_every=0, pause=0.01)
        load.start()
        try:
            time.sleep(1.5)
            posted_at = time.monotonic()
            answer = session.post(
                "/admin/apikeys/apikey/revoke/",
                data={"keys": key.prefix, "csrfmiddlewaretoken": session.cookies["csrftoken"]},
            )
            revoked_at = time.monotonic()
            time.sleep(2.5)
        finally:
            sent = load.stop()
    finally:
        session.close()
    assert answer.status_code == 302, answer.text[:500]
    assert APIKey.objects.get(pk=key.pk).revoked

    assert not [s for s in sent if s.problem], [s for s in sent if s.problem][:3]
    assert {s.status for s in sent} == {200, 401}, Counter(s.status for s in sent)
    figures = []
    for index, instance in enumerate(("the admin's instance", "the other instance")):
        mine = [s for s in sent if s.target == index]
        assert [s for s in mine if s.finished < posted_at and s.status != 200] == []
        refused_after = seconds_until_steady(mine, revoked_at, good=lambda s: s.status == 401)
        late = [s.started - revoked_at for s in mine if s.status == 200 and s.started > revoked_at]
        last_accepted = max(late, default=0.0)
        refused = [s for s in mine if s.started > revoked_at + REVOCATION_PROMISE]
        figures.append(
            f"{instance}: every request refused from {refused_after * 1000:.0f} ms after the admin confirmed the "
            f"revocation (its POST took {(revoked_at - posted_at) * 1000:.0f} ms); the last one accepted had "
            f"started {last_accepted * 1000:.0f} ms after; {len(refused)} refusals in the rest of the run"
        )
        assert refused_after is not None and refused_after < REVOCATION_PROMISE, refused_after
        assert last_accepted < REVOCATION_PROMISE
        assert len(refused) >= 20 and all(s.status == 401 and s.code == "invalid_api_key" for s in refused)
    print("\nrevocation under load:\n  " + "\n  ".join(figures))
