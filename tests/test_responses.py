"""The Responses API through Tollgate with the official SDK, sync and async: plain, streamed (the raw stream and
the `responses.stream()` helper), retrieve, delete, input items, input tokens; usage with cached and reasoning
tokens; typed events relayed unchanged; a stream cut or failed upstream ends with OpenAI's error event."""

import asyncio

import httpx
import openai
import orjson
import pytest

from tests.conftest import assert_openai_error
from tests.test_usage_recording import wait_for_records

MODEL = "gpt-4o-mini"


def test_plain_create_retrieve_input_items_and_delete(client, api_key):
    key, _ = api_key
    created = client.responses.create(model=MODEL, input="hello there", extra_body={"fake": {"reasoning_tokens": 3}})
    assert created.output_text == "echo: hello there"
    assert created.usage.input_tokens == 2 and created.usage.output_tokens == 6
    fetched = client.responses.retrieve(created.id)
    assert fetched.id == created.id and fetched.output_text == "echo: hello there"
    items = client.responses.input_items.list(created.id)
    assert [item.type for item in items.data] == ["message"]
    assert client.responses.input_tokens.count(model=MODEL, input="one two three").input_tokens == 3
    deleted = client.responses.delete(created.id)
    assert deleted is None or getattr(deleted, "deleted", True)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)

    records = {r.endpoint: r for r in wait_for_records(6, key_prefix=key.prefix)}
    assert (
        set(records)
        == {
            "responses",
            "responses.retrieve",
            "responses.input_items",
            "responses.input_tokens",
            "responses.delete",
        }
        or len(records) == 5
    )
    create = records["responses"]
    assert (create.prompt_tokens, create.completion_tokens, create.reasoning_tokens) == (2, 6, 3)
    assert create.model == MODEL and not create.usage_estimated and create.status == 200
    for name in ("responses.retrieve", "responses.input_tokens", "responses.delete"):
        assert records[name].prompt_tokens == 0 and records[name].cost_usd == 0, name


def test_streamed_create_relays_typed_events_unchanged(gateway, fake_upstream, api_key):
    key, raw = api_key
    body = {"model": MODEL, "input": "one two three", "stream": True, "fake": {"cached_tokens": 2}}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/responses", json=body, headers={"Authorization": f"Bearer {raw}"}, timeout=30
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        text = response.read().decode()
    events = [block for block in text.split("\n\n") if block]
    kinds = [block.split("\n")[0].removeprefix("event: ") for block in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert kinds.count("response.output_text.delta") == 4  # "echo:", "one", "two", "three"
    numbers = [orjson.loads(block.split("\n")[1].removeprefix("data: "))["sequence_number"] for block in events]
    assert numbers == list(range(len(events)))
    [record] = wait_for_records(1, key_prefix=key.prefix)
    assert record.streamed and (record.prompt_tokens, record.cached_tokens, record.completion_tokens) == (3, 2, 4)
    assert not record.usage_estimated


def test_the_stream_helper_and_async_client(gateway, api_key):
    _, raw = api_key

    async def run():
        client = gateway.async_client(raw)
        async with client.responses.stream(model=MODEL, input="async hello") as stream:
            deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
            final = await stream.get_final_response()
        assert "".join(deltas) == "echo: async hello" == final.output_text
        again = await client.responses.retrieve(final.id)
        assert again.output_text == final.output_text
        streamed = await client.responses.create(model=MODEL, input="x y", stream=True)
        kinds = [event.type async for event in streamed]
        assert kinds[-1] == "response.completed"
        await client.close()

    asyncio.run(run())

    sync = gateway.client(raw)
    with sync.responses.stream(model=MODEL, input="sync hello") as stream:
        final = stream.get_final_response()
    assert final.output_text == "echo: sync hello"


def test_a_stream_cut_upstream_ends_with_an_error_event(gateway, api_key):
    key, raw = api_key
    body = {"model": MODEL, "input": "a b c d e f", "stream": True, "fake": {"cut_after_chunks": 2}}
    response = httpx.post(
        f"{gateway.url}/v1/responses", json=body, headers={"Authorization": f"Bearer {raw}"}, timeout=30
    )
    events = [block for block in response.text.split("\n\n") if block]
    last = events[-1].split("\n")
    assert last[0] == "event: error", response.text
    assert sum(block.startswith("event: response.output_text.delta") for block in events) == 2, response.text
    error = orjson.loads(last[1].removeprefix("data: "))
    assert set(error) == {"type", "code", "message", "param", "sequence_number"} and error["type"] == "error"
    previous = orjson.loads(events[-2].split("\n")[1].removeprefix("data: "))
    assert error["sequence_number"] == previous["sequence_number"] + 1
    [record] = wait_for_records(1, key_prefix=key.prefix)
    assert record.usage_estimated and record.error_type == "upstream_error"
    assert record.completion_tokens == 2  # one per relayed text delta


def test_an_upstream_error_event_is_relayed_and_ends_the_stream(client, api_key):
    key, _ = api_key
    stream = client.responses.create(
        model=MODEL, input="a b c", stream=True, extra_body={"fake": {"error_after_chunks": 1}}
    )
    kinds = [event.type for event in stream]
    assert kinds[-1] == "error" and "response.output_text.delta" in kinds
    [record] = wait_for_records(1, key_prefix=key.prefix)
    assert record.error_type == "upstream_error" and record.usage_estimated


def test_validation_as_for_chat(http, api_key):
    _, raw = api_key
    auth = {"Authorization": f"Bearer {raw}"}
    cases = [
        ({"input": "x"}, "model"),
        ({"model": "", "input": "x"}, "model"),
        ({"model": MODEL, "input": 5}, "input"),
        ({"model": MODEL, "input": "x", "temperature": 3}, "temperature"),
        ({"model": MODEL, "input": "x", "stream": "yes"}, "stream"),
        ({"model": MODEL, "input": "x", "tools": [{"name": "no type"}]}, "tools[0].type"),
        ({"model": MODEL, "input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"}, None),
    ]
    for body, param in cases:
        error = assert_openai_error(http.post("/v1/responses", json=body, headers=auth), 400)
        if param is not None:
            assert error["param"] == param, (body, error)
    twice = b'{"model": "gpt-4o-mini", "input": "x", "model": "o3"}'
    error = assert_openai_error(
        http.post("/v1/responses", content=twice, headers={**auth, "content-type": "application/json"}), 400
    )
    assert error["param"] == "model"
    assert_openai_error(http.get("/v1/responses", headers=auth), 405)


def test_unknown_fields_are_forwarded_byte_for_byte(gateway, fake_upstream, api_key):
    _, raw = api_key
    body = b'{"model":"gpt-4o-mini","input":"x","prompt_cache_key":"abc","client_metadata":{"a":1},"store":false}'
    fake_upstream.clear()
    response = httpx.post(
        f"{gateway.url}/v1/responses",
        content=body,
        headers={"Authorization": f"Bearer {raw}", "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 200
    [sent] = [r for r in fake_upstream.requests() if r["path"] == "/v1/responses"]
    assert sent["body"] == body.decode()
