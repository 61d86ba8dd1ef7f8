"""Tests of the bundled fake upstream (``python -m fakeupstream``) through the official ``openai`` SDK.

The server runs as a real subprocess, exactly as ``make run`` and ``make bench`` use it; a few checks use
raw sockets where the SDK cannot see the detail (disconnects, aborted streams, non-JSON bodies).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from fakeupstream.completions import content_text, prompt_tokens, split_pieces
from fakeupstream.server import serve_in_thread

KEY = "sk-fake-test"
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    """Start ``python -m fakeupstream --port 0 --require-key KEY``; yield its base URL (no ``/v1``)."""
    pythonpath = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=pythonpath)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fakeupstream", "--port", "0", "--require-key", KEY],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("fakeupstream listening on http://127.0.0.1:"), line + proc.stderr.read()
        yield line.split(" on ", 1)[1].strip()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out == "", "the startup line must be the only output"
    assert err == ""


@pytest.fixture
def client(upstream: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=upstream + "/v1", api_key=KEY, max_retries=0, timeout=10)


def fetch(method: str, url: str, body: dict | None = None, key: str | None = KEY) -> tuple[int, dict, bytes]:
    """Make one plain HTTP request; return ``(status, headers with lower-case names, body)``."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    try:
        connection.request(method, parts.path, None if body is None else json.dumps(body).encode(), headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def get_json(url: str):
    return json.loads(fetch("GET", url)[2])


def stats(base: str) -> dict[str, int]:
    return get_json(base + "/_fake/stats")


def wait_for(predicate, timeout: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


def raw_post(base: str, body: dict, key: str = KEY) -> socket.socket:
    """Send a chat completion request over a raw socket and return the socket (response unread)."""
    parts = urlsplit(base)
    data = json.dumps(body).encode()
    sock = socket.create_connection((parts.hostname, parts.port), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: fake\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    return sock


def recv_until(sock: socket.socket, marker: bytes) -> bytes:
    buf = b""
    while marker not in buf:
        data = sock.recv(65536)
        if not data:
            break
        buf += data
    return buf


MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello big world"},
]


def test_pure_helpers() -> None:
    assert split_pieces("echo: hello  big world") == ["echo: ", "hello ", " ", "big ", "world"]
    assert "".join(split_pieces("a b ")) == "a b "
    parts = [{"type": "text", "text": "a"}, {"type": "image_url"}, {"type": "text", "text": "b"}]
    assert content_text(parts) == "a b"
    assert prompt_tokens(MESSAGES) == 5 + 3 * 2


def test_plain_completion(client: openai.OpenAI) -> None:
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
    assert raw.headers["x-request-id"].startswith("req_fake_")
    assert "openai-processing-ms" in raw.headers
    completion = raw.parse()
    assert completion.id.startswith("chatcmpl-fake")
    assert completion.model == "gpt-4o-mini"
    assert completion.system_fingerprint == "fp_fake"
    assert completion.service_tier == "default"
    choice = completion.choices[0]
    assert (choice.message.role, choice.message.content, choice.finish_reason) == (
        "assistant",
        "echo: hello big world",
        "stop",
    )
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (11, 4, 15)
    assert usage.prompt_tokens_details.cached_tokens == 0
    assert usage.completion_tokens_details.reasoning_tokens == 0


def test_stream_with_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": [{"type": "text", "text": "one two three"}]}]
    stream = client.chat.completions.create(
        model="gpt-4o", messages=messages, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert pieces == ["echo: ", "one ", "two ", "three"]
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3 + 3, 4)
    assert len({c.id for c in chunks}) == 1


def test_fake_chunks_and_usage_override(client: openai.OpenAI) -> None:
    fake = {"chunks": 3}
    completion = client.chat.completions.create(model="m", messages=MESSAGES, extra_body={"fake": fake})
    assert completion.choices[0].message.content == "tok0 tok1 tok2 "
    assert completion.usage.completion_tokens == 3
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    fake = {"usage": usage}
    completion = client.chat.completions.create(model="m", messages=MESSAGES, extra_body={"fake": fake})
    assert completion.usage.model_dump(exclude_none=True) == usage


def test_status_switch_and_delay(client: openai.OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            extra_body={"fake": {"status": 429, "headers": {"retry-after": "7"}, "delay_ms": 150}},
        )
    assert time.monotonic() - started >= 0.15
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.body == {"message": "fake error", "type": "server_error", "param": None, "code": None}


def test_html_error_and_garbage(upstream: str) -> None:
    fake = {"status": 502, "error_body": "<h1>bad</h1>", "content_type": "text/html"}
    status, headers, data = fetch(
        "POST", upstream + "/v1/chat/completions", {"model": "m", "messages": MESSAGES, "fake": fake}
    )
    assert (status, headers["content-type"], data) == (502, "text/html", b"<h1>bad</h1>")
    fake = {"garbage": True}
    status, headers, data = fetch(
        "POST", upstream + "/v1/chat/completions", {"model": "m", "messages": MESSAGES, "fake": fake}
    )
    assert (status, headers["content-type"], data) == (200, "application/json", b"<html>oops")


def test_auth_and_models(upstream: str, client: openai.OpenAI) -> None:
    bad = openai.OpenAI(base_url=upstream + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.chat.completions.create(model="m", messages=MESSAGES)
    assert caught.value.code == "invalid_api_key"
    assert [m.id for m in client.models.list()] == ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "o4-mini"]


def test_cut_after_chunks(upstream: str, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, extra_body={"fake": {"chunks": 5, "cut_after_chunks": 2}}
    )
    received = []
    with pytest.raises(openai.APIConnectionError) as caught:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content)
    assert received == ["", "tok0 ", "tok1 "], caught.value
    record = get_json(upstream + "/_fake/requests")[-1]
    assert (record["cut"], record["chunks_sent"], record["completed"]) == (True, 2, False)


def test_client_disconnect_is_seen_promptly(upstream: str) -> None:
    fetch("DELETE", upstream + "/_fake/requests")
    before = stats(upstream)
    body = {
        "model": "m",
        "messages": MESSAGES,
        "stream": True,
        "fake": {"chunks": 100, "chunk_delay_ms": 400},
    }
    sock = raw_post(upstream, body)
    assert b'"role":"assistant"' in recv_until(sock, b"\n\n")
    assert stats(upstream)["open_streams"] == before["open_streams"] + 1
    sock.close()
    closed_at = time.time()
    assert wait_for(lambda: stats(upstream)["open_streams"] == before["open_streams"], timeout=1.0)
    assert stats(upstream)["client_disconnects"] == before["client_disconnects"] + 1
    (record,) = get_json(upstream + "/_fake/requests")
    assert record["stream"] and record["disconnected"] and not record["completed"]
    assert closed_at - 0.05 <= record["disconnected_at"] <= closed_at + 1.0


def test_hang_until_client_leaves(upstream: str) -> None:
    before = stats(upstream)
    sock = raw_post(upstream, {"model": "m", "messages": MESSAGES, "fake": {"hang": True}})
    sock.settimeout(0.3)
    with pytest.raises(TimeoutError):
        sock.recv(1)
    sock.close()
    assert wait_for(lambda: stats(upstream)["client_disconnects"] == before["client_disconnects"] + 1)


def test_request_recording(upstream: str, client: openai.OpenAI) -> None:
    assert fetch("DELETE", upstream + "/_fake/requests")[0] == 200
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_headers={"X-Trace": "t1"})
    (record,) = get_json(upstream + "/_fake/requests")
    assert (record["method"], record["path"], record["status"], record["completed"]) == (
        "POST",
        "/v1/chat/completions",
        200,
        True,
    )
    assert record["headers"]["authorization"] == f"Bearer {KEY}"
    assert record["headers"]["x-trace"] == "t1"
    assert json.loads(record["body"]) == record["json"] == {"model": "gpt-4o", "messages": MESSAGES}


def test_serve_in_thread_without_recording() -> None:
    base, stop = serve_in_thread(record=False)
    try:
        assert base.startswith("http://127.0.0.1:") and not base.endswith(":0")
        client = openai.OpenAI(base_url=base + "/v1", api_key="any", max_retries=0)
        completion = client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert completion.choices[0].message.content == "echo: hi"
        assert get_json(base + "/_fake/requests") == []
        assert stats(base) == {"open_streams": 0, "completed": 1, "client_disconnects": 0}
        assert json.loads(fetch("DELETE", base + "/_fake/stats")[2])["completed"] == 0
    finally:
        stop()
    stop()  # idempotent
    with pytest.raises(ConnectionError):
        fetch("GET", base + "/_fake/stats")
