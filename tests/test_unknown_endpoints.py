"""Only the declared endpoints are relayed: any other path under /v1/ is a 404 in OpenAI's shape, reaches no
upstream and leaves no usage record (it is not a request to any endpoint)."""

import time
import uuid

import pytest

from tests.conftest import assert_openai_error
from usage.models import UsageRecord

UNKNOWN = [
    ("POST", "/v1/images/generations"),
    ("POST", "/v1/audio/speech"),
    ("POST", "/v1/audio/transcriptions"),
    ("POST", "/v1/foo"),
    ("POST", "/v1/chat/completions/extra"),
    ("POST", "/v1/embeddings/v2"),
    ("POST", "/v1/"),
    ("GET", "/v1/files"),
    ("DELETE", "/v1/models/gpt-4o-mini"),
]


@pytest.mark.parametrize(("method", "path"), UNKNOWN, ids=[f"{m} {p}" for m, p in UNKNOWN])
def test_unknown_paths_are_404_without_upstream_call_or_record(http, api_key, fake_upstream, method, path):
    marker = uuid.uuid4().hex
    body = {"model": "gpt-4o-mini", "prompt": marker, "input": marker, "messages": [{"role": "user", "content": "x"}]}
    response = http.request(
        method,
        path,
        headers={"Authorization": f"Bearer {api_key[1]}", "X-Marker": marker},
        json=body if method == "POST" else None,
    )
    error = assert_openai_error(response, 404, type_="invalid_request_error")
    assert path in error["message"] or "not found" in error["message"].lower(), error
    time.sleep(0.6)  # three usage flush intervals
    assert not [r for r in fake_upstream.requests() if r["headers"].get("x-marker") == marker]
    assert not UsageRecord.objects.filter(key_prefix=api_key[0].prefix).exists()


def test_unknown_paths_are_404_without_a_key_too(http, fake_upstream):
    marker = uuid.uuid4().hex
    response = http.post("/v1/images/generations", headers={"X-Marker": marker}, json={"prompt": marker})
    assert response.status_code in (401, 404), response.text
    assert_openai_error(response, response.status_code)
    assert not [r for r in fake_upstream.requests() if r["headers"].get("x-marker") == marker]
