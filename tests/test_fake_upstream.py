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


# -- embeddings, legacy completions, moderations and the bad_usage switch ------------------------------------


def sse_events(data: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (``[DONE]`` included)."""
    return [event.removeprefix("data: ") for event in data.decode().split("\n\n") if event]


def test_embeddings_base64_and_float_carry_the_same_unit_vectors(client: openai.OpenAI) -> None:
    # The SDK asks for base64 unless told otherwise and decodes it: both encodings must agree exactly.
    default = client.embeddings.create(model="text-embedding-3-small", input=["hello big world", "other"])
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["hello big world", "other"], encoding_format="float"
    )
    assert default.object == "list" and default.model == "text-embedding-3-small"
    assert [e.index for e in default.data] == [0, 1]
    assert [e.embedding for e in default.data] == [e.embedding for e in floats.data]
    first, second = (e.embedding for e in floats.data)
    assert len(first) == 1536
    assert abs(sum(x * x for x in first) - 1) < 1e-5
    assert first != second
    assert (floats.usage.prompt_tokens, floats.usage.total_tokens) == (4, 4)  # 3 + 1 words
    again = client.embeddings.create(model="text-embedding-3-small", input="hello big world", encoding_format="float")
    assert again.data[0].embedding == first  # deterministic


def test_embeddings_token_inputs_dimensions_and_model_defaults(client: openai.OpenAI, upstream: str) -> None:
    tokens = client.embeddings.create(model="text-embedding-3-large", input=[1212, 318, 257])
    assert len(tokens.data) == 1 and len(tokens.data[0].embedding) == 3072
    assert tokens.usage.prompt_tokens == 3
    arrays = client.embeddings.create(model="text-embedding-3-small", input=[[1, 2], [3, 4, 5]], dimensions=8)
    assert [len(e.embedding) for e in arrays.data] == [8, 8]
    assert arrays.usage.prompt_tokens == arrays.usage.total_tokens == 5
    status, _, data = fetch(
        "POST", upstream + "/v1/embeddings", {"model": "m", "input": "x y", "encoding_format": "base64"}
    )
    assert status == 200
    assert isinstance(json.loads(data)["data"][0]["embedding"], str)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": ["a", 1]}, "input"),
        ({"model": "m", "input": [[1], []]}, "input"),
        ({"model": "m", "input": [True]}, "input"),
        ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": "x", "dimensions": "8"}, "dimensions"),
        ({"model": "m", "input": "x", "fake": {"cut_after_chunks": 1}}, "fake.cut_after_chunks"),
    ],
)
def test_embeddings_validation(upstream: str, body: dict, param: str) -> None:
    status, _, data = fetch("POST", upstream + "/v1/embeddings", body)
    assert status == 400
    error = json.loads(data)["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_embeddings_steering_and_recording(client: openai.OpenAI, upstream: str) -> None:
    fetch("DELETE", upstream + "/_fake/requests")
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model="m", input="x", extra_body={"fake": {"status": 429}})
    usage = {"prompt_tokens": 40, "total_tokens": 40}
    steered = client.embeddings.create(model="m", input="x", extra_body={"fake": {"usage": usage, "delay_ms": 100}})
    assert steered.usage.prompt_tokens == 40
    status, _, data = fetch(
        "POST", upstream + "/v1/embeddings", {"model": "m", "input": "x", "fake": {"garbage": True}}
    )
    assert (status, data) == (200, b"<html>oops")
    records = get_json(upstream + "/_fake/requests")
    assert [(r["path"], r["status"]) for r in records] == [("/v1/embeddings", 429), *[("/v1/embeddings", 200)] * 2]
    assert records[1]["json"]["input"] == "x" and records[1]["completed"]


def test_legacy_completion_plain(client: openai.OpenAI) -> None:
    raw = client.completions.with_raw_response.create(model="gpt-3.5-turbo-instruct", prompt="one two three")
    assert raw.headers["x-request-id"].startswith("req_fake_")
    completion = raw.parse()
    assert completion.object == "text_completion" and completion.id.startswith("cmpl-fake")
    assert completion.model == "gpt-3.5-turbo-instruct"
    (choice,) = completion.choices
    assert (choice.index, choice.text, choice.finish_reason, choice.logprobs) == (
        0,
        "echo: one two three",
        "stop",
        None,
    )
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (3, 4, 7)


def test_legacy_completion_max_tokens_n_best_of_and_echo(client: openai.OpenAI) -> None:
    long_prompt = " ".join(f"w{i}" for i in range(30))
    default_cap = client.completions.create(model="m", prompt=long_prompt)
    assert default_cap.choices[0].finish_reason == "length"
    assert default_cap.usage.completion_tokens == 16  # max_tokens defaults to 16
    assert default_cap.choices[0].text == "echo: " + " ".join(f"w{i}" for i in range(15)) + " "
    many = client.completions.create(model="m", prompt=["a b", "c"], max_tokens=2, n=2, best_of=3, echo=True)
    assert [(c.index, c.text, c.finish_reason) for c in many.choices] == [
        (0, "a becho: a ", "length"),
        (1, "a becho: a ", "length"),
        (2, "cecho: c", "stop"),
        (3, "cecho: c", "stop"),
    ]
    # Every one of best_of=3 candidates is billed: (2 + 2 pieces) x 3.
    assert (many.usage.prompt_tokens, many.usage.completion_tokens) == (3, 12)
    tokens = client.completions.create(model="m", prompt=[[5, 6, 7]], max_tokens=0)
    assert (tokens.choices[0].text, tokens.choices[0].finish_reason) == ("", "length")
    assert (tokens.usage.prompt_tokens, tokens.usage.completion_tokens) == (3, 0)


def test_legacy_completion_streams_with_and_without_usage(client: openai.OpenAI, upstream: str) -> None:
    chunks = list(client.completions.create(model="m", prompt="one two", stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "echo: one two"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None and c.object == "text_completion" for c in chunks)
    asked = list(
        client.completions.create(model="m", prompt="one two", stream=True, stream_options={"include_usage": True})
    )
    assert asked[-1].choices == [] and (asked[-1].usage.prompt_tokens, asked[-1].usage.completion_tokens) == (2, 3)
    assert all(c.choices for c in asked[:-1]) and len({c.id for c in asked}) == 1
    body = {"model": "m", "prompt": "one", "stream": True, "stream_options": {"include_usage": True}}
    status, headers, data = fetch("POST", upstream + "/v1/completions", body)
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = sse_events(data)
    assert events[-1] == "[DONE]"
    assert all(json.loads(e)["usage"] is None for e in events[:-2])
    assert json.loads(events[-2])["choices"] == []


def test_legacy_completion_stream_cut_and_validation(client: openai.OpenAI, upstream: str) -> None:
    stream = client.completions.create(
        model="m", prompt="x", stream=True, max_tokens=50, extra_body={"fake": {"chunks": 9, "cut_after_chunks": 3}}
    )
    received = []
    with pytest.raises(openai.APIConnectionError):
        for chunk in stream:
            received.append(chunk.choices[0].text)
    assert received == ["tok0 ", "tok1 ", "tok2 "]
    record = get_json(upstream + "/_fake/requests")[-1]
    assert (record["path"], record["cut"], record["chunks_sent"]) == ("/v1/completions", True, 3)
    for body, param in [
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": []}, "prompt"),
        ({"model": "m", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "prompt": "x", "n": 0}, "n"),
        ({"model": "m", "prompt": "x", "n": 3, "best_of": 2}, "best_of"),
        ({"model": "m", "prompt": "x", "stream": True, "best_of": 2}, "best_of"),
        ({"model": "m", "prompt": "x", "stream": "yes"}, "stream"),
    ]:
        status, _, data = fetch("POST", upstream + "/v1/completions", body)
        assert (status, json.loads(data)["error"]["param"]) == (400, param), body


def test_moderations(client: openai.OpenAI, upstream: str) -> None:
    result = client.moderations.create(input=["I will kill you", "a nice day"])
    assert result.id.startswith("modr-fake") and result.model == "omni-moderation-latest"
    flagged, clear = result.results
    assert flagged.flagged and flagged.categories.violence and flagged.category_scores.violence == 0.9
    assert not flagged.categories.sexual
    assert not clear.flagged and not any(clear.categories.model_dump().values())
    assert clear.category_applied_input_types.violence == ["text"]
    parts = [{"type": "text", "text": "Hate"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}]
    (multi,) = client.moderations.create(model="omni-moderation-2024-09-26", input=parts).results
    assert multi.categories.hate and multi.category_applied_input_types.violence == ["text", "image"]
    status, _, data = fetch("POST", upstream + "/v1/moderations", {"input": "x"})
    body = json.loads(data)
    assert status == 200 and "usage" not in body
    assert len(body["results"][0]["categories"]) == 13
    for bad, param in [({}, "input"), ({"input": 3}, "input"), ({"input": "x", "fake": {"usage": {}}}, "fake.usage")]:
        status, _, data = fetch("POST", upstream + "/v1/moderations", bad)
        assert (status, json.loads(data)["error"]["param"]) == (400, param)
    started = time.monotonic()
    with pytest.raises(openai.InternalServerError):
        client.moderations.create(input="x", extra_body={"fake": {"status": 500, "delay_ms": 100}})
    assert time.monotonic() - started >= 0.1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "m", "messages": MESSAGES}),
        ("/v1/chat/completions", {"model": "m", "messages": MESSAGES, "stream": True}),
        ("/v1/completions", {"model": "m", "prompt": "a b"}),
        ("/v1/completions", {"model": "m", "prompt": "a b", "stream": True}),
        ("/v1/embeddings", {"model": "m", "input": "a b"}),
    ],
    ids=["chat", "chat-stream", "completions", "completions-stream", "embeddings"],
)
def test_bad_usage_spoils_only_prompt_tokens(upstream: str, path: str, body: dict) -> None:
    def usage_of(fake: dict | None) -> dict:
        payload = {**body, "stream_options": {"include_usage": True}} if body.get("stream") else dict(body)
        if fake is not None:
            payload["fake"] = fake
        status, _, data = fetch("POST", upstream + path, payload)
        assert status == 200
        if body.get("stream"):
            events = sse_events(data)
            assert events[-1] == "[DONE]"
            return json.loads(events[-2])["usage"]
        return json.loads(data)["usage"]

    honest = usage_of(None)
    assert usage_of({"bad_usage": True}) == {**honest, "prompt_tokens": "abc"}
    assert usage_of({"bad_usage": 1.5}) == {**honest, "prompt_tokens": 1.5}
    assert usage_of({"bad_usage": False}) == honest
    # On top of a steered usage too.
    assert usage_of({"usage": {"prompt_tokens": 1, "total_tokens": 1}, "bad_usage": True}) == {
        "prompt_tokens": "abc",
        "total_tokens": 1,
    }
