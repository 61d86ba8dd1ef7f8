"""The per-request log line: one JSON object per request with a fixed shape, and no secret or prompt in any line."""

import json
import time
import uuid

import httpx
import openai
import pytest

from tests.conftest import UPSTREAM_KEY

MODEL = "gpt-4o-mini"
FIELDS = {
    "timestamp": str,
    "level": str,
    "logger": str,
    "message": str,
    "request_id": str,
    "key_prefix": str,
    "endpoint": str,
    "model": str,
    "status": int,
    "error_type": str,
    "streamed": bool,
    "prompt_tokens": int,
    "cached_tokens": int,
    "completion_tokens": int,
    "latency_ms": (int, float, type(None)),  # null only on a 401 line (no request outcome exists)
    "ttfb_ms": (int, float, type(None)),
    "upstream_request_id": str,
}


def request_lines(gateway, request_ids: set[str], timeout: float = 10) -> dict[str, dict]:
    """The JSON request lines of `request_ids` in the gateway's log, waiting until they all arrived."""
    deadline = time.monotonic() + timeout
    while True:
        found = {}
        for line in gateway.log.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record.get("request_id") in request_ids:
                assert record["request_id"] not in found, f"two lines for {record['request_id']}"
                found[record["request_id"]] = record
        if set(found) == request_ids or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.fixture
def json_gateway(start_gateway):
    return start_gateway(name="json-logs", env={"LOG_FORMAT": "json"})


def test_one_json_line_per_request_without_secrets_or_prompts(json_gateway, make_key):
    gateway = json_gateway
    key, raw = make_key(name="logging", allowed_models=[MODEL])
    prompt = f"my confidential prompt {uuid.uuid4().hex}"
    with gateway.client(raw) as client:
        plain = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}]
        )
        completion = plain.parse()
        stream = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": prompt + " streamed"}], stream=True
        )
        streamed_text = "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
        with pytest.raises(openai.NotFoundError) as not_found:
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": prompt}])
    with gateway.client(f"{key.prefix}.{'x' * 32}") as client, pytest.raises(openai.AuthenticationError) as denied:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}])

    ids = {
        "plain": plain.headers["x-request-id"],
        "stream": stream.headers["x-request-id"],
        "not_found": not_found.value.response.headers["x-request-id"],
        "denied": denied.value.response.headers["x-request-id"],
    }
    lines = request_lines(gateway, set(ids.values()))
    assert set(lines) == set(ids.values()), gateway.log[-3000:]

    for record in lines.values():
        for name, kind in FIELDS.items():
            assert isinstance(record[name], kind), (name, record)
        assert record["logger"] == "tollgate.requests"
        assert record["level"] in ("INFO", "WARNING")
        assert "messages" not in record
        assert record["status"] == 401 or isinstance(record["latency_ms"], float)

    line = lines[ids["plain"]]
    assert line["level"] == "INFO"
    assert line["key_prefix"] == key.prefix
    assert line["endpoint"] == "chat.completions"
    assert (line["model"], line["status"], line["error_type"], line["streamed"]) == (MODEL, 200, "", False)
    assert line["prompt_tokens"] == completion.usage.prompt_tokens
    assert line["completion_tokens"] == completion.usage.completion_tokens
    assert line["upstream_request_id"].startswith("req_fake_")
    assert 0 < line["ttfb_ms"] <= line["latency_ms"]

    line = lines[ids["stream"]]
    assert (line["status"], line["streamed"]) == (200, True)
    assert line["completion_tokens"] > 0 and line["ttfb_ms"] is not None

    line = lines[ids["not_found"]]
    assert (line["model"], line["status"], line["error_type"]) == ("gpt-4o", 404, "model_not_allowed")
    assert line["upstream_request_id"] == "" and line["prompt_tokens"] == 0

    line = lines[ids["denied"]]
    assert (line["status"], line["error_type"], line["key_prefix"]) == (401, "invalid_api_key", "")

    # Nothing secret anywhere in the log: not the key (nor its secret half), not the upstream key, not the
    # Authorization header, not the prompt or the answer made of it.
    log = gateway.log
    for secret in (raw, raw.split(".", 1)[1], UPSTREAM_KEY, "Bearer ", "uthorization", prompt, streamed_text):
        assert secret not in log, secret
    assert completion.choices[0].message.content not in log


def test_prompts_are_logged_only_when_enabled(start_gateway, make_key):
    gateway = start_gateway(name="log-prompts", workers=1, env={"LOG_FORMAT": "json", "LOG_PROMPTS": "true"})
    _, raw = make_key(name="log-prompts")
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "log this prompt please"}]
    with gateway.client(raw) as client:
        response = client.chat.completions.with_raw_response.create(model=MODEL, messages=messages)
    request_id = response.headers["x-request-id"]
    line = request_lines(gateway, {request_id})[request_id]
    assert line["messages"] == messages
    assert raw not in gateway.log


def test_plain_format_is_the_default_outside_production(gateway, api_key):
    _, raw = api_key
    response = httpx.post(
        f"{gateway.url}/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "plain log line"}]},
        headers={"Authorization": f"Bearer {raw}"},
        timeout=30,
    )
    assert response.status_code == 200
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while f"request_id={request_id}" not in gateway.log and time.monotonic() < deadline:
        time.sleep(0.05)
    line = next(line for line in gateway.log.splitlines() if f"request_id={request_id}" in line)
    assert " INFO tollgate.requests request " in line
    assert f"key_prefix={api_key[0].prefix}" in line and f"model={MODEL}" in line and "status=200" in line
    assert raw not in gateway.log and "plain log line" not in gateway.log
