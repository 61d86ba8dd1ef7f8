"""The Responses API: create (plain, streamed, background), retrieve (also as a resumed stream), delete, cancel,
input items and input token counts. Every response created through Tollgate belongs to its key's lineage; the
routes naming one are refused (404, as for an unknown id) to every other key."""

from ..schema import (
    response_cancel_schema,
    response_create_schema,
    response_delete_schema,
    response_input_items_schema,
    response_input_tokens_schema,
    response_retrieve_schema,
)
from ..sse import TypedEventStream
from ..tokens import estimate_response_input
from ..usage import response_object_usage
from ..validation import (
    CLIENT_TOOL_TYPES,
    ParsedRequest,
    check_query_choice,
    check_query_int,
    conversation_of,
    forward_query,
    parse_input_tokens_request,
    parse_no_body,
    parse_response_request,
)
from .base import Endpoint, Owned, OwnedPath, no_usage

RESPONSE = "response"
CONVERSATION = "conversation"
RESPONSE_ID = "v1/responses/<oid:response_id>"
TYPED_EVENTS = TypedEventStream()


def response_references(parsed: ParsedRequest) -> tuple[Owned, ...]:
    """The stored objects a create continues: its `previous_response_id` or its `conversation`."""
    previous = parsed.data.get("previous_response_id")
    if isinstance(previous, str):
        return (Owned(RESPONSE, previous, "previous_response_id"),)
    conversation = conversation_of(parsed.data)
    if conversation is not None:
        return (Owned(CONVERSATION, conversation, "conversation"),)
    return ()


def hosted_tool_types(parsed: ParsedRequest) -> frozenset:
    """The `tools[].type` values that are hosted tools (every type but the client's own function-like tools)."""
    tools = parsed.data.get("tools")
    return frozenset(
        tool["type"]
        for tool in (tools if isinstance(tools, list) else ())
        if isinstance(tool, dict) and isinstance(tool.get("type"), str) and tool["type"] not in CLIENT_TOOL_TYPES
    )


def is_background(parsed: ParsedRequest) -> bool:
    return parsed.data.get("background") is True


def retrieve_query(parsed: ParsedRequest, query) -> str:
    """`?stream=true` replays a response's events as a stream (from `starting_after`); `include` passes."""
    check_query_choice(query, "stream", ("true", "false"))
    check_query_int(query, "starting_after", 0, 2**31 - 1)
    parsed.stream = query.get("stream") == "true"
    return forward_query(("stream", "starting_after", "include", "include_obfuscation"), query)


def list_query(parsed: ParsedRequest, query) -> str:
    check_query_int(query, "limit", 1, 100)
    check_query_choice(query, "order", ("asc", "desc"))
    return forward_query(("after", "before", "limit", "order", "include"), query)


RESPONSES_CREATE = Endpoint(
    name="responses",
    paths=("v1/responses",),
    upstream_path="/responses",
    parse=parse_response_request,
    estimate_input=lambda parsed: estimate_response_input(parsed.data),
    read_usage=response_object_usage,
    stream=TYPED_EVENTS,
    schema=response_create_schema,
    references=response_references,
    creates=RESPONSE,
    outlives=is_background,
    hosted_tools=hosted_tool_types,
)

RESPONSES_RETRIEVE = Endpoint(
    name="responses.retrieve",
    method="GET",
    paths=(RESPONSE_ID,),
    upstream_path="/responses/{response_id}",
    parse=parse_no_body,
    estimate_input=lambda parsed: 0,
    read_usage=no_usage,
    stream=TYPED_EVENTS,
    output=False,
    priced=False,
    metered=False,
    owned=OwnedPath(RESPONSE, "response_id"),
    read_query=retrieve_query,
    schema=response_retrieve_schema,
)

RESPONSES_DELETE = Endpoint(
    name="responses.delete",
    method="DELETE",
    paths=(RESPONSE_ID,),
    upstream_path="/responses/{response_id}",
    parse=parse_no_body,
    estimate_input=lambda parsed: 0,
    read_usage=no_usage,
    output=False,
    priced=False,
    metered=False,
    owned=OwnedPath(RESPONSE, "response_id"),
    schema=response_delete_schema,
)

RESPONSES_CANCEL = Endpoint(
    name="responses.cancel",
    paths=("v1/responses/<oid:response_id>/cancel",),
    upstream_path="/responses/{response_id}/cancel",
    parse=parse_no_body,
    estimate_input=lambda parsed: 0,
    read_usage=no_usage,
    output=False,
    priced=False,
    metered=False,
    owned=OwnedPath(RESPONSE, "response_id"),
    schema=response_cancel_schema,
)

RESPONSES_INPUT_ITEMS = Endpoint(
    name="responses.input_items",
    method="GET",
    paths=("v1/responses/<oid:response_id>/input_items",),
    upstream_path="/responses/{response_id}/input_items",
    parse=parse_no_body,
    estimate_input=lambda parsed: 0,
    read_usage=no_usage,
    output=False,
    priced=False,
    metered=False,
    owned=OwnedPath(RESPONSE, "response_id"),
    read_query=list_query,
    schema=response_input_items_schema,
)

RESPONSES_INPUT_TOKENS = Endpoint(
    name="responses.input_tokens",
    paths=("v1/responses/input_tokens",),
    upstream_path="/responses/input_tokens",
    parse=parse_input_tokens_request,
    # Counting costs nothing: one request against requests per minute, no tokens reserved.
    estimate_input=lambda parsed: 0,
    read_usage=no_usage,
    output=False,
    priced=False,
    metered=False,
    references=response_references,
    schema=response_input_tokens_schema,
)
