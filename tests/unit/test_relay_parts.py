"""The relay's pure parts, without servers: validators, token estimators, SSE framing, usage extraction,
endpoint declarations and the demand they make of the limiter."""

import orjson
import pytest

from completions.endpoints import CHAT_COMPLETIONS, COMPLETIONS, EMBEDDINGS, ENDPOINTS, MODERATIONS
from completions.sse import DataEventStream, StreamState
from completions.tokens import estimate_input_tokens, estimate_text_tokens
from completions.usage import BadUsage, Usage, chat_usage
from completions.validation import (
    DEFAULT_MODERATION_MODEL,
    MAX_EMBEDDING_INPUTS,
    parse_chat_request,
    parse_completion_request,
    parse_embedding_request,
    parse_moderation_request,
)
from core.errors import InvalidRequest
from core.outcome import GATEWAY_REFUSALS, ErrorType
from metering.throttling import Demand, output_reservation


def body(**fields) -> bytes:
    return orjson.dumps(fields)


def refused(parse, raw: bytes) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as caught:
        parse(raw)
    return caught.value


# Validation


@pytest.mark.parametrize(
    "value",
    ["hello", ["a", "b"], [1, 2, 3], [[1, 2], [3]]],
    ids=["string", "strings", "tokens", "token-arrays"],
)
def test_embeddings_accept_each_documented_input_shape(value):
    raw = body(model="text-embedding-3-small", input=value)
    parsed = parse_embedding_request(raw)
    assert parsed.model == "text-embedding-3-small"
    assert parsed.forward_body is raw  # forwarded byte for byte
    assert not parsed.stream


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": "x"}, "model"),
        ({"model": "", "input": "x"}, "model"),
        ({"model": "m"}, "input"),
        ({"model": "m", "input": ""}, "input"),
        ({"model": "m", "input": []}, "input"),
        ({"model": "m", "input": ["a", ""]}, "input"),
        ({"model": "m", "input": [["a"]]}, "input"),
        ({"model": "m", "input": [[]]}, "input"),
        ({"model": "m", "input": {"text": "x"}}, "input"),
        ({"model": "m", "input": ["x"] * (MAX_EMBEDDING_INPUTS + 1)}, "input"),
        ({"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format"),
        ({"model": "m", "input": "x", "dimensions": 0}, "dimensions"),
        ({"model": "m", "input": "x", "dimensions": 1.5}, "dimensions"),
    ],
)
def test_embeddings_refuse_bad_fields_naming_them(fields, param):
    assert refused(parse_embedding_request, body(**fields)).param == param


def test_a_guarded_field_named_twice_is_refused_on_every_endpoint():
    assert refused(parse_embedding_request, b'{"model":"a","input":"x","model":"b"}').param == "model"
    assert refused(parse_embedding_request, b'{"model":"a","input":"x","input":[1]}').param == "input"
    assert refused(parse_completion_request, b'{"model":"a","prompt":"x","max_tokens":1,"max_tokens":9}').param == (
        "max_tokens"
    )
    assert refused(parse_moderation_request, b'{"input":"x","model":"a","model":"b"}').param == "model"
    # Spelled with an escape, the name is still the same name.
    assert refused(parse_embedding_request, b'{"model":"a","input":"x","\\u006dodel":"b"}').param == "model"


def test_legacy_completions_reserve_max_tokens_default_16_times_best_of():
    parsed = parse_completion_request(body(model="m", prompt="hi"))
    assert (parsed.max_output_tokens, parsed.choices) == (16, 1)
    parsed = parse_completion_request(body(model="m", prompt=["a", "b"], max_tokens=5, n=2, best_of=3))
    assert (parsed.max_output_tokens, parsed.choices) == (5, 3)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": 5}, "prompt"),
        ({"model": "m", "prompt": "x", "best_of": 21}, "best_of"),
        ({"model": "m", "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": "m", "prompt": "x", "max_tokens": -1}, "max_tokens"),
        ({"model": "m", "prompt": "x", "echo": "yes"}, "echo"),
        ({"model": "m", "prompt": "x", "stream_options": {"include_usage": True}}, "stream_options"),
    ],
)
def test_legacy_completions_refuse_bad_fields_naming_them(fields, param):
    assert refused(parse_completion_request, body(**fields)).param == param


def test_streamed_legacy_completions_ask_for_usage_like_chat():
    parsed = parse_completion_request(body(model="m", prompt="x", stream=True))
    assert parsed.stream and not parsed.client_wants_usage
    assert orjson.loads(parsed.forward_body)["stream_options"] == {"include_usage": True}
    raw = body(model="m", prompt="x", stream=True, stream_options={"include_usage": True})
    parsed = parse_completion_request(raw)
    assert parsed.client_wants_usage and parsed.forward_body is raw


def test_moderations_default_to_openais_model_and_accept_content_parts():
    assert parse_moderation_request(body(input="x")).model == DEFAULT_MODERATION_MODEL
    parts = [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": "data:"}}]
    assert parse_moderation_request(body(model="omni-moderation-latest", input=parts)).model == (
        "omni-moderation-latest"
    )
    assert refused(parse_moderation_request, body(input=["x", {"type": "text", "text": "y"}])).param == "input"
    assert refused(parse_moderation_request, body(model="m")).param == "input"
    assert refused(parse_moderation_request, body(input=3)).param == "input"


def test_chat_validation_is_unchanged_by_the_generalisation():
    parsed = parse_chat_request(body(model="m", messages=[{"role": "user", "content": "hi"}], n=2, max_tokens=7))
    assert (parsed.max_output_tokens, parsed.choices) == (7, 2)
    assert refused(parse_chat_request, body(model="m", messages=[])).param == "messages"
    assert refused(parse_chat_request, body(model="m", messages=[{"content": "x"}])).param == "messages[0].role"


# Estimators


def test_input_estimates_count_text_with_tiktoken_and_token_arrays_by_length():
    assert estimate_input_tokens("hello world") == estimate_text_tokens("hello world") == 2
    assert estimate_input_tokens(["hello world", "hello"]) == 3
    assert estimate_input_tokens([5, 6, 7]) == 3
    assert estimate_input_tokens([[5, 6], [7]]) == 3
    assert estimate_input_tokens([{"type": "text", "text": "hello world"}, {"type": "image_url"}]) == 2
    assert estimate_input_tokens(None) == 0


def test_a_huge_text_is_bounded_by_characters_not_tokenized():
    assert estimate_text_tokens("a" * 3_000_000) == 1_000_000


def test_legacy_echo_reserves_the_prompt_twice():
    plain = parse_completion_request(body(model="m", prompt="hello world"))
    echoed = parse_completion_request(body(model="m", prompt="hello world", echo=True))
    assert COMPLETIONS.estimate_input(echoed) == 2 * COMPLETIONS.estimate_input(plain) == 4


# Usage extraction


def test_usage_is_read_with_its_cached_tokens():
    usage = chat_usage({"prompt_tokens": 10, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}})
    assert usage == Usage(input_tokens=10, output_tokens=3, cached_tokens=4)
    assert chat_usage({"prompt_tokens": 8, "total_tokens": 8}) == Usage(input_tokens=8)
    # Cached tokens are part of the prompt: never more than it.
    assert chat_usage({"prompt_tokens": 2, "prompt_tokens_details": {"cached_tokens": 9}}).cached_tokens == 2


@pytest.mark.parametrize(
    "usage",
    [
        {"prompt_tokens": "abc", "completion_tokens": 1},
        {"prompt_tokens": 1, "completion_tokens": 1.5},
        {"prompt_tokens": -1},
        {"prompt_tokens": True},
        {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": "x"}},
        "12",
    ],
)
def test_a_malformed_usage_is_refused_not_coerced(usage):
    with pytest.raises(BadUsage):
        chat_usage(usage)


def test_a_body_without_usage_reads_as_none_and_moderations_as_zero():
    assert CHAT_COMPLETIONS.read_usage({"id": "x"}) is None
    assert EMBEDDINGS.read_usage({"usage": {"prompt_tokens": 5, "total_tokens": 5}}) == Usage(input_tokens=5)
    assert MODERATIONS.read_usage({"results": []}) == Usage()


# SSE framing


def chunk(content: str) -> bytes:
    return b'data: {"choices":[{"delta":{"content":"' + content.encode() + b'"}}]}\n\n'


USAGE_CHUNK = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'


def test_events_are_cut_where_they_end_whatever_the_chunking():
    dialect = CHAT_COMPLETIONS.stream
    stream = chunk("He") + chunk("llo") + USAGE_CHUNK + b"data: [DONE]\n\n"
    for size in (1, 3, 7, len(stream)):
        state = StreamState()
        out = b"".join(dialect.cut(state, stream[i : i + size]) for i in range(0, len(stream), size))
        # The usage chunk only Tollgate asked for is hidden; everything else passes unchanged.
        assert out == chunk("He") + chunk("llo") + b"data: [DONE]\n\n"
        assert state.complete and state.usage == Usage(input_tokens=7, output_tokens=2)
        assert state.relayed_text == 2
        assert state.pending == b""


def test_content_events_pass_as_one_slice_and_what_needs_a_look_is_still_looked_at():
    dialect = CHAT_COMPLETIONS.stream
    state = StreamState()
    # Content only (OpenAI's `"usage":null` included): the complete part, byte for byte, its text counted.
    content = chunk("a") + chunk("b").replace(b"}]}", b'}],"usage":null}')
    assert dialect.cut(state, content + b"data: {") == content
    assert state.relayed_text == 2 and state.pending == b"data: {"
    # The rest of the event, then the usage chunk only Tollgate asked for and [DONE] in the same read.
    out = dialect.cut(state, b'"choices":[{"delta":{"content":"c"}}]}\n\n' + USAGE_CHUNK + b"data: [DONE]\n\n")
    assert out == chunk("c") + b"data: [DONE]\n\n"
    assert state.relayed_text == 3 and state.complete and state.usage == Usage(input_tokens=7, output_tokens=2)
    # A model that writes `data: [DONE]` in its text does not end the stream.
    state = StreamState()
    assert dialect.cut(state, chunk("data: [DONE]")) == chunk("data: [DONE]")
    assert not state.complete and state.relayed_text == 1


def test_the_usage_chunk_reaches_a_client_that_asked_for_it_and_crlf_is_normalised():
    state = StreamState(client_wants_usage=True)
    out = CHAT_COMPLETIONS.stream.cut(state, USAGE_CHUNK.replace(b"\n", b"\r\n"))
    assert out == USAGE_CHUNK
    assert state.usage.input_tokens == 7


def test_a_malformed_usage_chunk_is_flagged_and_the_stream_goes_on():
    state = StreamState()
    bad = b'data: {"choices":[],"usage":{"prompt_tokens":"abc","completion_tokens":2}}\n\n'
    assert CHAT_COMPLETIONS.stream.cut(state, bad + b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert state.usage is None and state.bad_usage and state.complete


def test_a_stream_without_done_is_incomplete_and_its_error_event_is_openai_shaped():
    dialect: DataEventStream = COMPLETIONS.stream
    state = StreamState()
    dialect.cut(state, b'data: {"choices":[{"text":"hi"}]}\n\n')
    assert state.relayed_text == 1 and not state.complete
    from core.errors import UpstreamError

    with pytest.raises(UpstreamError) as caught:
        dialect.check_end(state)
    event = dialect.error_event(caught.value, state)
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    assert orjson.loads(event[6:])["error"]["code"] == "upstream_error"


# Declarations and demand


def test_every_endpoint_declares_a_unique_name_and_paths():
    names = [endpoint.name for endpoint in ENDPOINTS]
    # A path may serve several endpoints (GET and DELETE of `/v1/responses/{id}`), one per method.
    routes = [(endpoint.method, path) for endpoint in ENDPOINTS for path in endpoint.paths]
    paths = {path for _, path in routes}
    assert len(set(names)) == len(names) and len(set(routes)) == len(routes)
    assert {"v1/chat/completions", "v1/completions", "v1/embeddings", "v1/moderations"} <= set(paths)


def test_demand_is_endpoint_agnostic_and_output_free_endpoints_reserve_no_output():
    embed = EMBEDDINGS.demand(parse_embedding_request(body(model="m", input="hello world")), 2)
    assert embed == Demand(model="m", input_tokens=2, output=False)
    assert output_reservation(embed, 1000) == 0
    chat = CHAT_COMPLETIONS.demand(
        parse_chat_request(body(model="m", messages=[{"role": "user", "content": "x"}], n=3, max_tokens=5)), 9
    )
    assert output_reservation(chat, 1000) == 15
    free = MODERATIONS.demand(parse_moderation_request(body(input="x")), 0)
    assert not free.priced and not free.output


def test_error_types_are_one_closed_set_and_refusals_are_a_subset():
    assert set(ErrorType) > GATEWAY_REFUSALS
    assert ErrorType.UPSTREAM_REJECTED not in GATEWAY_REFUSALS
    assert {str(value) for value in ErrorType} >= {"client_disconnected", "budget", "upstream_error"}


def test_the_usage_app_knows_every_declared_endpoint_by_name():
    """`usage` cannot import the relay: the relay registers its endpoints' names when its app is ready."""
    from usage.endpoint_names import known_endpoints

    assert known_endpoints() == tuple(endpoint.name for endpoint in ENDPOINTS)
