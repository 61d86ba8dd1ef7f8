"""`POST /v1/moderations` through the gateway, with the official SDK (sync and async) as the client: free of charge,
counted against requests per minute (never against tokens or a budget), validated and allowlisted like the other
endpoints, and recorded once per request under the name `moderations`."""

import asyncio
import json
import uuid
from decimal import Decimal

import openai
import pytest

from fakeupstream.moderations import parse_moderation_request
from tests.conftest import assert_openai_error
from tests.test_embeddings import records_of, upstream_requests_with

DEFAULT_MODEL = "omni-moderation-latest"


def test_moderation_through_the_sdk(client, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    raw = client.moderations.with_raw_response.create(input=[f"I will kill you {marker}", "a nice day"])
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_")
    result = raw.parse()
    assert result.model == DEFAULT_MODEL
    flagged, clear = result.results
    assert flagged.flagged and flagged.categories.violence and not clear.flagged
    (upstream,) = upstream_requests_with(fake_upstream, marker)
    assert upstream["path"] == "/v1/moderations" and "model" not in upstream["json"]

    (record,) = records_of(api_key[0].prefix, 1)
    assert record.request_id == request_id
    # No model in the body: recorded (and allowlisted) as OpenAI's default.
    assert (record.endpoint, record.model, record.status) == ("moderations", DEFAULT_MODEL, 200)
    assert (record.prompt_tokens, record.completion_tokens, record.cost_usd) == (0, 0, Decimal(0))
    assert not record.usage_estimated and record.error_type == ""


def test_answer_is_the_upstream_bytes_and_the_body_reaches_it_unchanged(http, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    raw = (
        '{"model":"omni-moderation-2024-09-26", "input": [{"type": "text", "text": "MARKER hate"},'
        ' {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}], "extra":  1.50}'
    ).replace("MARKER", marker)
    response = http.post(
        "/v1/moderations",
        headers={"Authorization": f"Bearer {api_key[1]}", "Content-Type": "application/json"},
        content=raw.encode(),
    )
    assert response.status_code == 200, response.text
    number = int(response.json()["id"].removeprefix("modr-fake"))
    assert response.content == parse_moderation_request(raw.encode()).plain(number)
    (upstream,) = upstream_requests_with(fake_upstream, marker)
    assert upstream["body"] == raw


def test_async_sdk_concurrently(async_client, api_key):
    async def run():
        return await asyncio.gather(*(async_client.moderations.create(input=f"text {i}") for i in range(8)))

    # The test itself stays synchronous: it reads usage records through the ORM afterwards.
    results = asyncio.run(run())
    assert [len(r.results) for r in results] == [1] * 8
    records = records_of(api_key[0].prefix, 8)
    assert {(r.endpoint, r.status, r.total_tokens) for r in records} == {("moderations", 200, 0)}


def test_moderations_cost_nothing_even_where_tokens_are_priced(start_gateway, make_key):
    # Every unpriced model costs 1,000 USD per million tokens on this gateway: an embedding costs money, a
    # moderation must not, and a budget too small for anything priced does not stop moderations.
    gateway = start_gateway(
        name="moderation-free",
        workers=1,
        env={"PRICE_FALLBACK_INPUT_PER_MILLION": "1000", "PRICE_FALLBACK_OUTPUT_PER_MILLION": "1000"},
    )
    key, raw = make_key(name="moderation-budget", budget_usd=Decimal("0.0001"), budget_period="day")
    client = gateway.client(raw)
    for _ in range(3):
        assert client.moderations.create(input="some words to moderate").results
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model="priced-embedding-model", input="one two three four five")
    assert caught.value.code == "insufficient_quota"
    records = records_of(key.prefix, 4)
    assert [(r.endpoint, r.status, r.cost_usd) for r in records] == [("moderations", 200, Decimal(0))] * 3 + [
        ("embeddings", 429, Decimal(0))
    ]


def test_moderations_count_against_requests_per_minute_but_not_tokens(gateway, make_key):
    key, raw = make_key(name="moderation-rpm", rpm=2, tpm=1)
    client = gateway.client(raw)
    client.moderations.create(input="a longer text than the one token this key may spend in a minute")
    client.moderations.create(input="again")
    with pytest.raises(openai.RateLimitError) as caught:
        client.moderations.create(input="third")
    assert caught.value.body["type"] == "requests" and caught.value.code == "rate_limit_exceeded"
    statuses = [(r.endpoint, r.status) for r in records_of(key.prefix, 3)]
    assert statuses == [("moderations", 200), ("moderations", 200), ("moderations", 429)]


@pytest.mark.parametrize(
    ("content", "param"),
    [
        pytest.param({}, "input", id="no-input"),
        pytest.param({"input": 5}, "input", id="input-a-number"),
        pytest.param({"input": []}, "input", id="empty-array"),
        pytest.param({"input": "x", "model": ""}, "model", id="empty-model"),
        pytest.param({"input": "x", "model": 3}, "model", id="model-not-a-string"),
        pytest.param('{"input": "x", "input": "y"}', "input", id="input-twice"),
        pytest.param('{"model": "a", "input": "x", "model": "b"}', "model", id="model-twice"),
    ],
)
def test_invalid_requests_are_refused_before_the_upstream(http, api_key, fake_upstream, content, param):
    marker = uuid.uuid4().hex
    raw = content if isinstance(content, str) else json.dumps(content)
    response = http.post(
        "/v1/moderations",
        headers={"Authorization": f"Bearer {api_key[1]}", "Content-Type": "application/json", "X-Marker": marker},
        content=raw.encode(),
    )
    assert_openai_error(response, 400, type_="invalid_request_error", param=param)
    assert not [r for r in fake_upstream.requests() if r["headers"].get("x-marker") == marker]
    (record,) = records_of(api_key[0].prefix, 1)
    assert (record.endpoint, record.status) == ("moderations", 400)


def test_the_allowlist_applies_to_the_default_model_too(gateway, make_key, fake_upstream):
    key, raw = make_key(name="moderation-allowlist", allowed_models=["gpt-4o-mini"])
    marker = uuid.uuid4().hex
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.client(raw).moderations.create(input=marker)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        gateway.client(raw).moderations.create(input=marker, model="text-moderation-latest")
    assert not upstream_requests_with(fake_upstream, marker)
    _, allowed = make_key(name="moderation-allowed", allowed_models=[DEFAULT_MODEL])
    assert gateway.client(allowed).moderations.create(input=marker).results
    records = records_of(key.prefix, 2)
    assert [(r.endpoint, r.status, r.model) for r in records] == [
        ("moderations", 404, DEFAULT_MODEL),
        ("moderations", 404, "text-moderation-latest"),
    ]


def test_upstream_errors_are_relayed(client, api_key):
    with pytest.raises(openai.InternalServerError) as caught:
        client.moderations.create(input="x", extra_body={"fake": {"status": 503}})
    assert caught.value.status_code == 502
    with pytest.raises(openai.RateLimitError) as caught:
        client.moderations.create(input="x", extra_body={"fake": {"status": 429, "headers": {"retry-after": "3"}}})
    assert caught.value.response.headers["retry-after"] == "3"
    assert [(r.endpoint, r.status) for r in records_of(api_key[0].prefix, 2)] == [
        ("moderations", 502),
        ("moderations", 429),
    ]
