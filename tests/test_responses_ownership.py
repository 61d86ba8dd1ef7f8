"""Stored responses and conversations belong to the key lineage that created them: any other key gets OpenAI's
404 for an unknown id, on every route that names one, before the upstream sees anything; the owner's lineage
reaches them from every instance as soon as the create returns (a stream: as soon as `response.created` is
relayed), and after a key rotation. Conversations through the SDK, with the chain size reserved for follow-ups."""

import httpx
import openai
import pytest

from apikeys.services import api_key_rotate
from serverstate.models import OwnedObject
from tests.conftest import assert_openai_error

MODEL = "gpt-4o-mini"


def error_of(call) -> dict:
    with pytest.raises(openai.NotFoundError) as caught:
        call()
    return caught.value.body


def same_as_unknown(stranger_error: dict, unknown_error: dict, real_id: str, unknown_id: str) -> None:
    """A stranger's id answers exactly as an id that does not exist (but for the id itself)."""
    assert stranger_error == {**unknown_error, "message": unknown_error["message"].replace(unknown_id, real_id)}


def test_a_stranger_gets_the_404_of_an_unknown_id_on_every_route(gateway, fake_upstream, make_key):
    owner = gateway.client(make_key(name="owner")[1])
    stranger = gateway.client(make_key(name="stranger")[1])
    response = owner.responses.create(model=MODEL, input="mine")
    conversation = owner.conversations.create(items=[{"type": "message", "role": "user", "content": "hi"}])
    item_id = owner.conversations.items.list(conversation.id).data[0].id
    fake_upstream.clear()

    unknown = "resp_doesnotexist0000"
    unknown_conv = "conv_doesnotexist0000"
    same_as_unknown(
        error_of(lambda: stranger.responses.retrieve(response.id)),
        error_of(lambda: stranger.responses.retrieve(unknown)),
        response.id,
        unknown,
    )
    for call in (
        lambda rid: stranger.responses.delete(rid),
        lambda rid: stranger.responses.cancel(rid),
        lambda rid: stranger.responses.input_items.list(rid),
    ):
        same_as_unknown(
            error_of(lambda c=call: c(response.id)), error_of(lambda c=call: c(unknown)), response.id, unknown
        )
    for call in (
        lambda cid: stranger.conversations.retrieve(cid),
        lambda cid: stranger.conversations.update(cid, metadata={"a": "b"}),
        lambda cid: stranger.conversations.delete(cid),
        lambda cid: stranger.conversations.items.list(cid),
        lambda cid: stranger.conversations.items.create(
            cid, items=[{"type": "message", "role": "user", "content": "x"}]
        ),
        lambda cid: stranger.conversations.items.retrieve(item_id, conversation_id=cid),
        lambda cid: stranger.conversations.items.delete(item_id, conversation_id=cid),
    ):
        same_as_unknown(
            error_of(lambda c=call: c(conversation.id)),
            error_of(lambda c=call: c(unknown_conv)),
            conversation.id,
            unknown_conv,
        )
    follow_up = error_of(lambda: stranger.responses.create(model=MODEL, input="x", previous_response_id=response.id))
    assert follow_up["param"] == "previous_response_id"
    in_conversation = error_of(lambda: stranger.responses.create(model=MODEL, input="x", conversation=conversation.id))
    assert in_conversation["param"] == "conversation"
    counted = error_of(lambda: stranger.responses.input_tokens.count(previous_response_id=response.id))
    assert counted["param"] == "previous_response_id"
    assert fake_upstream.requests() == []  # nothing a stranger asked reached the upstream

    # The owner still has everything.
    assert owner.responses.retrieve(response.id).output_text == "echo: mine"
    assert owner.conversations.retrieve(conversation.id).id == conversation.id


def test_raw_404_shape_and_path_ids_are_restricted(http, api_key):
    _, raw = api_key
    auth = {"Authorization": f"Bearer {raw}"}
    error = assert_openai_error(http.get("/v1/responses/resp_nope", headers=auth), 404)
    assert error == {
        "message": "Response with id 'resp_nope' not found.",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
    assert_openai_error(http.get("/v1/responses/resp.x", headers=auth), 404)  # not an id: no such route


def test_conversations_through_the_sdk_and_the_chain_is_reserved(gateway, fake_upstream, make_key):
    _key, raw = make_key(name="conversations")
    client = gateway.client(raw)
    conversation = client.conversations.create(metadata={"topic": "demo"})
    assert client.conversations.update(conversation.id, metadata={"topic": "new"}).metadata == {"topic": "new"}
    added = client.conversations.items.create(
        conversation.id, items=[{"type": "message", "role": "user", "content": "one two"}]
    )
    item = client.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id)
    assert item.id == added.data[0].id
    first = client.responses.create(model=MODEL, input="three four", conversation=conversation.id)
    assert first.usage.input_tokens == 4  # the conversation's two words, and its own
    second = client.responses.create(model=MODEL, input="five", previous_response_id=first.id)
    assert second.usage.input_tokens == 1 + first.usage.input_tokens + first.usage.output_tokens
    owned = OwnedObject.objects.get(object_id=first.id)
    assert (owned.input_tokens, owned.output_tokens, owned.conversation_id) == (4, 3, conversation.id)
    assert OwnedObject.objects.get(object_id=conversation.id).context_tokens == 7
    assert client.conversations.items.delete(item.id, conversation_id=conversation.id).id == conversation.id
    assert client.conversations.delete(conversation.id).deleted


def test_follow_ups_reserve_the_chain_they_continue(gateway, make_key):
    """The recorded size of the chain counts against tokens per minute before the upstream answers."""
    _key, raw = make_key(name="chain", tpm=100)
    client = gateway.client(raw)
    long_text = " ".join(["word"] * 40)
    first = client.responses.create(model=MODEL, input=long_text, max_output_tokens=1)
    chain = first.usage.input_tokens + first.usage.output_tokens
    assert chain >= 80
    # 100 tpm: the first request settled at ~80; a follow-up reserving the chain (~82) plus its input can't fit.
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model=MODEL, input="again", previous_response_id=first.id, max_output_tokens=1)
    assert "tokens per min" in caught.value.body["message"]


def test_ownership_holds_on_every_instance_at_once_and_after_rotation(gateway, start_gateway, make_key):
    other = start_gateway("second-instance")
    key, raw = make_key(name="two-instances")
    on_first, on_second = gateway.client(raw), other.client(raw)

    created = on_first.responses.create(model=MODEL, input="first instance")
    assert on_second.responses.retrieve(created.id).id == created.id  # known everywhere once the create returned

    # A stream: known everywhere as soon as its response.created event has been relayed, while it still runs.
    with httpx.stream(
        "POST",
        f"{gateway.url}/v1/responses",
        json={"model": MODEL, "input": "slow a b c d", "stream": True, "fake": {"chunk_delay_ms": 300}},
        headers={"Authorization": f"Bearer {raw}"},
        timeout=30,
    ) as stream:
        lines = stream.iter_lines()
        first_line = next(lines)
        assert first_line == "event: response.created"
        import orjson

        response_id = orjson.loads(next(lines).removeprefix("data: "))["response"]["id"]
        in_flight = on_second.responses.retrieve(response_id)
        assert in_flight.id == response_id
        rest = "\n".join(lines)
    assert "response.completed" in rest

    # Rotation: the successor (and the old key, in its grace period) keep the lineage's history.
    from apikeys.models import APIKey

    _successor, new_raw = api_key_rotate(api_key=APIKey.objects.get(pk=key.pk), grace=3600, actor="test")
    assert other.client(new_raw).responses.retrieve(created.id).id == created.id
    assert gateway.client(new_raw).responses.retrieve(response_id).id == response_id
    assert on_second.responses.retrieve(created.id).id == created.id
    follow = other.client(new_raw).responses.create(model=MODEL, input="more", previous_response_id=created.id)
    assert follow.previous_response_id == created.id
