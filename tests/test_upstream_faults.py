"""Upstream faults beyond the core error table of `test_errors.py`.

* slow upstreams: an answer slower than usual but inside `OPENAI_TIMEOUT` passes, a stream whose total time is
  far over the timeout passes as long as each gap is under it (the timeout is per read, not per request); past
  the timeout → 504 on time, before a stream or as the stream's last event;
* upstream 429 on a streamed request: a 429 before any stream, with `retry-after`/`retry-after-ms`, which the
  SDK honours;
* an upstream that answers a stream request with a 200 that is not a stream (an HTML page of a proxy, garbage)
  → 502 before any stream, as for a plain request;
* a client that goes away: Tollgate closes the upstream request within a second (the fake upstream records when
  its client left) and the request is still recorded (`UsageRecord`, estimated usage for a cut stream).
"""

import threading
import time
import uuid

import httpx
import openai
import pytest

from tests.conftest import Gateway, assert_openai_error
from usage.models import UsageRecord

CHAT = "/v1/chat/completions"
TIMEOUT = 2.0  # OPENAI_TIMEOUT of the module's gateway
DISCONNECT_PROMISE = 1.0


@pytest.fixture(scope="module")
def short_timeout_gateway(django_db_setup, django_db_blocker, fake_upstream, server_logs):
    """One gateway with OPENAI_TIMEOUT=2 s for the module (its start-up is the slow part of these tests)."""
    with django_db_blocker.unblock():
        server = Gateway(
            upstream_url=fake_upstream.url,
            log_path=server_logs / "upstream-faults.log",
            env={"OPENAI_TIMEOUT": str(TIMEOUT), "USAGE_FLUSH_SECONDS": "0.1"},
        )
    yield server
    server.stop()


@pytest.fixture
def key(make_key):
    return make_key(name="faults")


def body(text="hello there", **extra):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def post(gateway, raw, payload, timeout=30.0):
    started = time.monotonic()
    response = httpx.post(
        f"{gateway.url}{CHAT}", headers={"Authorization": f"Bearer {raw}"}, json=payload, timeout=timeout
    )
    return response, time.monotonic() - started


def sse_events(text: str) -> list[str]:
    return [event for event in text.split("\n\n") if event.strip()]


def wait_for_record(timeout=10.0, **filters) -> UsageRecord:
    """The single usage record matching `filters`, once the gateway's writer has flushed it."""
    deadline = time.monotonic() + timeout
    while True:
        records = list(UsageRecord.objects.filter(**filters))
        if records or time.monotonic() > deadline:
            assert len(records) == 1, f"expected one usage record for {filters}, found {len(records)}"
            return records[0]
        time.sleep(0.1)


def upstream_record(fake_upstream, marker: str, *, timeout=5.0, until=lambda r: True) -> dict:
    """The fake upstream's record of the request whose body contains `marker`, once `until(record)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in fake_upstream.requests() if marker in r["body"]]
        if found and until(found[-1]):
            return found[-1]
        assert time.monotonic() < deadline, f"upstream record for {marker}: {found}"
        time.sleep(0.05)


# -- slow upstreams ------------------------------------------------------------------------------------------------


def test_an_answer_slower_than_usual_but_inside_the_timeout_passes(short_timeout_gateway, key):
    response, elapsed = post(short_timeout_gateway, key[1], body(fake={"delay_ms": int(TIMEOUT * 600)}))
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "echo: hello there"
    assert elapsed >= TIMEOUT * 0.6


def test_a_stream_longer_than_the_timeout_passes_when_each_gap_is_inside_it(short_timeout_gateway, key):
    gap_ms = int(TIMEOUT * 400)  # 0.8 s between chunks, 5 chunks: about 4.8 s in all, over twice the timeout
    response, elapsed = post(
        short_timeout_gateway, key[1], body(stream=True, fake={"chunks": 5, "chunk_delay_ms": gap_ms})
    )
    assert response.status_code == 200
    events = sse_events(response.text)
    assert events[-1] == "data: [DONE]", events[-3:]
    assert not any('"error"' in event for event in events)
    assert elapsed > TIMEOUT * 1.5


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_an_answer_slower_than_the_timeout_is_504_on_time(short_timeout_gateway, key, stream):
    response, elapsed = post(short_timeout_gateway, key[1], body(stream=stream, fake={"delay_ms": 6000}))
    assert_openai_error(response, 504, type_="server_error", code="upstream_timeout")
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 2.5, elapsed


def test_a_stream_that_stalls_past_the_timeout_ends_with_a_timeout_event_on_time(short_timeout_gateway, key):
    marker = uuid.uuid4().hex
    with httpx.stream(
        "POST",
        f"{short_timeout_gateway.url}{CHAT}",
        headers={"Authorization": f"Bearer {key[1]}"},
        json=body(marker, stream=True, fake={"chunks": 3, "chunk_delay_ms": 6000}),
        timeout=30,
    ) as response:
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        first_at = None
        chunks = []
        for chunk in response.iter_text():
            first_at = first_at or time.monotonic()
            chunks.append(chunk)
        ended_at = time.monotonic()
    events = sse_events("".join(chunks))
    assert events[-1].startswith('data: {"error":'), events
    assert '"code":"upstream_timeout"' in events[-1]
    assert TIMEOUT * 0.9 <= ended_at - first_at < TIMEOUT + 2.5, ended_at - first_at
    record = wait_for_record(request_id=request_id)
    assert (record.status, record.error_type, record.usage_estimated) == (504, "upstream_timeout", True)
    assert record.prompt_tokens > 0


# -- upstream 429 --------------------------------------------------------------------------------------------------


def test_upstream_429_on_a_stream_is_a_429_before_the_stream_with_its_retry_headers(short_timeout_gateway, key):
    fake = {"status": 429, "headers": {"retry-after": "7", "retry-after-ms": "6500"}}
    response, _ = post(short_timeout_gateway, key[1], body(stream=True, fake=fake))
    assert_openai_error(response, 429)
    assert response.headers["retry-after"] == "7"
    assert response.headers["retry-after-ms"] == "6500"


def test_the_sdk_waits_as_the_upstreams_retry_after_says_before_retrying(short_timeout_gateway, key, fake_upstream):
    marker = uuid.uuid4().hex
    client = short_timeout_gateway.client(key[1], max_retries=1)
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(
            **body(marker), extra_body={"fake": {"status": 429, "headers": {"retry-after-ms": "1500"}}}
        )
    elapsed = time.monotonic() - started
    assert len([r for r in fake_upstream.requests() if marker in r["body"]]) == 2  # the first try and one retry
    assert elapsed >= 1.4, elapsed


# -- a 200 that is not what was asked for --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fake",
    [
        {"status": 200, "content_type": "text/html", "error_body": "<html><body>Proxy login</body></html>"},
        {"garbage": True},
    ],
    ids=["html-page", "garbage"],
)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_200_that_is_not_a_completion_is_502(short_timeout_gateway, key, fake, stream):
    response, _ = post(short_timeout_gateway, key[1], body(stream=stream, fake=fake))
    assert_openai_error(response, 502, type_="server_error")
    assert "<html>" not in response.text


# -- the client goes away ------------------------------------------------------------------------------------------


def test_a_client_leaving_mid_stream_closes_the_upstream_within_a_second_and_is_recorded(gateway, key, fake_upstream):
    marker = uuid.uuid4().hex
    received = 0
    with (
        httpx.Client(timeout=30) as session,
        session.stream(
            "POST",
            f"{gateway.url}{CHAT}",
            headers={"Authorization": f"Bearer {key[1]}", "Connection": "close"},
            json=body(f"tell me a long story {marker}", stream=True, fake={"chunks": 60, "chunk_delay_ms": 100}),
        ) as response,
    ):
        assert response.status_code == 200
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith("data: {") and '"content":"' in line and '"content":""' not in line:
                received += 1
                if received == 3:
                    break
        closed_at = time.time()
    upstream = upstream_record(fake_upstream, marker, until=lambda r: r["disconnected"] or r["completed"])
    assert upstream["disconnected"] and not upstream["completed"], upstream
    delay = upstream["disconnected_at"] - closed_at
    print(f"\nclient left mid-stream: upstream request closed {delay * 1000:.0f} ms later")
    assert delay < DISCONNECT_PROMISE, delay
    assert upstream["chunks_sent"] < 60

    record = wait_for_record(request_id=request_id)
    assert record.usage_estimated and record.streamed
    assert record.error_type == "client_disconnected"
    assert received <= record.completion_tokens <= upstream["chunks_sent"]
    assert record.prompt_tokens > 0


def test_a_client_leaving_before_a_plain_answer_closes_the_upstream_and_is_recorded(gateway, key, fake_upstream):
    marker = uuid.uuid4().hex
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}{CHAT}",
            headers={"Authorization": f"Bearer {key[1]}"},
            json=body(marker, fake={"delay_ms": 5000}),
            timeout=httpx.Timeout(30, read=0.7),
        )
    closed_at = time.time()
    upstream = upstream_record(fake_upstream, marker, until=lambda r: r["disconnected"] or r["completed"])
    assert upstream["disconnected"] and not upstream["completed"], upstream
    delay = upstream["disconnected_at"] - closed_at
    print(f"\nclient left before the answer: upstream request closed {delay * 1000:.0f} ms later")
    assert delay < DISCONNECT_PROMISE, delay

    record = wait_for_record(key_prefix=key[0].prefix)
    assert record.error_type == "client_disconnected"
    # Not a server error: nginx's 499 "client closed request" (a 500 here would page whoever watches 5xx rates).
    assert record.status == 499


def test_many_clients_leaving_at_once_leave_no_upstream_request_open(gateway, key, fake_upstream):
    """Twenty streams dropped together: every upstream request is closed and every request is recorded."""
    marker = uuid.uuid4().hex
    ready = threading.Barrier(21)
    request_ids = []

    def one(index):
        with httpx.stream(
            "POST",
            f"{gateway.url}{CHAT}",
            headers={"Authorization": f"Bearer {key[1]}"},
            json=body(f"{marker} {index}", stream=True, fake={"chunks": 100, "chunk_delay_ms": 50}),
            timeout=30,
        ) as response:
            request_ids.append(response.headers["x-request-id"])
            lines = response.iter_lines()
            next(lines)
            ready.wait(30)  # all streams are running
            ready.wait(30)  # leave together

    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for thread in threads:
        thread.start()
    ready.wait(30)
    ready.wait(30)
    closed_at = time.time()
    for thread in threads:
        thread.join(30)

    deadline = time.monotonic() + 5
    while True:
        ours = [r for r in fake_upstream.requests() if marker in r["body"]]
        if len(ours) == 20 and all(r["disconnected"] or r["completed"] for r in ours):
            break
        assert time.monotonic() < deadline, [(r["disconnected"], r["completed"]) for r in ours]
        time.sleep(0.05)
    assert all(r["disconnected"] and not r["completed"] for r in ours)
    slowest = max(r["disconnected_at"] for r in ours) - closed_at
    print(f"\n20 clients left at once: the last upstream request closed {slowest * 1000:.0f} ms later")
    assert slowest < DISCONNECT_PROMISE * 2, slowest
    for request_id in request_ids:
        record = wait_for_record(request_id=request_id)
        assert record.usage_estimated and record.error_type == "client_disconnected"
