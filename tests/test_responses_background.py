"""Background responses: admitted and reserved at creation, holding their concurrency slot until they end, and
settled exactly once when they reach a terminal state, whether or not the client asks again, with two instances
following them (database limit store); a cancel settles at the real usage; a background stream resumes with
`starting_after`."""

import time
from decimal import Decimal

import httpx
import openai
import pytest

from metering.models import LimitCounter
from serverstate.models import BackgroundResponse
from tests.test_usage_recording import wait_for_records
from usage.models import UsageRecord

pytestmark = pytest.mark.slow

# No ModelPrice row matches this model: the instances' fallback prices it at 1,000 USD per million tokens.
PRICED_MODEL = "background-priced-model"
ENV = {
    "BACKGROUND_POLL_SECONDS": "0.2",
    "PRICE_FALLBACK_INPUT_PER_MILLION": "1000",
    "PRICE_FALLBACK_OUTPUT_PER_MILLION": "1000",
    "PRICE_FALLBACK_MAX_OUTPUT_TOKENS": "50",
    "USAGE_FLUSH_SECONDS": "0.1",
    "REDIS_URL": "",
}


@pytest.fixture
def pair(start_gateway):
    return start_gateway("background-a", env=ENV), start_gateway("background-b", env=ENV)


def wait_settled(response_ids, timeout=20.0) -> list[BackgroundResponse]:
    deadline = time.monotonic() + timeout
    while True:
        rows = list(BackgroundResponse.objects.filter(response_id__in=response_ids))
        if len(rows) == len(response_ids) and all(row.settled_at for row in rows):
            return rows
        assert time.monotonic() < deadline, [(row.response_id, row.settled_at) for row in rows]
        time.sleep(0.1)


def test_background_responses_hold_their_slot_and_settle_once_across_instances(pair, make_key):
    first, second = pair
    _key, raw = make_key(name="background", max_concurrent=1, budget_usd=Decimal("100"))
    client = first.client(raw)
    held = client.responses.create(
        model=PRICED_MODEL, input="a b c", background=True, extra_body={"fake": {"background_ms": 1500}}
    )
    assert held.status == "queued"
    # Its slot is held while it runs: a second request of the key is refused for concurrency, on either instance.
    with pytest.raises(openai.RateLimitError) as caught:
        second.client(raw).responses.create(model=PRICED_MODEL, input="x")
    assert "concurrent" in caught.value.body["message"]
    [row] = wait_settled([held.id])
    assert row.final_status == "completed"
    # Free again once it ended (the client never asked about it).
    assert second.client(raw).responses.create(model=PRICED_MODEL, input="x").status == "completed"

    [record] = wait_for_records(1, request_id=row.request_id)
    assert (record.endpoint, record.prompt_tokens, record.completion_tokens) == ("responses", 3, 4)
    assert not record.usage_estimated and record.cost_usd == Decimal("0.007")


def test_many_background_responses_are_settled_exactly_once(pair, make_key):
    first, second = pair
    key, raw = make_key(name="exactly-once", budget_usd=Decimal("100"))
    ids = []
    for index in range(12):
        gateway = (first, second)[index % 2]
        created = gateway.client(raw).responses.create(
            model=PRICED_MODEL,
            input=f"number {index}",
            background=True,
            extra_body={"fake": {"background_ms": 200 + 50 * index}},
        )
        ids.append(created.id)
    rows = wait_settled(ids)
    request_ids = [row.request_id for row in rows]
    records = wait_for_records(12, request_id__in=request_ids)
    assert all(record.prompt_tokens == 2 and record.completion_tokens == 3 for record in records)
    time.sleep(1)  # every follower has had several more rounds: nothing is settled twice
    assert UsageRecord.objects.filter(request_id__in=request_ids).count() == 12
    spent = LimitCounter.objects.get(name__startswith=f"budget:{key.lineage}:").value
    assert spent == 12 * 5 * 100_000  # 5 tokens at 0.001 USD each, in units of 1e-8 USD: charged once each
    assert not LimitCounter.objects.filter(scope=f"inflight:{key.lineage}").exists()


def test_cancel_settles_at_the_real_usage_and_streams_resume(pair, make_key):
    first, second = pair
    _key, raw = make_key(name="cancel", budget_usd=Decimal("100"))
    client = first.client(raw)
    running = client.responses.create(
        model=PRICED_MODEL, input="long job here", background=True, extra_body={"fake": {"background_ms": 60000}}
    )
    cancelled = second.client(raw).responses.cancel(running.id)
    assert cancelled.status == "cancelled"
    [row] = wait_settled([running.id])
    assert row.final_status == "cancelled"
    [record] = wait_for_records(1, request_id=row.request_id)
    assert (record.prompt_tokens, record.completion_tokens) == (3, 1) and not record.usage_estimated

    done = client.responses.create(
        model=PRICED_MODEL, input="resume me", background=True, extra_body={"fake": {"background_ms": 300}}
    )
    events = list(second.client(raw).responses.retrieve(done.id, stream=True, starting_after=2))
    assert events[0].sequence_number == 3 and events[-1].type == "response.completed"
    # A background stream from its creation: response.created at once, the rest when it has run.
    with httpx.stream(
        "POST",
        f"{first.url}/v1/responses",
        json={"model": PRICED_MODEL, "input": "bg stream", "background": True, "stream": True},
        headers={"Authorization": f"Bearer {raw}"},
        timeout=30,
    ) as response:
        text = response.read().decode()
    assert text.startswith("event: response.created") and "event: response.completed" in text
