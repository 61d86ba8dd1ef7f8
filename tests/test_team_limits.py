"""Teams share limits and a budget across their keys, exactly, across workers and instances, on Redis (when
REDIS_URL is set) and on the database store (`REDIS_URL=""`, SQLite or PostgreSQL):

* a team budget shared by two keys, hit by 50 concurrent requests through two instances: the spend recorded never
  passes the cap, and afterwards both keys get 429 `insufficient_quota` naming the team;
* a team's requests per minute is exact across its keys; a request refused by the team counts against nothing
  (not against its key's own limit either), at the store;
* a 429 names the team when the team is at its limit and the key when the key is;
* a key's allowlist is intersected with its team's.

The figures are printed (`pytest -s`).
"""

import asyncio
import os
import time
import uuid
from collections import Counter
from decimal import Decimal

import httpx
import openai
import pytest
from django.db.models import Sum

from apikeys.services import team_create
from completions.tokens import estimate_prompt_tokens
from tests.conftest import Gateway
from usage.models import UsageRecord

pytestmark = pytest.mark.slow

REDIS_URL = os.environ.get("REDIS_URL", "")
PRICED_MODEL = "team-priced-model"  # no ModelPrice row: the fallback prices one token at exactly 0.001 USD
TOKEN_USD = Decimal("0.001")
ENV = {
    "PRICE_FALLBACK_INPUT_PER_MILLION": "1000",
    "PRICE_FALLBACK_OUTPUT_PER_MILLION": "1000",
    "USAGE_FLUSH_SECONDS": "0.1",
}
MESSAGES = [{"role": "user", "content": "a team shares this"}]
PROMPT_ESTIMATE = estimate_prompt_tokens(MESSAGES)


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("redis", marks=pytest.mark.skipif(not REDIS_URL, reason="REDIS_URL is not set")),
        pytest.param("database"),
    ],
)
def pair(request, django_db_setup, django_db_blocker, fake_upstream, server_logs):
    """Two instances of two workers on one database and one limit store."""
    env = dict(ENV)
    if request.param == "database":
        env["REDIS_URL"] = ""
    started = []
    try:
        with django_db_blocker.unblock():
            for name in ("a", "b"):
                log = server_logs / f"teams-{request.param}-{name}.log"
                started.append(Gateway(upstream_url=fake_upstream.url, log_path=log, workers=2, env=env))
        yield tuple(started)
    finally:
        for server in started:
            server.stop()


def burst(requests: list[tuple[str, str]], **extra) -> list[tuple[str, int, str | None, str]]:
    """Send every (gateway url, raw key) request at once; (raw key, status, error code, error message) each."""

    async def run():
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=len(requests))) as client:

            async def one(url, raw):
                payload = {"model": "gpt-4o-mini", "messages": MESSAGES, **extra}
                response = await client.post(
                    f"{url}/v1/chat/completions", json=payload, headers={"Authorization": f"Bearer {raw}"}
                )
                if response.status_code == 200:
                    return (raw, 200, None, "")
                error = response.json()["error"]
                return (raw, response.status_code, error["code"], error["message"])

            return await asyncio.gather(*[one(url, raw) for url, raw in requests])

    return asyncio.run(run())


def test_team_budget_shared_by_two_keys_on_two_instances_is_never_overspent(pair, make_key):
    max_tokens = 20
    worst_case = (PROMPT_ESTIMATE + max_tokens) * TOKEN_USD
    cap = worst_case * 12
    team = team_create(name=f"budget-{uuid.uuid4().hex[:6]}", actor="test", budget_usd=cap, budget_period="day")
    _, raw_first = make_key(name="team-key-1", team=team)
    _, raw_second = make_key(name="team-key-2", team=team)
    usage = {"prompt_tokens": PROMPT_ESTIMATE, "completion_tokens": max_tokens}
    # 50 at once: both keys on both instances (each request really costs its worst case: exactly 12 fit).
    requests = [(pair[i % 2].url, (raw_first, raw_second)[(i // 2) % 2]) for i in range(50)]
    results = burst(requests, model=PRICED_MODEL, max_tokens=max_tokens, fake={"usage": usage, "delay_ms": 300})
    counts = Counter((status, code) for _, status, code, _ in results)
    assert counts == Counter({(200, None): 12, (429, "insufficient_quota"): 38}), dict(counts)
    refusals = {message for _, status, _, message in results if status == 429}
    assert all(f"The budget of team {team.name} is spent" in message for message in refusals), refusals
    # Which key wins each of the 12 is a race; each key sent 25, so each is refused by the team's budget.
    assert {raw for raw, status, _, _ in results if status == 429} == {raw_first, raw_second}

    deadline = time.monotonic() + 10
    while UsageRecord.objects.filter(api_key__team=team, status=200).count() < 12 and time.monotonic() < deadline:
        time.sleep(0.1)
    spent = UsageRecord.objects.filter(api_key__team=team).aggregate(total=Sum("cost_usd"))["total"]
    print(f"\nteam budget for 12, 50 at once over two keys and two instances: {dict(counts)}; spent {spent} of {cap}")
    assert spent == cap  # at the cap, never past it

    # Afterwards both keys, on both instances, are refused: the team's budget is spent.
    for gateway in pair:
        for raw in (raw_first, raw_second):
            with pytest.raises(openai.RateLimitError) as refused:
                gateway.client(raw).chat.completions.create(model=PRICED_MODEL, messages=MESSAGES, max_tokens=1)
            assert refused.value.code == "insufficient_quota"
            assert f"team {team.name}" in refused.value.message


def test_team_requests_per_minute_exact_across_its_keys(pair, make_key):
    team = team_create(name=f"rpm-{uuid.uuid4().hex[:6]}", actor="test", rpm=15)
    keys = [make_key(name=f"team-rpm-{i}", team=team)[1] for i in range(3)]
    requests = [(pair[i % 2].url, keys[i % 3]) for i in range(45)]
    results = burst(requests)
    counts = Counter((status, code) for _, status, code, _ in results)
    print(f"\nteam rpm=15, 45 at once over three keys and two instances: {dict(counts)}")
    assert counts == Counter({(200, None): 15, (429, "rate_limit_exceeded"): 30})
    messages = {message for _, status, _, message in results if status == 429}
    assert all(f"Rate limit reached for team {team.name} on requests per min (RPM): Limit 15" in m for m in messages)


def test_a_429_names_the_key_when_the_key_is_at_its_limit(pair, make_key):
    team = team_create(name=f"roomy-{uuid.uuid4().hex[:6]}", actor="test", rpm=1000)
    key, raw = make_key(name="tight-key", team=team, rpm=2)
    client = pair[0].client(raw)
    for _ in range(2):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    with pytest.raises(openai.RateLimitError) as refused:
        pair[1].client(raw).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert f"Rate limit reached for key {key.prefix} on requests per min (RPM): Limit 2" in refused.value.message


def test_a_keys_allowlist_is_intersected_with_its_teams(pair, make_key):
    team = team_create(name=f"models-{uuid.uuid4().hex[:6]}", actor="test", allowed_models=["gpt-4o-mini", "gpt-4o"])
    _, narrow = make_key(name="narrow", team=team, allowed_models=["gpt-4o", "o3"])
    _, open_key = make_key(name="open", team=team)
    client = pair[0].client(narrow)
    assert sorted(m.id for m in client.models.list()) == ["gpt-4o"]
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    for model in ("gpt-4o-mini", "o3"):  # the team's alone; the key's alone
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=model, messages=MESSAGES)
    assert sorted(m.id for m in pair[1].client(open_key).models.list()) == ["gpt-4o", "gpt-4o-mini"]


# AT THE STORE: a request refused by the team counts against nothing


def _tickets(request_id: str, key_scope: str, team_scope: str, *, key_rpm: int, team_rpm: int):
    from metering import LimitTicket

    ticket = LimitTicket(key_prefix=key_scope, request_id=request_id, rpm=key_rpm, tag=team_scope)
    ticket.team = LimitTicket(
        key_prefix=key_scope, request_id=request_id, scope=team_scope, subject="team t", rpm=team_rpm
    )
    return ticket


@pytest.mark.parametrize(
    "store_kind",
    [pytest.param("redis", marks=pytest.mark.skipif(not REDIS_URL, reason="REDIS_URL is not set")), "database"],
)
def test_a_request_refused_by_the_team_counts_against_nothing(store_kind, transactional_db):
    from metering import ADMITTED, REFUSED_REQUESTS, LimitTicket

    if store_kind == "redis":
        from metering.redis_store import RedisLimitStore

        store = RedisLimitStore()
    else:
        from metering.database_store import DatabaseLimitStore

        store = DatabaseLimitStore()
    key_scope, team_scope = uuid.uuid4().hex[:8], f"team:{uuid.uuid4().int % 10**9}"

    async def run():
        results = []
        for index in range(5):
            ticket = _tickets(f"r{index}", key_scope, team_scope, key_rpm=3, team_rpm=2)
            results.append(await store.admit(ticket))
        # The key alone (no team): its own count saw only the two requests its team admitted.
        alone = await store.admit(LimitTicket(key_prefix=key_scope, request_id="alone", rpm=3, tag=team_scope))
        return results, alone

    results, alone = asyncio.run(run())
    assert [r.status for r in results] == [ADMITTED, ADMITTED, REFUSED_REQUESTS, REFUSED_REQUESTS, REFUSED_REQUESTS]
    assert [r.refused_by_team for r in results[2:]] == [True, True, True]
    assert results[1].team.rpm_count == 2 and results[1].rpm_count == 2
    assert alone.status == ADMITTED and alone.rpm_count == 3  # 2 + this one: the refused three took nothing
