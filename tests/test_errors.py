"""Every row of the core error table, through real servers: always OpenAI's error shape, never HTML or a 500."""

import time
import uuid

import httpx
import openai
import pytest

from core.errors import json_500
from tests.conftest import assert_openai_error, free_port

CHAT = "/v1/chat/completions"


def chat_body(**extra):
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], **extra}


@pytest.fixture
def auth(api_key):
    return {"Authorization": f"Bearer {api_key[1]}"}


# --- the client's mistakes: 400 with the offending field in `param` ---------------------------------


@pytest.mark.parametrize(
    ("content", "param"),
    [
        (b"", None),
        (b"   ", None),
        (b"{not json", None),
        (b"[1, 2]", None),
        (b'{"messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "", "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', "model"),
        (b'{"model": "gpt-4o-mini"}', "messages"),
        (b'{"model": "gpt-4o-mini", "messages": []}', "messages"),
        (b'{"model": "gpt-4o-mini", "messages": "hello"}', "messages"),
        (b'{"model": "gpt-4o-mini", "messages": ["hello"]}', "messages[0]"),
        (b'{"model": "gpt-4o-mini", "messages": [{"content": "x"}]}', "messages[0].role"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "stream": "yes"}', "stream"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "stream_options": {}}', "stream_options"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "temperature": 2.5}', "temperature"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "temperature": "hot"}', "temperature"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "top_p": -0.1}', "top_p"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "n": 0}', "n"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "n": 1.5}', "n"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "presence_penalty": 3}', "presence_penalty"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "max_tokens": true}', "max_tokens"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "max_tokens": 2.5}', "max_tokens"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "top_logprobs": 21}', "top_logprobs"),
        (b'{"model": "gpt-4o-mini", "messages": [{"role": "user"}], "logprobs": 1}', "logprobs"),
        (b"\xff\xfe{}", None),
    ],
)
def test_invalid_requests_are_400_naming_the_field(http, auth, fake_upstream, content, param):
    fake_upstream.clear()
    response = http.post(CHAT, headers={**auth, "Content-Type": "application/json"}, content=content)
    assert_openai_error(response, 400, type_="invalid_request_error", param=param)
    assert fake_upstream.requests() == []  # refused before any upstream call


def test_sdk_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user"}], temperature=9)
    assert caught.value.body["param"] == "temperature"


# --- size ---------------------------------------------------------------------------------------------


def test_body_over_the_default_limit_is_413(http, auth):
    big = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "' + b"x" * (21 * 1024 * 1024)
    response = http.post(CHAT, headers={**auth, "Content-Type": "application/json"}, content=big + b'"}]}')
    assert_openai_error(response, 413, type_="invalid_request_error")
    assert "20 MB" in response.json()["error"]["message"]


def test_chunked_body_over_the_limit_is_413(start_gateway, api_key):
    gateway = start_gateway(name="small-body", env={"MAX_REQUEST_BODY_MB": "0.01"})

    def chunks():
        yield b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"y" * 1024
        yield b'"}]}'

    response = httpx.post(
        f"{gateway.url}{CHAT}", headers={"Authorization": f"Bearer {api_key[1]}"}, content=chunks(), timeout=30
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"
    # A body just under the limit still passes.
    ok = httpx.post(
        f"{gateway.url}{CHAT}", headers={"Authorization": f"Bearer {api_key[1]}"}, json=chat_body(), timeout=30
    )
    assert ok.status_code == 200


# --- upstream answers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 404, 422])
def test_upstream_client_errors_pass_through_as_is(http, auth, status):
    upstream_error = {"error": {"message": f"upstream says {status}", "type": "invalid_request_error",
                                "param": "x", "code": "some_code"}}  # fmt: skip
    response = http.post(CHAT, headers=auth, json=chat_body(fake={"status": status, "error_body": upstream_error}))
    assert response.status_code == status
    assert response.json() == upstream_error


def test_upstream_429_keeps_its_retry_after(http, auth, client):
    response = http.post(CHAT, headers=auth, json=chat_body(fake={"status": 429, "headers": {"retry-after": "7"}}))
    assert_openai_error(response, 429)
    assert response.headers["retry-after"] == "7"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(**chat_body(), extra_body={"fake": {"status": 429}})


@pytest.mark.parametrize("status", [401, 403])
def test_upstream_rejecting_our_key_is_502_never_the_clients_fault(http, auth, status):
    response = http.post(CHAT, headers=auth, json=chat_body(fake={"status": status}))
    error = assert_openai_error(response, 502, type_="server_error")
    assert "gateway" in error["message"]


@pytest.mark.parametrize(
    "fake",
    [
        {"status": 500},
        {"status": 503, "error_body": "<html><body>Bad gateway</body></html>", "content_type": "text/html"},
        {"garbage": True},
    ],
)
def test_upstream_failures_are_502(http, auth, client, fake):
    response = http.post(CHAT, headers=auth, json=chat_body(fake=fake))
    assert_openai_error(response, 502, type_="server_error")
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(**chat_body(), extra_body={"fake": fake})


def test_upstream_connection_refused_is_502(start_gateway, api_key):
    gateway = start_gateway(name="no-upstream", upstream_url=f"http://127.0.0.1:{free_port()}")
    response = httpx.post(
        f"{gateway.url}{CHAT}", headers={"Authorization": f"Bearer {api_key[1]}"}, json=chat_body(), timeout=30
    )
    assert_openai_error(response, 502, type_="server_error")


def test_silent_upstream_is_504_on_time(start_gateway, api_key, fake_upstream):
    gateway = start_gateway(name="short-timeout", env={"OPENAI_TIMEOUT": "1"})
    started = time.monotonic()
    response = httpx.post(
        f"{gateway.url}{CHAT}",
        headers={"Authorization": f"Bearer {api_key[1]}"},
        json=chat_body(fake={"hang": True}),
        timeout=30,
    )
    elapsed = time.monotonic() - started
    assert_openai_error(response, 504, type_="server_error")
    assert 0.9 <= elapsed < 5, elapsed


def test_failure_after_streaming_began_ends_with_an_error_event(http, auth, client):
    with http.stream(
        "POST", CHAT, headers=auth, json=chat_body(stream=True, fake={"chunks": 10, "cut_after_chunks": 3})
    ) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert len(events) == 5  # the role chunk, three content chunks, the error
    assert events[-1].startswith('data: {"error":')
    assert "[DONE]" not in raw
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(**chat_body(stream=True), extra_body={"fake": {"cut_after_chunks": 2}}))


def test_upstream_5xx_when_streaming_is_502_before_the_stream(http, auth):
    response = http.post(CHAT, headers=auth, json=chat_body(stream=True, fake={"status": 500}))
    assert_openai_error(response, 502)


# --- paths and methods --------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/v1/nope", "/v1/completions/x", "/api/other", "/v2/chat/completions"])
def test_unknown_paths_are_json_404(http, path):
    response = http.get(path)
    assert_openai_error(response, 404, type_="invalid_request_error")


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_wrong_method_is_json_405(http, auth, method):
    response = http.request(method, CHAT, headers=auth)
    assert_openai_error(response, 405, type_="invalid_request_error")


def test_the_500_handler_speaks_openai(rf):
    response = json_500(rf.get("/"))
    assert response.status_code == 500
    assert response["content-type"] == "application/json"


def test_request_id_is_on_errors_too(http):
    response = http.post(CHAT, json=chat_body())
    assert response.status_code == 401
    assert response.headers["x-request-id"].startswith("req_")
    assert uuid.UUID(response.headers["x-request-id"][4:])


def test_upstream_failure_after_admission_still_carries_rate_limit_headers(http, make_key, gateway):
    _, raw = make_key(name="limited", rpm=100)
    response = http.post(CHAT, headers={"Authorization": f"Bearer {raw}"}, json=chat_body(fake={"status": 500}))
    assert_openai_error(response, 502)
    assert response.headers["x-ratelimit-limit-requests"] == "100"
    assert response.headers["x-ratelimit-remaining-requests"] == "99"
