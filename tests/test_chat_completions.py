"""Plain and streamed completions through the gateway, with the official SDK as the client."""

import asyncio
import json
import time
import uuid

import httpx
import pytest

from tests.conftest import UPSTREAM_KEY


def upstream_request_with(fake_upstream, marker: str) -> dict:
    matches = [r for r in fake_upstream.requests() if marker in r["body"]]
    assert len(matches) == 1, f"expected one upstream request carrying {marker}, got {len(matches)}"
    return matches[0]


def test_plain_completion_through_the_sdk(client, fake_upstream):
    marker = uuid.uuid4().hex
    completion = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": f"hello {marker}"}]
    )
    assert completion.choices[0].message.content == f"echo: hello {marker}"
    assert completion.usage.prompt_tokens == 5  # 2 words + 3 for the message (the fake's rule)
    assert completion.usage.completion_tokens == 3
    assert completion.model == "gpt-4o-mini"
    upstream_request_with(fake_upstream, marker)


def test_plain_answer_is_the_upstream_bytes_unchanged(http, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    response = http.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key[1]}"},
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": marker}], "logprobs": True},
    )
    assert response.status_code == 200
    body = response.json()
    # Fields a lossy round trip through a response model would drop survive.
    assert body["choices"][0]["message"]["refusal"] is None
    assert "logprobs" in body["choices"][0]
    assert body["service_tier"] == "default"
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert body["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}
    assert body["system_fingerprint"] == "fp_fake"


def test_streamed_completion_through_the_sdk(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "stream me please"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream me please"
    # The usage chunk Tollgate asked the upstream for is not shown to a client that did not ask.
    assert all(c.choices for c in chunks)
    assert all(getattr(c, "usage", None) is None for c in chunks)


def test_streamed_usage_is_shown_when_the_client_asks(client):
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "count my tokens"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]
    assert len(usage_chunks) == 1
    assert usage_chunks[0].choices == []
    assert usage_chunks[0].usage.prompt_tokens == 6
    assert usage_chunks[0].usage.completion_tokens == 4


def test_stream_headers_and_done(http, api_key):
    with http.stream(
        "POST",
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key[1]}", "Accept": "application/json"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True},
    ) as response:
        assert response.status_code == 200  # Accept: application/json must not give a 406
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        assert "content-encoding" not in response.headers
        raw = b"".join(response.iter_raw())
    events = [e for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_first_chunk_arrives_before_the_upstream_finishes(http, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": marker}],
        "stream": True,
        "fake": {"chunks": 10, "chunk_delay_ms": 300},
    }
    started = time.monotonic()
    with http.stream(
        "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {api_key[1]}"}, json=body
    ) as response:
        chunks = response.iter_raw()
        first = next(chunks)
        first_at = time.monotonic()
        record = upstream_request_with(fake_upstream, marker)
        assert not record["completed"], "the upstream had already finished when the first chunk arrived"
        rest = b"".join(chunks)
    assert first.startswith(b"data: ")
    # 10 chunks 300 ms apart: the whole stream takes ~3 s; the first event comes long before.
    assert first_at - started < 1.5
    assert rest.endswith(b"data: [DONE]\n\n")


def test_every_parameter_reaches_the_upstream_unchanged(http, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    raw = (
        '{"model": "gpt-4o-mini",  "messages": [{"role": "user", "content": "MARKER"}],'
        ' "temperature": 0.25, "top_p": 1, "n": 1, "seed": 42, "tools": [{"type": "function",'
        ' "function": {"name": "f", "parameters": {"type": "object"}}}], "response_format": {"type": "text"},'
        ' "a_parameter_openai_adds_next_year": {"nested": [1, 2.50, "x"]}, "metadata": {"k": "v"}}'
    ).replace("MARKER", marker)
    response = http.post(
        "/v1/chat/completions",
        headers={"Authorization": f"Bearer {api_key[1]}", "Content-Type": "application/json"},
        content=raw.encode(),
    )
    assert response.status_code == 200, response.text
    record = upstream_request_with(fake_upstream, marker)
    assert record["body"] == raw  # byte for byte, spacing and number formatting included


def test_streamed_body_gains_only_include_usage(http, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    sent = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": marker}],
        "stream": True,
        "stream_options": {"future_option": 1},
        "temperature": 1.5,
    }
    with http.stream(
        "POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {api_key[1]}"}, json=sent
    ) as response:
        assert response.status_code == 200
        response.read()
    forwarded = upstream_request_with(fake_upstream, marker)["json"]
    assert forwarded == {**sent, "stream_options": {"future_option": 1, "include_usage": True}}


def test_the_upstream_sees_our_key_never_the_clients(client, api_key, fake_upstream):
    marker = uuid.uuid4().hex
    client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": marker}])
    record = upstream_request_with(fake_upstream, marker)
    assert record["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert api_key[1] not in json.dumps(record)


def test_api_route_behaves_like_v1(http, api_key):
    response = http.post(
        "/api/route",
        headers={"Authorization": f"Bearer {api_key[1]}"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "same path"}]},
    )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "echo: same path"
    assert response.headers["x-request-id"].startswith("req_")


async def test_async_sdk_plain_and_streamed_concurrently(async_client):
    async def plain(i):
        completion = await async_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"plain {i}"}]
        )
        return completion.choices[0].message.content

    async def streamed(i):
        stream = await async_client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": f"streamed {i}"}], stream=True
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    results = await asyncio.gather(*(plain(i) for i in range(10)), *(streamed(i) for i in range(10)))
    assert results == [f"echo: plain {i}" for i in range(10)] + [f"echo: streamed {i}" for i in range(10)]


def test_health_endpoints(gateway):
    for path in ("/healthz", "/readyz"):
        response = httpx.get(f"{gateway.url}{path}")
        assert response.status_code == 200
        assert response.headers["x-request-id"].startswith("req_")


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/route"])
def test_client_sent_request_id_is_not_trusted(http, api_key, path):
    response = http.post(
        path,
        headers={"Authorization": f"Bearer {api_key[1]}", "x-request-id": "forged"},
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]},
    )
    assert response.headers["x-request-id"] != "forged"
