"""The pure parts of the Responses API relay: the typed-event dialect, usage with cached and reasoning tokens and
hosted tool calls, validation, hosted tool types, chain references, input estimates, and an admission handed over
to another process and resumed there."""

import orjson
import pytest
from django.http import QueryDict

from apikeys.keycache import KeySnapshot
from completions.endpoints.responses import (
    RESPONSES_CREATE,
    hosted_tool_types,
    response_references,
    retrieve_query,
)
from completions.sse import StreamState, TypedEventStream
from completions.tokens import estimate_response_input
from completions.usage import BadUsage, response_object_usage
from completions.validation import parse_no_body, parse_response_request
from core.errors import InvalidRequest, UpstreamError
from metering import AdmitResult, BudgetHold, LimitTicket
from metering.base import BudgetWindow
from metering.throttling import Admission, Demand
from usage.pricing import tool_call_item


def event(kind: str, number: int, **data) -> bytes:
    return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **data, "sequence_number": number}) + b"\n\n"


USAGE = {
    "input_tokens": 10,
    "input_tokens_details": {"cached_tokens": 4},
    "output_tokens": 7,
    "output_tokens_details": {"reasoning_tokens": 5},
    "total_tokens": 17,
}


def test_typed_events_pass_unchanged_in_any_cut_and_yield_usage_and_the_created_id():
    stream = (
        event("response.created", 0, response={"id": "resp_1", "status": "in_progress"})
        + event("response.output_text.delta", 1, delta="Hel")
        + event("response.output_text.delta", 2, delta="lo")
        + event(
            "response.completed",
            3,
            response={"id": "resp_1", "usage": USAGE, "output": [{"type": "web_search_call"}, {"type": "message"}]},
        )
    )
    for size in (1, 7, 50, len(stream)):
        dialect, state = TypedEventStream(), StreamState()
        out = b"".join(dialect.cut(state, stream[i : i + size]) for i in range(0, len(stream), size))
        assert out == stream
        assert state.complete and state.created_id == "resp_1" and state.last_sequence == 3
        assert state.relayed_text == 2
        assert state.usage.input_tokens == 10 and state.usage.cached_tokens == 4
        assert state.usage.reasoning_tokens == 5 and state.usage.hosted_tool_calls == (("web_search_call", 1),)


def test_a_typed_stream_without_its_terminal_event_fails_with_openais_error_event():
    dialect, state = TypedEventStream(), StreamState()
    dialect.cut(state, event("response.created", 0, response={"id": "r"}) + event("response.in_progress", 1))
    with pytest.raises(UpstreamError) as caught:
        dialect.check_end(state)
    last = dialect.error_event(caught.value, state)
    assert last.startswith(b"event: error\ndata: ") and last.endswith(b"\n\n")
    data = orjson.loads(last.split(b"\n")[1][6:])
    assert data == {
        "type": "error",
        "code": "upstream_error",
        "message": caught.value.message,
        "param": None,
        "sequence_number": 2,
    }
    failed, error = TypedEventStream(), StreamState()
    failed.cut(error, event("error", 0, code="x", message="y", param=None))
    assert error.complete and error.upstream_error


def test_response_usage_is_read_strictly():
    usage = response_object_usage({"usage": USAGE, "output": [{"type": "function_call"}, {"type": "mcp_call"}]})
    assert (usage.input_tokens, usage.output_tokens, usage.hosted_tool_calls) == (10, 7, (("mcp_call", 1),))
    assert response_object_usage({"status": "queued", "usage": None}) is None
    with pytest.raises(BadUsage):
        response_object_usage({"usage": {**USAGE, "input_tokens": "abc"}})


def test_create_validation_references_and_hosted_tools():
    parsed = parse_response_request(
        orjson.dumps(
            {
                "model": "m",
                "input": [{"role": "user", "content": "hello world"}],
                "previous_response_id": "resp_9",
                "tools": [{"type": "function", "name": "f"}, {"type": "web_search"}, {"type": "local_shell"}],
                "max_output_tokens": 20,
                "max_tool_calls": 2,
            }
        )
    )
    assert [(r.kind, r.object_id, r.param) for r in response_references(parsed)] == [
        ("response", "resp_9", "previous_response_id")
    ]
    assert hosted_tool_types(parsed) == frozenset({"web_search"})
    demand = RESPONSES_CREATE.demand(parsed, 5)
    assert demand == Demand(
        model="m", input_tokens=5, max_output_tokens=20, hosted_tools=("web_search",), max_tool_calls=2
    )
    conversation = parse_response_request(b'{"model": "m", "input": "x", "conversation": {"id": "conv_1"}}')
    assert [(r.kind, r.param) for r in response_references(conversation)] == [("conversation", "conversation")]
    for bad, param in (
        ({"model": "m", "input": {}}, "input"),
        ({"model": "m", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "m", "background": 1}, "background"),
        ({"model": "m", "conversation": 5}, "conversation"),
        ({"model": "m", "tools": "web_search"}, "tools"),
    ):
        with pytest.raises(InvalidRequest) as caught:
            parse_response_request(orjson.dumps(bad))
        assert caught.value.param == param


def test_retrieve_query_is_checked_and_forwarded():
    parsed = parse_no_body(b"")
    assert retrieve_query(parsed, QueryDict("stream=true&starting_after=3&other=x")) == "stream=true&starting_after=3"
    assert parsed.stream
    with pytest.raises(InvalidRequest):
        retrieve_query(parse_no_body(b""), QueryDict("starting_after=-1"))


def test_input_estimate_counts_text_of_items_and_instructions():
    plain = estimate_response_input({"input": "hello world"})
    items = estimate_response_input(
        {
            "instructions": "be brief",
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hello world"}]},
                {"type": "function_call_output", "call_id": "c", "output": "sunny"},
            ],
        }
    )
    assert plain == 3 + 2 and items > plain


def test_hosted_tool_allowlist_of_a_key_and_call_item_names():
    key = KeySnapshot(
        id="k", prefix="k", name="k", rpm=None, tpm=None, max_concurrent=None, allowed_models=frozenset(),
        expiry=None, grace_until=None, revoked=False, budget_usd=None, budget_period="month",
        hosted_tools=frozenset({"file_search"}),
    )  # fmt: skip
    assert key.refused_tools({"file_search", "web_search", "mcp"}) == ["mcp", "web_search"]
    assert tool_call_item("web_search_preview_2025_03_11") == "web_search_call"
    assert tool_call_item("code_interpreter") == "code_interpreter_call"


def test_an_admission_handed_over_resumes_identically_elsewhere():
    from datetime import UTC, datetime

    window = BudgetWindow.at("month", datetime(2026, 3, 5, tzinfo=UTC))
    ticket = LimitTicket(key_prefix="p", request_id="req_1", scope="lin", rpm=5, tpm=100, tokens=40, max_concurrent=2)
    ticket.budget = BudgetHold(cap=100, reserve=7, window=window, ttl=10)
    admission = Admission(
        key=None, demand=Demand(model="m", input_tokens=3, hosted_tools=("web_search",)), outcome=None
    )
    admission.ticket, admission.result = ticket, AdmitResult(status=0, rpm_count=1, extra={"tpm_window_end": 1.5})
    state = orjson.loads(orjson.dumps(admission.hand_over()))  # through JSON, as the database keeps it
    assert admission.handed_over
    resumed = Admission.resume(state, outcome=None)
    assert resumed.ticket == ticket and resumed.result == admission.result and resumed.demand == admission.demand
