"""Per-key rate limits: exact under concurrency on Redis and on the database path, across workers and instances;
tokens per minute (plain and streamed), concurrency, the headers and `Retry-After`, and a store that is down.

Server tests talk to real gateways (gunicorn, several uvicorn workers) through the official SDK. The Redis tests
run when REDIS_URL is set (CI); the database path is forced with `REDIS_URL=""` on its own gateway, so it is
tested in every run.
"""

import asyncio
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from collections import Counter

import openai
import pytest

from completions.tokens import estimate_prompt_tokens
from tests.conftest import free_port

REDIS_URL = os.environ.get("REDIS_URL", "")
needs_redis = pytest.mark.skipif(not REDIS_URL, reason="REDIS_URL is not set")
DATABASE_PATH = {"REDIS_URL": ""}
MESSAGES = [{"role": "user", "content": "hello there"}]
# What the fake upstream reports for MESSAGES: 2 words + 3 per message; "echo: hello there" is 3 pieces.
REAL_TOKENS = 5 + 3
RESET = re.compile(r"^(\d+h)?(\d+m)?\d+(\.\d+)?s$|^\d+ms$")

STORES = [pytest.param(None, id="redis", marks=needs_redis), pytest.param(DATABASE_PATH, id="database")]


def ask(client, **kwargs):
    """One completion through the SDK's raw interface: (status, headers, error body or None)."""
    kwargs.setdefault("model", "gpt-4o-mini")
    kwargs.setdefault("messages", MESSAGES)
    try:
        raw = client.chat.completions.with_raw_response.create(**kwargs)
    except openai.APIStatusError as exc:
        return exc.status_code, exc.response.headers, exc.body
    raw.parse()
    return raw.status_code, raw.headers, None


def burst(targets, n_each: int, **kwargs) -> Counter:
    """`n_each` concurrent requests to each (gateway, raw key) at once; a Counter of (status, error code)."""

    async def run():
        clients = [gw.async_client(raw, timeout=120) for gw, raw in targets]

        async def one(client):
            try:
                await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **kwargs)
                return (200, None)
            except openai.APIStatusError as exc:
                return (exc.status_code, (exc.body or {}).get("code") if isinstance(exc.body, dict) else None)

        results = await asyncio.gather(*[one(client) for client in clients for _ in range(n_each)])
        for client in clients:
            await client.close()
        return Counter(results)

    return asyncio.run(run())


# EXACTNESS


@pytest.mark.slow
@pytest.mark.parametrize("env", STORES)
def test_200_concurrent_requests_on_a_40_per_minute_key_get_exactly_40_through(env, make_key, start_gateway):
    gateway = start_gateway(name="exact", workers=4, env=env)
    _, raw = make_key(name="burst", rpm=40)
    counts = burst([(gateway, raw)], 200)
    print("exactness run:", dict(counts))
    assert counts == Counter({(200, None): 40, (429, "rate_limit_exceeded"): 160})


@pytest.mark.slow
@needs_redis
def test_two_instances_sharing_redis_admit_exactly_the_limit_together(make_key, start_gateway):
    first = start_gateway(name="instance-a", workers=2)
    second = start_gateway(name="instance-b", workers=2)
    _, raw = make_key(name="shared", rpm=40)
    counts = burst([(first, raw), (second, raw)], 100)
    print("cross-instance run:", dict(counts))
    assert counts == Counter({(200, None): 40, (429, "rate_limit_exceeded"): 160})


# HEADERS AND RETRY-AFTER


def test_headers_fall_request_by_request_and_the_refusal_names_the_limit(gateway, make_key):
    key, raw = make_key(name="headers", rpm=5, tpm=10_000)
    client = gateway.client(raw)
    remaining_tokens = []
    for expected in (4, 3, 2, 1, 0):
        status, headers, _ = ask(client, max_tokens=10)
        assert status == 200
        assert headers["x-ratelimit-limit-requests"] == "5"
        assert headers["x-ratelimit-remaining-requests"] == str(expected)
        assert headers["x-ratelimit-limit-tokens"] == "10000"
        assert RESET.match(headers["x-ratelimit-reset-requests"]), headers["x-ratelimit-reset-requests"]
        assert RESET.match(headers["x-ratelimit-reset-tokens"]), headers["x-ratelimit-reset-tokens"]
        remaining_tokens.append(int(headers["x-ratelimit-remaining-tokens"]))
    # A plain answer is settled before it is sent: each request costs exactly its real usage.
    assert remaining_tokens == [10_000 - REAL_TOKENS * i for i in range(1, 6)]

    status, headers, body = ask(client)
    assert status == 429
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
    assert f"Rate limit reached for key {key.prefix} on requests per min (RPM): Limit 5, Used 5" in body["message"]
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining-tokens"] == str(10_000 - 5 * REAL_TOKENS)


def test_a_key_without_limits_gets_no_rate_limit_headers(client):
    status, headers, _ = ask(client)
    assert status == 200
    assert not [name for name in headers if name.startswith("x-ratelimit-")]


@pytest.mark.parametrize("env", STORES)
def test_retry_after_is_the_time_until_the_oldest_request_leaves_the_window(env, make_key, start_gateway):
    gateway = start_gateway(name="retry-after", workers=1, env=env)
    _, warm = make_key(name="warm-up", rpm=100)
    assert ask(gateway.client(warm))[0] == 200  # the worker's first request loads prices and connects
    _, raw = make_key(name="retry-after", rpm=2)
    client = gateway.client(raw)
    first_sent = time.time()
    assert ask(client)[0] == 200
    first_answered = time.time()
    assert ask(client)[0] == 200
    time.sleep(2.5)
    refused_sent = time.time()
    status, headers, body = ask(client)
    refused_answered = time.time()
    assert status == 429
    # The first request was counted between first_sent and first_answered, the refusal decided between
    # refused_sent and refused_answered: the true wait lies between these bounds; Retry-After rounds it up.
    shortest = 60 - (refused_answered - first_sent)
    longest = 60 - (refused_sent - first_answered)
    retry_after = int(headers["retry-after"])
    assert shortest <= retry_after <= longest + 1, (shortest, retry_after, longest)
    assert longest - shortest < 1
    assert f"Please try again in {headers['x-ratelimit-reset-requests']}." in body["message"]


def test_keys_are_limited_independently(gateway, make_key):
    _, first = make_key(name="first", rpm=1)
    _, second = make_key(name="second", rpm=1)
    assert ask(gateway.client(first))[0] == 200
    assert ask(gateway.client(first))[0] == 429
    assert ask(gateway.client(second))[0] == 200


def test_project_default_applies_to_keys_without_their_own_limit(make_key, start_gateway):
    gateway = start_gateway(name="default-rpm", workers=1, env={"RATE_LIMIT_DEFAULT_RPM": "2"})
    _, plain = make_key(name="uses-default")
    _, own = make_key(name="own-limit", rpm=3)
    statuses = [ask(gateway.client(plain))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
    statuses = [ask(gateway.client(own))[0] for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


# TOKENS


def _expected_token_admissions(limit: int, reserve: int, real: int) -> int:
    used = admitted = 0
    while used + reserve <= limit:
        used += real
        admitted += 1
    return admitted


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_tokens_per_minute_reserve_the_estimate_and_settle_to_the_reported_usage(gateway, make_key, stream):
    _, raw = make_key(name="tpm", tpm=100)
    client = gateway.client(raw)
    reserve = estimate_prompt_tokens(MESSAGES) + 10
    expected = _expected_token_admissions(100, reserve, REAL_TOKENS)
    assert expected > 5  # only true if reservations are settled down to the real usage

    admitted = 0
    while True:
        if stream:
            try:
                chunks = list(
                    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=10, stream=True)
                )
            except openai.RateLimitError as exc:
                error = exc.body
                break
            # The usage chunk Tollgate asked for is hidden from a client that did not ask for it.
            assert all(chunk.usage is None and chunk.choices for chunk in chunks)
            admitted += 1
        else:
            status, _, body = ask(client, max_tokens=10)
            if status != 200:
                assert status == 429
                error = body
                break
            admitted += 1
        assert admitted <= expected
    assert admitted == expected
    assert error["type"] == "tokens" and error["code"] == "rate_limit_exceeded"
    assert (
        f"on tokens per min (TPM): Limit 100, Used {expected * REAL_TOKENS}, Requested {reserve}." in error["message"]
    )


def test_a_request_larger_than_the_token_limit_is_refused_without_retry(gateway, make_key, fake_upstream):
    _, raw = make_key(name="too-large", tpm=50)
    marker = f"too-large-{uuid.uuid4().hex}"
    status, headers, body = ask(gateway.client(raw, max_retries=2), max_tokens=1000, user=marker)
    assert status == 429 and body["type"] == "tokens"
    assert "Request too large" in body["message"]
    assert headers["x-should-retry"] == "false"
    assert not [r for r in fake_upstream.requests() if (r.get("json") or {}).get("user") == marker]
    # Without max_tokens the default reservation is capped to the limit: the same key still works.
    assert ask(gateway.client(raw))[0] == 200


# CONCURRENCY AND THE SDK'S RETRIES


def test_max_concurrent_refuses_beyond_the_limit_and_frees_slots_when_requests_end(gateway, make_key):
    _, raw = make_key(name="concurrent", max_concurrent=2)
    counts = burst([(gateway, raw)], 5, extra_body={"fake": {"delay_ms": 1500}})
    assert counts == Counter({(200, None): 2, (429, "rate_limit_exceeded"): 3})
    status, _, body = ask(gateway.client(raw))
    assert status == 200, body


def test_concurrency_refusal_is_a_requests_rate_limit_error(gateway, make_key):
    key, raw = make_key(name="concurrent-one", max_concurrent=1)
    slow = threading.Thread(
        target=ask, args=(gateway.client(raw),), kwargs={"extra_body": {"fake": {"delay_ms": 1500}}}
    )
    slow.start()
    time.sleep(0.5)
    status, headers, body = ask(gateway.client(raw))
    slow.join()
    assert status == 429
    assert body["type"] == "requests" and body["code"] == "rate_limit_exceeded"
    assert f"Too many concurrent requests for key {key.prefix}: Limit 1" in body["message"]
    assert headers["retry-after"] == "1"


def test_the_sdks_own_retries_count_against_the_limit(gateway, make_key, fake_upstream):
    _, raw = make_key(name="sdk-retries", rpm=2, max_concurrent=1)
    marker = f"sdk-retries-{uuid.uuid4().hex}"
    slow = threading.Thread(
        target=ask, args=(gateway.client(raw),), kwargs={"user": marker, "extra_body": {"fake": {"delay_ms": 1500}}}
    )
    slow.start()
    time.sleep(0.3)
    # Refused (one in flight), retried by the SDK after Retry-After: 1 s, until the slow request has ended.
    status, _, body = ask(gateway.client(raw, max_retries=2), user=marker)
    slow.join()
    assert status == 200, body
    # The retry that got through took the second request of the minute; the refused attempts took none.
    status, _, body = ask(gateway.client(raw), user=marker)
    assert status == 429 and "requests per min (RPM): Limit 2, Used 2" in body["message"]
    assert len([r for r in fake_upstream.requests() if (r.get("json") or {}).get("user") == marker]) == 2


# THE WINDOW, AT THE STORE (injected clock)


def _ticket(prefix, request_id, **limits):
    from metering import LimitTicket

    return LimitTicket(key_prefix=prefix, request_id=request_id, **limits)


@needs_redis
def test_redis_window_slides_request_by_request():
    from metering import ADMITTED, REFUSED_REQUESTS
    from metering.redis_store import RedisLimitStore

    store = RedisLimitStore()
    clock = [1_000_000.0]
    store.timer = lambda: clock[0]
    prefix = uuid.uuid4().hex[:8]

    async def run():
        results = {}
        for at in (0, 20, 40):
            clock[0] = 1_000_000.0 + at
            results[at] = await store.admit(_ticket(prefix, f"r{at}", rpm=3))
        clock[0] = 1_000_050.0
        results["refused"] = await store.admit(_ticket(prefix, "r50", rpm=3))
        clock[0] = 1_000_060.0  # the request of t=0 leaves the window exactly now
        results[60] = await store.admit(_ticket(prefix, "r60", rpm=3))
        clock[0] = 1_000_061.0  # a fixed window would have reset here; a sliding log still counts 20, 40, 60
        results["still"] = await store.admit(_ticket(prefix, "r61", rpm=3))
        await store.aclose()
        return results

    results = asyncio.run(run())
    assert [results[at].status for at in (0, 20, 40)] == [ADMITTED] * 3
    assert [results[at].rpm_reset_ms for at in (0, 20, 40)] == [60_000, 40_000, 20_000]
    assert results["refused"].status == REFUSED_REQUESTS and results["refused"].retry_ms == 10_000
    assert results[60].status == ADMITTED and results[60].rpm_count == 3
    assert results["still"].status == REFUSED_REQUESTS and results["still"].retry_ms == 19_000


@needs_redis
def test_redis_tokens_window_frees_each_requests_tokens_when_it_leaves():
    from metering import ADMITTED, REFUSED_TOKENS
    from metering.redis_store import RedisLimitStore

    store = RedisLimitStore()
    clock = [2_000_000.0]
    store.timer = lambda: clock[0]
    prefix = uuid.uuid4().hex[:8]

    async def run():
        first = _ticket(prefix, "a", tpm=100, tokens=60)
        admitted = await store.admit(first)
        clock[0] += 10
        await store.settle(first, admitted, tokens=30, cost=0)  # reserved 60, really used 30
        clock[0] += 10
        second = await store.admit(_ticket(prefix, "b", tpm=100, tokens=60))
        refused = await store.admit(_ticket(prefix, "c", tpm=100, tokens=30))
        clock[0] = 2_000_060.0  # "a" leaves the window
        later = await store.admit(_ticket(prefix, "d", tpm=100, tokens=40))
        await store.aclose()
        return admitted, second, refused, later

    admitted, second, refused, later = asyncio.run(run())
    assert admitted.status == ADMITTED and admitted.tpm_used == 60
    assert second.status == ADMITTED and second.tpm_used == 90
    # 90 + 30 > 100: it fits when "a" (30 after settlement, not its reserved 60) leaves, at t=60.
    assert refused.status == REFUSED_TOKENS and refused.retry_ms == 40_000
    assert later.status == ADMITTED and later.tpm_used == 100


def test_database_store_uses_a_fixed_window_anchored_at_the_first_request(transactional_db):
    from metering import ADMITTED, REFUSED_REQUESTS
    from metering.database_store import DatabaseLimitStore

    store = DatabaseLimitStore()
    prefix = uuid.uuid4().hex[:8]
    # The store's synchronous core, on this thread's connection (`admit` runs the same in a worker thread).
    results = [store._admit(_ticket(prefix, f"r{at}", rpm=3), 3_000_000.0 + at) for at in (0, 20, 40, 50, 60, 61)]
    assert [r.status for r in results] == [ADMITTED] * 3 + [REFUSED_REQUESTS, ADMITTED, ADMITTED]
    assert results[3].retry_ms == 10_000
    assert results[4].rpm_count == 1 and results[4].rpm_reset_ms == 60_000  # a new window from t=60


def test_reset_durations_are_written_as_openai_writes_them():
    from metering.throttling import format_duration, retry_after_seconds

    assert [format_duration(ms) for ms in (0, 250, 1000, 1500, 12_345, 60_000, 360_000, 3_600_000)] == [
        "0s", "250ms", "1s", "1.5s", "12.345s", "1m0s", "6m0s", "1h0m0s",
    ]  # fmt: skip
    assert [retry_after_seconds(ms) for ms in (1, 999, 1000, 1001, 59_500, 61_000)] == [1, 1, 1, 2, 60, 60]


# THE STORE IS DOWN


def test_redis_down_fails_closed_with_503_and_the_worker_stays_up(make_key, start_gateway):
    gateway = start_gateway(name="fail-closed", workers=1, env={"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    _, limited = make_key(name="limited", rpm=10)
    _, unlimited = make_key(name="unlimited")
    for _ in range(3):
        status, _, body = ask(gateway.client(limited))
        assert status == 503
        assert body["type"] == "server_error" and body["code"] == "service_unavailable"
        assert "rate limiter is unavailable" in body["message"]
    assert ask(gateway.client(unlimited))[0] == 200  # nothing to meter: no store call
    assert gateway.process.poll() is None
    assert gateway.log.count("limiter store unavailable: refusing") == 1


def test_redis_down_with_fail_open_admits_and_warns_once(make_key, start_gateway):
    env = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "RATE_LIMIT_FAIL_OPEN": "true"}
    gateway = start_gateway(name="fail-open", workers=1, env=env)
    _, raw = make_key(name="limited", rpm=1)
    statuses = [ask(gateway.client(raw))[0] for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert gateway.log.count("admitting requests unmetered") == 1


@pytest.mark.skipif(
    not (shutil.which("redis-server") and shutil.which("redis-cli")), reason="redis-server is not installed"
)
def test_limits_resume_by_themselves_when_redis_comes_back(make_key, start_gateway, tmp_path):
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]

    def start_redis():
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            probe = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
            if probe.stdout.strip() == "PONG":
                return process
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    redis = start_redis()
    try:
        gateway = start_gateway(name="redis-returns", workers=1, env={"REDIS_URL": f"redis://127.0.0.1:{port}/0"})
        _, raw = make_key(name="resumes", rpm=100)
        client = gateway.client(raw)
        assert ask(client)[0] == 200
        redis.terminate()
        redis.wait(10)
        assert ask(client)[0] == 503
        redis = start_redis()
        deadline = time.monotonic() + 10
        while (status := ask(client)[0]) != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert status == 200
        assert gateway.process.poll() is None
    finally:
        redis.terminate()
        redis.wait(10)


@needs_redis
def test_drf_one_by_one_allow_request_is_refused_rather_than_counted_partly():
    """DRF would check the throttles one by one and count a request against one limit while another refuses it;
    Tollgate's throttles only contribute to the atomic admission, and say so if asked directly."""
    from types import SimpleNamespace

    from metering.throttling import DEFAULT_THROTTLES

    request = SimpleNamespace(auth=SimpleNamespace(prefix="x", lineage="x", rpm=2, tpm=9, max_concurrent=1))
    for throttle in DEFAULT_THROTTLES:
        with pytest.raises(NotImplementedError, match="atomically"):
            throttle().allow_request(request, None)


def test_huge_prompts_are_estimated_without_tokenizing():
    """Tokenizing runs on the event loop: a 4 MB prompt is bounded by characters instead (over, never under)."""
    from completions.tokens import TOKENS_PER_MESSAGE, TOKENS_PER_REPLY, estimate_prompt_tokens

    text = "word " * 800_000  # 800,000 tokens to tiktoken
    estimate = estimate_prompt_tokens([{"role": "user", "content": text}])
    assert estimate == -(-len(text) // 3) + TOKENS_PER_MESSAGE + TOKENS_PER_REPLY  # one token per 3 chars
    assert estimate >= 800_000
