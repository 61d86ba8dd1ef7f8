"""An upstream that answers 200 with a usage Tollgate cannot read (`"prompt_tokens": "abc"`, a fraction, a
negative count) must not turn into a server error or a leak: a plain answer becomes a 502 in OpenAI's shape, a
stream is relayed to its end, the key's concurrency slot is given back, and the request is recorded exactly once,
its tokens estimated."""

import uuid

import httpx
import openai
import pytest

from tests.conftest import assert_openai_error
from tests.test_embeddings import records_of

CASES = [
    pytest.param(
        "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "MARKER"}]},
        id="chat-plain",
    ),
    pytest.param(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "MARKER"}], "stream": True},
        id="chat-stream",
    ),
    pytest.param(
        "/v1/chat/completions",
        {
            "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "MARKER"}], "stream": True,
            "stream_options": {"include_usage": True},
        },
        id="chat-stream-client-asked-usage",
    ),
    pytest.param("/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "MARKER"}, id="completions-plain"),
    pytest.param(
        "/v1/completions", {"model": "gpt-3.5-turbo-instruct", "prompt": "MARKER", "stream": True},
        id="completions-stream",
    ),
    pytest.param("/v1/embeddings", {"model": "text-embedding-3-small", "input": "MARKER"}, id="embeddings-plain"),
]  # fmt: skip


def send(gateway, raw_key: str, path: str, body: dict) -> httpx.Response:
    """POST `body` and read the whole answer (plain or streamed)."""
    with httpx.Client(base_url=gateway.url, timeout=30) as session:
        response = session.post(path, headers={"Authorization": f"Bearer {raw_key}"}, json=body)
        response.read()
        return response


@pytest.mark.parametrize(("path", "template"), CASES)
def test_an_unreadable_usage_is_a_502_or_a_whole_stream_never_a_500(gateway, make_key, path, template):
    key, raw = make_key(name="bad-usage", max_concurrent=1)
    marker = uuid.uuid4().hex
    body = {**template, "fake": {"bad_usage": True}}
    body = {k: (v.replace("MARKER", marker) if isinstance(v, str) and k != "model" else v) for k, v in body.items()}
    if "messages" in body:
        body["messages"] = [{"role": "user", "content": marker}]
    response = send(gateway, raw, path, body)
    assert response.headers["x-request-id"].startswith("req_")
    if body.get("stream"):
        assert response.status_code == 200, response.text[:500]
        assert response.text.endswith("data: [DONE]\n\n"), response.text[-500:]
        assert 'data: {"error"' not in response.text
        assert marker in response.text  # the content was relayed
    else:
        assert_openai_error(response, 502, type_="server_error")
    # The concurrency slot was given back: the key's next request goes through.
    clean = {k: v for k, v in body.items() if k != "fake"}
    assert send(gateway, raw, path, clean).status_code == 200
    first, second = records_of(key.prefix, 2)
    assert first.request_id == response.headers["x-request-id"]
    assert first.status == response.status_code
    assert first.usage_estimated and first.prompt_tokens > 0
    assert first.total_tokens == first.prompt_tokens + first.completion_tokens
    assert (second.status, second.usage_estimated) == (200, False)


@pytest.mark.parametrize("value", ["abc", 1.5, -3, "12", [], {"n": 1}, True])
def test_every_kind_of_unreadable_count_through_the_sdk(gateway, make_key, value):
    key, raw = make_key(name="bad-usage-kinds", max_concurrent=1)
    client = gateway.client(raw)
    fake = {"usage": {"prompt_tokens": value, "completion_tokens": 2, "total_tokens": 5}}
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}], extra_body={"fake": fake}
        )
    assert caught.value.status_code == 502
    chunks = list(
        client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "streamed"}],
            stream=True,
            extra_body={"fake": fake},
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "echo: streamed"
    records = records_of(key.prefix, 2)
    assert [(r.status, r.usage_estimated) for r in records] == [(502, True), (200, True)]
