"""`POST /v1/completions` (OpenAI's legacy text completions) through the gateway, with the official SDK (sync and
async) as the client: plain and streamed answers are the upstream's, the `include_usage` chunk Tollgate asks for is
hidden from a client that did not ask, validation and the allowlist stop a request before any upstream call,
limits count it, and every request leaves exactly one usage record named `completions`."""

import asyncio
import json
import uuid

import openai
import pytest

from completions.tokens import estimate_input_tokens
from fakeupstream.text_completions import parse_text_completion_request
from tests.conftest import assert_openai_error
from tests.test_embeddings import records_of, upstream_requests_with

MODEL = "gpt-3.5-turbo-instruct"


def fake_usage(body: dict) -> dict:
    """What the fake upstream reports for `body` (its usage is deterministic)."""
    return parse_text_completion_request(json.dumps(body).encode()).usage


# PLAIN


def test_plain_completion_through_the_sdk(client, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=f"say {marker}", max_tokens=5)
    request_id = raw.headers["x-request-id"]
    assert request_id.startswith("req_")
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.model == MODEL
    assert completion.choices[0].text == f"echo: say {marker}"
    assert completion.choices[0].finish_reason == "stop"
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 3)
    (upstream,) = upstream_requests_with(fake_upstream, marker)
    assert upstream["path"] == "/v1/completions"

    (record,) = records_of(api_key[0].prefix, 1)
    assert record.request_id == request_id
    assert (record.endpoint, record.model, record.status, record.streamed) == ("completions", MODEL, 200, False)
    assert (record.prompt_tokens, record.completion_tokens, record.total_tokens) == (2, 3, 5)
    assert not record.usage_estimated
    assert record.upstream_request_id.startswith("req_fake_")


def test_plain_answer_is_the_upstream_json_and_the_body_reaches_it_unchanged(http, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    raw = (
        '{"model": "gpt-3.5-turbo-instruct",  "prompt": ["MARKER one", "two"], "n": 2, "best_of": 3,'
        ' "echo": true, "max_tokens": 2, "logit_bias": {"50256": -100}, "suffix": null, "seed": 7,'
        ' "a_parameter_openai_adds_next_year": [1.50, "x"]}'
    ).replace("MARKER", marker)
    response = http.post(
        "/v1/completions",
        headers={"Authorization": f"Bearer {api_key[1]}", "Content-Type": "application/json"},
        content=raw.encode(),
    )
    assert response.status_code == 200, response.text
    (upstream,) = upstream_requests_with(fake_upstream, marker)
    assert upstream["body"] == raw
    body = response.json()
    number = int(body["id"].removeprefix("cmpl-fake"))
    expected = json.loads(parse_text_completion_request(raw.encode()).plain(number))
    assert body == {**expected, "created": body["created"]}
    assert [c["index"] for c in body["choices"]] == [0, 1, 2, 3]
    (record,) = records_of(api_key[0].prefix, 1)
    # best_of=3 candidates of 2 tokens for each of the 2 prompts are billed.
    assert (record.prompt_tokens, record.completion_tokens) == (3, 12)


# STREAMED


def test_streamed_without_include_usage_hides_the_usage_chunk(client, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=f"stream {marker} please", stream=True, stream_options={"future_option": 1}
    )
    chunks = list(raw.parse())
    assert "".join(c.choices[0].text for c in chunks if c.choices) == f"echo: stream {marker} please"
    assert all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    (upstream,) = upstream_requests_with(fake_upstream, marker)
    # The one change Tollgate makes: it asks for the usage, keeping the client's other stream options.
    assert upstream["json"]["stream_options"] == {"future_option": 1, "include_usage": True}
    (record,) = records_of(api_key[0].prefix, 1)
    assert record.request_id == raw.headers["x-request-id"]
    assert (record.endpoint, record.status, record.streamed, record.usage_estimated) == (
        "completions",
        200,
        True,
        False,
    )
    want = fake_usage({"model": MODEL, "prompt": f"stream {marker} please", "stream": True})
    assert (record.prompt_tokens, record.completion_tokens) == (want["prompt_tokens"], want["completion_tokens"])


def test_streamed_with_include_usage_shows_it_once_at_the_end(client, api_key):
    chunks = list(
        client.completions.create(
            model=MODEL, prompt="count my tokens", stream=True, stream_options={"include_usage": True}
        )
    )
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert usage_chunks == [chunks[-1]] and chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 4)
    (record,) = records_of(api_key[0].prefix, 1)
    assert (record.prompt_tokens, record.completion_tokens, record.usage_estimated) == (3, 4, False)


def test_stream_headers_and_done(http, api_key):
    body = {"model": MODEL, "prompt": "hi there", "stream": True, "n": 2}
    headers = {"Authorization": f"Bearer {api_key[1]}", "Accept": "application/json"}
    with http.stream("POST", "/v1/completions", headers=headers, json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-request-id"].startswith("req_")
        assert "content-encoding" not in response.headers
        raw = b"".join(response.iter_raw())
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    payloads = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    assert all(p["choices"] and p.get("usage") is None for p in payloads)
    assert {p["choices"][0]["index"] for p in payloads} == {0, 1}


def test_async_sdk_plain_and_streamed_concurrently(async_client, api_key):
    async def plain(i):
        completion = await async_client.completions.create(model=MODEL, prompt=f"plain {i}")
        return completion.choices[0].text

    async def streamed(i):
        stream = await async_client.completions.create(model=MODEL, prompt=f"streamed {i}", stream=True)
        return "".join([c.choices[0].text async for c in stream if c.choices])

    async def run():
        return await asyncio.gather(*(plain(i) for i in range(6)), *(streamed(i) for i in range(6)))

    # The test itself stays synchronous: it reads usage records through the ORM afterwards.
    results = asyncio.run(run())
    assert results == [f"echo: plain {i}" for i in range(6)] + [f"echo: streamed {i}" for i in range(6)]
    records = records_of(api_key[0].prefix, 12)
    assert {(r.endpoint, r.status, r.usage_estimated) for r in records} == {("completions", 200, False)}
    assert sorted(r.streamed for r in records) == [False] * 6 + [True] * 6


def test_a_stream_cut_short_is_recorded_with_an_estimate(client, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    stream = client.completions.create(
        model=MODEL,
        prompt=marker,
        stream=True,
        max_tokens=20,
        extra_body={"fake": {"chunks": 10, "cut_after_chunks": 3}},
    )
    received = 0
    with pytest.raises(openai.APIError):
        for chunk in stream:
            received += bool(chunk.choices and chunk.choices[0].text)
    assert received == 3
    (record,) = records_of(api_key[0].prefix, 1)
    assert record.endpoint == "completions" and record.usage_estimated
    assert record.completion_tokens == 3  # one token per relayed piece of text
    assert record.prompt_tokens == estimate_input_tokens(marker)
    (upstream,) = upstream_requests_with(fake_upstream, marker)
    assert upstream["cut"] and upstream["chunks_sent"] == 3


# VALIDATION


@pytest.mark.parametrize(
    ("content", "param"),
    [
        pytest.param({"prompt": "x"}, "model", id="no-model"),
        pytest.param({"model": MODEL}, "prompt", id="no-prompt"),
        pytest.param({"model": MODEL, "prompt": 5}, "prompt", id="prompt-a-number"),
        pytest.param({"model": MODEL, "prompt": [[1], "a"]}, "prompt", id="prompt-mixed"),
        pytest.param({"model": MODEL, "prompt": "x", "max_tokens": -1}, "max_tokens", id="max-tokens-negative"),
        pytest.param({"model": MODEL, "prompt": "x", "max_tokens": "9"}, "max_tokens", id="max-tokens-string"),
        pytest.param({"model": MODEL, "prompt": "x", "n": 0}, "n", id="n-0"),
        pytest.param({"model": MODEL, "prompt": "x", "n": 129}, "n", id="n-129"),
        pytest.param({"model": MODEL, "prompt": "x", "best_of": 21}, "best_of", id="best-of-21"),
        pytest.param({"model": MODEL, "prompt": "x", "n": 3, "best_of": 2}, "best_of", id="best-of-below-n"),
        pytest.param({"model": MODEL, "prompt": "x", "stream": True, "best_of": 2}, "best_of", id="best-of-stream"),
        pytest.param({"model": MODEL, "prompt": "x", "stream": "yes"}, "stream", id="stream-not-bool"),
        pytest.param({"model": MODEL, "prompt": "x", "echo": 1}, "echo", id="echo-not-bool"),
        pytest.param(
            {"model": MODEL, "prompt": "x", "stream_options": {"include_usage": True}},
            "stream_options",
            id="stream-options-without-stream",
        ),
        pytest.param({"model": MODEL, "prompt": "x", "temperature": 2.5}, "temperature", id="temperature"),
        pytest.param({"model": MODEL, "prompt": "x", "top_p": 1.5}, "top_p", id="top-p"),
        pytest.param({"model": MODEL, "prompt": "x", "logprobs": 6}, "logprobs", id="logprobs"),
        pytest.param({"model": MODEL, "prompt": "x", "presence_penalty": -3}, "presence_penalty", id="presence"),
        pytest.param('{"model": "a", "prompt": "x", "model": "b"}', "model", id="model-twice"),
        pytest.param('{"model": "a", "prompt": "x", "prompt": "y"}', "prompt", id="prompt-twice"),
        pytest.param('{"model": "a", "prompt": "x", "max_tokens": 1, "max_tokens": 9}', "max_tokens", id="max-twice"),
        pytest.param('{"model": "a", "prompt": "x", "stream": false, "stream": true}', "stream", id="stream-twice"),
        pytest.param('{"model": "a", "prompt": "x", "n": 1, "n": 5}', "n", id="n-twice"),
    ],
)
def test_invalid_requests_are_refused_before_the_upstream(http, api_key, fake_upstream, content, param):
    marker = uuid.uuid4().hex
    raw = content if isinstance(content, str) else json.dumps(content)
    response = http.post(
        "/v1/completions",
        headers={"Authorization": f"Bearer {api_key[1]}", "Content-Type": "application/json", "X-Marker": marker},
        content=raw.encode(),
    )
    assert_openai_error(response, 400, type_="invalid_request_error", param=param)
    assert not [r for r in fake_upstream.requests() if r["headers"].get("x-marker") == marker]
    (record,) = records_of(api_key[0].prefix, 1)
    assert (record.endpoint, record.status, record.total_tokens) == ("completions", 400, 0)


# ALLOWLIST, LIMITS


def test_a_model_outside_the_allowlist_is_404_and_reaches_no_upstream(gateway, make_key, fake_upstream):
    key, raw = make_key(name="legacy-allowlist", allowed_models=[MODEL])
    marker = uuid.uuid4().hex
    for stream in (False, True):
        with pytest.raises(openai.NotFoundError) as caught:
            gateway.client(raw).completions.create(model="davinci-002", prompt=marker, stream=stream)
        assert caught.value.code == "model_not_found"
    assert not upstream_requests_with(fake_upstream, marker)
    records = records_of(key.prefix, 2)
    assert {(r.endpoint, r.status, r.model) for r in records} == {("completions", 404, "davinci-002")}


def test_requests_per_minute_refuse_with_429(gateway, make_key):
    key, raw = make_key(name="legacy-rpm", rpm=2)
    client = gateway.client(raw)
    client.completions.create(model=MODEL, prompt="one")
    list(client.completions.create(model=MODEL, prompt="two", stream=True))
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model=MODEL, prompt="three", stream=True)
    assert caught.value.body["type"] == "requests" and caught.value.code == "rate_limit_exceeded"
    assert [(r.endpoint, r.status) for r in records_of(key.prefix, 3)] == [("completions", 200)] * 2 + [
        ("completions", 429)
    ]


def test_tokens_reserve_max_tokens_times_best_of(gateway, make_key, fake_upstream):
    prompt = "a short prompt"
    prompt_tokens = estimate_input_tokens(prompt)
    _, raw = make_key(name="legacy-tpm", tpm=prompt_tokens + 30)
    client = gateway.client(raw, max_retries=2)
    marker = uuid.uuid4().hex
    # 10 x best_of 4 = 40 output tokens reserved: larger than the whole limit, refused for good.
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=10, best_of=4, user=marker)
    assert caught.value.body["type"] == "tokens" and "Request too large" in caught.value.body["message"]
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert not [r for r in fake_upstream.requests() if (r.get("json") or {}).get("user") == marker]
    # Without max_tokens the default of 16 is reserved: it fits.
    assert client.completions.create(model=MODEL, prompt=prompt, user=marker).choices
